// The precision the CPU kernels compute in: fp32, or fp64 for fp64 inputs (so gradcheck checks the backward).
#pragma once

#include <ATen/core/Tensor.h>

namespace mom_ops {

inline at::ScalarType cpu_math_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace mom_ops
