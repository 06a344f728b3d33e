// CUDA bindings of gdn_gating (fwd, bwd): one launch forward; the backward one launch plus the fixed-order sum of
// its per-CTA head sums (common/column_sum.cuh). No host sync; a, b and the gradients may be column slices.
#include <algorithm>

#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/column_sum.cuh"
#include "common/other_gpus.h"
#include "common/static_switch.h"
#include "common/strided_rows.h"
#include "gating/gating_checks.h"
#include "gating/gating_kernels.cuh"

namespace mom_ops {
namespace {

GatingParams make_params(const at::Tensor& a, const at::Tensor& b, const at::Tensor& A_log,
                         const at::Tensor& dt_bias) {
  GatingParams p{};
  p.a = a.data_ptr();
  p.b = b.data_ptr();
  p.A_log = A_log.data_ptr();
  p.dt_bias = dt_bias.data_ptr();
  p.A_log_stride = A_log.stride(0);  // (parameters may be strided views, e.g. a column of a stacked [H, 2])
  p.dt_bias_stride = dt_bias.stride(0);
  p.rows = a.size(0);
  p.heads = a.size(1);
  p.a_row_stride = row_stride(a);
  p.b_row_stride = row_stride(b);
  p.cols = int(std::min<int64_t>(p.heads, kGatingThreads));
  return p;
}

dim3 gating_grid(const GatingParams& p) {
  return dim3(unsigned((p.rows + gating_rows_per_cta(p.cols) - 1) / gating_rows_per_cta(p.cols)),
              unsigned((p.heads + p.cols - 1) / p.cols));
}

void check_cuda_args(const at::Tensor& a, const at::Tensor& A_log) {
  CHECK_CUDA_FLOATING(a);
  CHECK_CUDA_FLOATING(A_log);
  // grid.y = ceil(H / 256) <= 65535; grid.x = ceil(R / rows per CTA) < 2^31 (rows per CTA: gating_grid's)
  TORCH_CHECK_VALUE(a.size(1) <= int64_t(65535) * kGatingThreads, "a has too many heads for CUDA: ", a.size(1));
  const int64_t rows_per_cta = gating_rows_per_cta(int(std::clamp<int64_t>(a.size(1), 1, kGatingThreads)));
  TORCH_CHECK_VALUE((a.size(0) + rows_per_cta - 1) / rows_per_cta < (int64_t(1) << 31),
                    "a has too many rows for CUDA: ", a.size(0));
}

std::tuple<at::Tensor, at::Tensor> gdn_gating_fwd_cuda(const at::Tensor& a, const at::Tensor& b,
                                                       const at::Tensor& A_log, const at::Tensor& dt_bias) {
  check_gdn_gating_args(a, b, A_log, dt_bias);
  check_cuda_args(a, A_log);
  if (!cuda_kernels_run_on(a.device())) {
    return call_other_gpu_fallback<decltype(gdn_gating_fwd_cuda)>("gdn_gating_fwd", a.device(), a, b, A_log, dt_bias);
  }
  c10::cuda::CUDAGuard guard(a.device());
  at::Tensor g = at::empty(a.sizes(), a.options().dtype(at::kFloat));
  at::Tensor beta = at::empty(a.sizes(), a.options());
  if (a.numel() == 0) return {g, beta};
  GatingParams p = make_params(a, b, A_log, dt_bias);
  p.g = g.data_ptr<float>();
  p.beta = beta.data_ptr();
  FLOAT_SWITCH(a.scalar_type(), T, [&] {
    FLOAT_SWITCH(A_log.scalar_type(), P, [&] {
      gdn_gating_fwd_kernel<T, P><<<gating_grid(p), kGatingThreads, 0, at::cuda::getCurrentCUDAStream()>>>(p);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {g, beta};
}

at::Tensor gdn_gating_bwd_cuda(const at::Tensor& grad_g, const at::Tensor& grad_beta,
                                                       const at::Tensor& a, const at::Tensor& b,
                                                       const at::Tensor& A_log, const at::Tensor& dt_bias,
                                                       at::Tensor& grad_a, at::Tensor& grad_b) {
  check_gdn_gating_args(a, b, A_log, dt_bias);
  check_cuda_args(a, A_log);
  check_gdn_gating_grads(grad_g, grad_beta, a, b, grad_a, grad_b, at::kFloat);
  if (!cuda_kernels_run_on(a.device())) {
    return call_other_gpu_fallback<decltype(gdn_gating_bwd_cuda)>(
        "gdn_gating_bwd", a.device(), grad_g, grad_beta, a, b, A_log, dt_bias, grad_a, grad_b);
  }
  c10::cuda::CUDAGuard guard(a.device());
  const int64_t H = a.size(1);
  GatingParams p = make_params(a, b, A_log, dt_bias);
  const dim3 grid = a.numel() > 0 ? gating_grid(p) : dim3(0, 1);
  at::Tensor partial = at::empty({int64_t(grid.x), 2, H}, a.options().dtype(at::kFloat));
  if (grid.x > 0) {
    p.grad_g = grad_g.data_ptr<float>();
    p.grad_beta = grad_beta.data_ptr();
    p.grad_a = grad_a.data_ptr();
    p.grad_b = grad_b.data_ptr();
    p.partial = partial.data_ptr<float>();
    p.grad_g_row_stride = row_stride(grad_g);
    p.grad_beta_row_stride = row_stride(grad_beta);
    p.grad_a_row_stride = row_stride(grad_a);
    p.grad_b_row_stride = row_stride(grad_b);
    FLOAT_SWITCH(a.scalar_type(), T, [&] {
      FLOAT_SWITCH(A_log.scalar_type(), P, [&] {
        gdn_gating_bwd_kernel<T, P><<<grid, kGatingThreads, 0, at::cuda::getCurrentCUDAStream()>>>(p);
      });
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  // [2, H] in the parameters' dtype (zeros when there are no rows: the column sums of an empty partial)
  return column_sums(partial, {2, H}, A_log.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(mom_ops, CUDA, m) {
  m.impl("gdn_gating_fwd", &gdn_gating_fwd_cuda);
  m.impl("gdn_gating_bwd", &gdn_gating_bwd_cuda);
}

}  // namespace mom_ops
