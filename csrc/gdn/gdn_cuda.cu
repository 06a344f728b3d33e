// CUDA binding of the chunked gated-delta-rule forward (tensor cores): checks, the prologue launches (row
// zeroing, longest-first order) and the kernel dispatch over dtype and head dim.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/static_switch.h"
#include "gdn/gdn_checks.h"
#include "gdn/gdn_fwd_kernel.cuh"
#include "gdn/scan_io.h"
#include "gdn/scan_prologue.cuh"

namespace mom_ops {
namespace {

template <typename T, int kK, int kBV>
void launch_gdn_fwd(const GdnFwdParams& p, cudaStream_t stream) {
  using L = GdnSmem<T, kK, kBV>;
  auto kernel = gdn_fwd_kernel<T, kK, kBV>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(L::kBytes)));
  // All of the unified L1/shared memory as shared memory: two CTAs per SM fit at K <= 128.
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
  const int64_t blocks = int64_t(p.num_seqs) * p.heads_v * p.num_vblocks;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "too many (sequence, head, V-block) programs: ", blocks);
  kernel<<<unsigned(blocks), kGdnThreads, L::kBytes, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> gdn_fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                const at::Tensor& g, const at::Tensor& beta, double scale,
                                                const std::optional<at::Tensor>& initial_state,
                                                bool output_final_state, bool use_qk_l2norm, bool state_v_first,
                                                const std::optional<at::Tensor>& cu_seqlens,
                                                const std::optional<at::Tensor>& chunk_indices) {
  const GdnDims d = check_gdn_args(q, k, v, g, beta, initial_state, state_v_first, cu_seqlens, chunk_indices);
  TORCH_CHECK_VALUE(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf,
                    "the CUDA scan takes bfloat16 or float16 q, k, v, got ", q.scalar_type());
  TORCH_CHECK_VALUE(d.dim_k == 64 || d.dim_k == 128 || d.dim_k == 256, "the CUDA scan needs K in {64, 128, 256}, got ",
                    d.dim_k);
  const int bv = d.dim_k == 256 ? 32 : 64;
  TORCH_CHECK_VALUE(d.dim_v % bv == 0, "the CUDA scan needs V a multiple of ", bv, " for K = ", d.dim_k, ", got ",
                    d.dim_v);
  TORCH_CHECK_VALUE(d.num_seqs * d.heads_v * (d.dim_v / bv) < (int64_t(1) << 31), "too many sequences x heads");
  c10::cuda::CUDAGuard guard(q.device());
  ScanIO io = prepare_scan_io(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm, state_v_first,
                              cu_seqlens, d);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  zero_rows_past_end(io, stream);
  if (d.num_seqs == 0 || d.heads_v == 0) return {io.o, io.ht};
  const at::Tensor order = longest_first_order(io, stream);
  GdnFwdParams p{};
  static_cast<ScanParams&>(p) = io.params;
  p.num_vblocks = int(d.dim_v / bv);
  p.v_first = state_v_first;
  p.seq_order = order.defined() ? order.data_ptr<int>() : nullptr;
  const bool bf16 = q.scalar_type() == at::kBFloat16;
  BOOL_SWITCH(bf16, kBf16, [&] {
    using T = std::conditional_t<kBf16, __nv_bfloat16, __half>;
    HEADDIM_SWITCH(d.dim_k, kK, [&] { launch_gdn_fwd<T, kK, (kK == 256 ? 32 : 64)>(p, stream); });
  });
  return {io.o, io.ht};
}

}  // namespace

TORCH_LIBRARY_IMPL(mom_ops, CUDA, m) { m.impl("chunk_gated_delta_rule_fwd", &gdn_fwd_cuda); }

}  // namespace mom_ops
