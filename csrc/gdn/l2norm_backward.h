// The l2norm step of the scan's backward where it runs outside the kernels (the CPU op; CUDA with grouped value
// heads, after the sum over a q/k head's value heads). Tensor methods only: included by host and CUDA files alike.
#pragma once

#include <ATen/core/Tensor.h>

namespace mom_ops {

constexpr double kL2NormEps = 1e-6;  // y = x * rsqrt(|x|^2 + eps), as in the kernels

// dx of y = x * rsqrt(|x|^2 + eps) over the last dim: dx = r (dy - y <y, dy>), r = rsqrt(|x|^2 + eps).
inline at::Tensor l2norm_backward(const at::Tensor& x, const at::Tensor& dy) {
  const at::Tensor r = x.square().sum(-1, true).add(kL2NormEps).rsqrt();
  const at::Tensor y = x.mul(r);
  // a row whose dy is 0 gets dx = 0 (dx is linear in dy), also where x is not finite: the rows past cu_seqlens[-1]
  return r.mul(dy.sub(y.mul(y.mul(dy).sum(-1, true)))).masked_fill(dy.eq(0).all(-1, true), 0);
}

}  // namespace mom_ops
