// Input checks shared by every op. Each raises a Python ValueError whose message names the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#define MOM_CHECK(cond, ...) TORCH_CHECK_VALUE(cond, __VA_ARGS__)

namespace mom_ops {
// The argument's name as the user wrote it: optional tensors are checked as *opt, so drop the '*'.
inline const char* arg_name(const char* expr) { return expr[0] == '*' ? expr + 1 : expr; }
}  // namespace mom_ops

// CHECK_SHAPE(x, B, T, H, D): exact shape.
#define CHECK_SHAPE(x, ...)                                                                        \
  TORCH_CHECK_VALUE((x).sizes() == at::IntArrayRef({__VA_ARGS__}), mom_ops::arg_name(#x),         \
                    " must have shape ", at::IntArrayRef({__VA_ARGS__}), ", got ", (x).sizes())

#define CHECK_DIM(x, n)                                                                            \
  TORCH_CHECK_VALUE((x).dim() == (n), mom_ops::arg_name(#x), " must have ", n, " dims, got shape ", \
                    (x).sizes())

#define CHECK_DEVICE(x, ref)                                                                       \
  TORCH_CHECK_VALUE((x).device() == (ref).device(), mom_ops::arg_name(#x), " must be on ",         \
                    (ref).device(), " like ", mom_ops::arg_name(#ref), ", got ", (x).device())

#define CHECK_DTYPE(x, dt)                                                                         \
  TORCH_CHECK_VALUE((x).scalar_type() == (dt), mom_ops::arg_name(#x), " must have dtype ", dt,     \
                    ", got ", (x).scalar_type())

#define CHECK_SAME_DTYPE(x, ref)                                                                   \
  TORCH_CHECK_VALUE((x).scalar_type() == (ref).scalar_type(), mom_ops::arg_name(#x),               \
                    " must have the dtype of ", mom_ops::arg_name(#ref), " (", (ref).scalar_type(),  \
                    "), got ", (x).scalar_type())

// float64 is accepted by the CPU kernels (for gradcheck); CUDA kernels add CHECK_CUDA_FLOATING.
#define CHECK_FLOATING(x)                                                                          \
  TORCH_CHECK_VALUE((x).scalar_type() == at::kFloat || (x).scalar_type() == at::kHalf ||           \
                        (x).scalar_type() == at::kBFloat16 || (x).scalar_type() == at::kDouble,    \
                    mom_ops::arg_name(#x), " must be a floating-point tensor, got ", (x).scalar_type())

#define CHECK_CUDA_FLOATING(x)                                                                     \
  TORCH_CHECK_VALUE((x).scalar_type() == at::kFloat || (x).scalar_type() == at::kHalf ||           \
                        (x).scalar_type() == at::kBFloat16,                                        \
                    mom_ops::arg_name(#x), " must be float32, float16 or bfloat16 on CUDA, got ",    \
                    (x).scalar_type())

#define CHECK_INDEX(x)                                                                             \
  TORCH_CHECK_VALUE((x).scalar_type() == at::kInt || (x).scalar_type() == at::kLong,               \
                    mom_ops::arg_name(#x), " must be int32 or int64, got ", (x).scalar_type())

#define CHECK_CONTIGUOUS(x) TORCH_CHECK_VALUE((x).is_contiguous(), mom_ops::arg_name(#x), " must be contiguous")

// The last dim must be dense (stride 1), other strides are free.
#define CHECK_LAST_DIM_CONTIGUOUS(x)                                                               \
  TORCH_CHECK_VALUE((x).stride(-1) == 1, mom_ops::arg_name(#x),                                   \
                    " must have a contiguous last dim, got strides ", (x).strides())
