// Argument checks of gdn_gating (fwd, bwd), shared by the CPU and CUDA implementations.
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>

#include <initializer_list>
#include <utility>

#include "common/check.h"

namespace mom_ops {

// a, b [R, H] (rows any stride apart, dense heads), A_log, dt_bias [H]. Returns H.
inline int64_t check_gdn_gating_args(const at::Tensor& a, const at::Tensor& b, const at::Tensor& A_log,
                                     const at::Tensor& dt_bias) {
  CHECK_DIM(a, 2);
  CHECK_FLOATING(a);
  CHECK_SHAPE(b, a.size(0), a.size(1));
  CHECK_SAME_DTYPE(b, a);
  CHECK_DEVICE(b, a);
  const int64_t H = a.size(1);
  CHECK_SHAPE(A_log, H);
  CHECK_FLOATING(A_log);
  CHECK_DEVICE(A_log, a);
  CHECK_SHAPE(dt_bias, H);
  CHECK_SAME_DTYPE(dt_bias, A_log);
  CHECK_DEVICE(dt_bias, a);
  for (const auto& [t, name] : {std::pair{&a, "a"}, std::pair{&b, "b"}}) {
    // (no rows: any strides, e.g. sum's expanded [0, H] gradient)
    TORCH_CHECK_VALUE(t->size(0) == 0 || H <= 1 || t->stride(1) == 1, name,
                      " must have dense heads (stride(1) == 1), got strides ", t->strides());
  }
  return H;
}

// The incoming gradients: grad_g like g (fp32; fp64 for fp64 inputs), grad_beta like beta (b's dtype), both [R, H]
// with dense heads; grad_a, grad_b: [R, H] in a's dtype with dense heads (column slices of one gradient allowed),
// not sharing memory with each other or with any input the kernel reads.
inline void check_gdn_gating_grads(const at::Tensor& grad_g, const at::Tensor& grad_beta, const at::Tensor& a,
                                   const at::Tensor& b, const at::Tensor& grad_a, const at::Tensor& grad_b,
                                   at::ScalarType g_dtype) {
  const int64_t R = a.size(0), H = a.size(1);
  CHECK_SHAPE(grad_g, R, H);
  CHECK_DTYPE(grad_g, g_dtype);
  CHECK_DEVICE(grad_g, a);
  CHECK_SHAPE(grad_beta, R, H);
  CHECK_SAME_DTYPE(grad_beta, b);
  CHECK_DEVICE(grad_beta, a);
  for (const auto& [out, out_name] : {std::pair{&grad_a, "grad_a"}, std::pair{&grad_b, "grad_b"}}) {
    TORCH_CHECK_VALUE(out->dim() == 2 && out->size(0) == R && out->size(1) == H, out_name, " must have shape [", R,
                      ", ", H, "], got ", out->sizes());
    TORCH_CHECK_VALUE(out->scalar_type() == a.scalar_type(), out_name, " must have the dtype of a (",
                      a.scalar_type(), "), got ", out->scalar_type());
    TORCH_CHECK_VALUE(out->device() == a.device(), out_name, " must be on ", a.device(), " like a, got ",
                      out->device());
    TORCH_CHECK_VALUE(R <= 1 || out->stride(0) >= H, out_name, "'s rows must not overlap (stride(0) >= ", H,
                      "), got strides ", out->strides());
    for (const auto& [in, in_name] : {std::pair{&a, "a"}, std::pair{&b, "b"}, std::pair{&grad_g, "grad_g"},
                                      std::pair{&grad_beta, "grad_beta"}}) {
      const at::MemOverlapStatus overlap = at::get_overlap_status(*out, *in);
      TORCH_CHECK_VALUE(overlap != at::MemOverlapStatus::Full && overlap != at::MemOverlapStatus::Partial, out_name,
                        " must not share memory with ", in_name);
    }
  }
  for (const auto& [t, name] : {std::pair{&grad_g, "grad_g"}, std::pair{&grad_beta, "grad_beta"},
                                std::pair{&grad_a, "grad_a"}, std::pair{&grad_b, "grad_b"}}) {
    // (no rows: any strides, e.g. sum's expanded [0, H] gradient)
    TORCH_CHECK_VALUE(t->size(0) == 0 || H <= 1 || t->stride(1) == 1, name,
                      " must have dense heads (stride(1) == 1), got strides ", t->strides());
  }
  const at::MemOverlapStatus overlap = at::get_overlap_status(grad_a, grad_b);
  TORCH_CHECK_VALUE(overlap != at::MemOverlapStatus::Full && overlap != at::MemOverlapStatus::Partial,
                    "grad_a must not share memory with grad_b");
}

}  // namespace mom_ops
