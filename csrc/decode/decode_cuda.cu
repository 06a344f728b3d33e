// CUDA bindings of mom_decode_step and fused_recurrent_gated_delta_rule_fwd. No host sync: bad slots are
// skipped and bad cu_seqlens are clamped on the device instead of raising.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/aligned.h"
#include "common/env_flag.h"
#include "common/other_gpus.h"
#include "common/static_switch.h"
#include "decode/decode_checks.h"
#include "decode/decode_kernels.cuh"
#include "gdn/gdn_checks.h"
#include "gdn/scan_io.h"
#include "gdn/scan_prologue.cuh"

namespace mom_ops {
namespace {

// Whether the decode kernels take these dims on q's GPU (common/other_gpus.h): K in {64, 128, 256}, V a multiple of
// kDecodeBV up to 1024. Where not, the op runs on its Triton fallback (a warning, once, for dims they do not take).
bool decode_kernels_take(int64_t dim_k, int64_t dim_v, int64_t heads_v, const at::Tensor& q, const char* op) {
  CHECK_CUDA_FLOATING(q);
  TORCH_CHECK_VALUE(heads_v <= 65535, op, " on CUDA takes at most 65535 value heads (grid.y), got ", heads_v);
  if (!cuda_kernels_run_on(q.device())) return false;
  if ((dim_k == 64 || dim_k == 128 || dim_k == 256) && dim_v % kDecodeBV == 0 && dim_v <= 1024) return true;
  TORCH_WARN_ONCE("mom_ops: ", op, "'s CUDA kernel takes K in {64, 128, 256} and V a multiple of ", kDecodeBV,
                  " up to 1024; K = ", dim_k, ", V = ", dim_v, " runs on the Triton fallback, correct but slower "
                  "(mom_ops/_other_gpus.py).");
  return false;
}

// V-tile width: 128 columns where K <= 128 and V % 128 == 0 (twice the state bytes per CTA for the same fixed
// costs: decode_N256_H16_D128 2.43 -> 2.75 TB/s on the H100), else 64. MOM_OPS_DECODE_TILE=64 forces 64 (tests).
int decode_tile_width(int64_t dim_k, int64_t dim_v) {
  const bool narrow = env_is("MOM_OPS_DECODE_TILE", "64");
  return !narrow && dim_k <= 128 && dim_v % 128 == 0 ? 128 : kDecodeBV;
}

// Calls fn.template operator()<T, kK, kBV, kVFirst>() for the dtype, K, tile width and layout.
template <typename Fn>
void dispatch_recurrent(const at::Tensor& q, int64_t dim_k, int tile_width, bool v_first, Fn&& fn) {
  FLOAT_SWITCH(q.scalar_type(), elem_t, [&] {
    HEADDIM_SWITCH(dim_k, kK, [&] {
      BOOL_SWITCH(v_first, kVFirst, [&] {
        if constexpr (kK <= 128) {
          if (tile_width == 128) return fn.template operator()<elem_t, kK, 128, kVFirst>();
        }
        fn.template operator()<elem_t, kK, kDecodeBV, kVFirst>();
      });
    });
  });
}

at::Tensor mom_decode_step_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                                const at::Tensor& beta, const at::Tensor& weights, const at::Tensor& slots,
                                at::Tensor& state_pool, double scale, bool use_qk_l2norm, bool state_v_first) {
  const DecodeDims d = check_decode_args(q, k, v, g, beta, weights, slots, state_pool, state_v_first);
  if (!decode_kernels_take(d.dim_k, d.dim_v, d.heads_v, q, "mom_decode_step")) {
    return call_other_gpu_fallback<decltype(mom_decode_step_cuda)>(
        "mom_decode_step", q.device(), q, k, v, g, beta, weights, slots, state_pool, scale, use_qk_l2norm,
        state_v_first);
  }
  // The pool is read and written in place as float4: a view starting off a 16-byte boundary cannot be copied
  TORCH_CHECK_VALUE(aligned16(state_pool.data_ptr()),
                    "state_pool must start on a 16-byte boundary on CUDA (it is updated in place with 16-byte "
                    "accesses), got a view at storage offset ", state_pool.storage_offset());
  c10::cuda::CUDAGuard guard(q.device());
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const at::Tensor gf = g.to(at::kFloat).contiguous(), bf = beta.to(at::kFloat).contiguous();
  const at::Tensor wc = weights.contiguous(), sc = slots.contiguous();
  at::Tensor out = at::empty({d.tokens, d.heads_v, d.dim_v}, q.options());
  if (d.tokens == 0) return out;
  TORCH_CHECK_VALUE(d.tokens < 65536 * 1024, "too many tokens for one decode step: ", d.tokens);
  DecodeParams p{};
  p.q = qc.data_ptr();
  p.k = kc.data_ptr();
  p.v = vc.data_ptr();
  p.g = gf.data_ptr<float>();
  p.beta = bf.data_ptr<float>();
  p.weights = wc.data_ptr<float>();
  p.slots = sc.data_ptr();
  p.slots_int64 = sc.scalar_type() == at::kLong;
  p.pool = state_pool.data_ptr<float>();
  p.out = out.data_ptr();
  p.num_tokens = d.tokens;
  p.pool_rows = d.pool;
  p.num_slots = int(d.slots);
  p.heads_qk = int(d.heads_qk);
  p.heads_v = int(d.heads_v);
  p.dim_v = int(d.dim_v);
  p.scale = float(scale);
  p.l2norm = use_qk_l2norm;
  p.q_per_slot = d.q_per_slot;
  const int tile = decode_tile_width(d.dim_k, d.dim_v);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  constexpr int kMaxGridZ = 65535;
  for (p.token0 = 0; p.token0 < d.tokens; p.token0 += kMaxGridZ) {  // (one launch below 65536 tokens)
    const dim3 grid(unsigned(d.dim_v / tile), unsigned(d.heads_v),
                    unsigned(std::min<int64_t>(d.tokens - p.token0, kMaxGridZ)));
    dispatch_recurrent(qc, d.dim_k, tile, state_v_first, [&]<typename T, int kK, int kBV, bool kVFirst>() {
      mom_decode_step_kernel<T, kK, kBV, kVFirst><<<grid, kDecodeThreads, 0, stream>>>(p);
    });
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> fused_recurrent_fwd_cuda(const at::Tensor& q, const at::Tensor& k,
                                                            const at::Tensor& v, const at::Tensor& g,
                                                            const at::Tensor& beta, double scale,
                                                            const std::optional<at::Tensor>& initial_state,
                                                            bool output_final_state, bool use_qk_l2norm,
                                                            bool state_v_first,
                                                            const std::optional<at::Tensor>& cu_seqlens) {
  const GdnDims d = check_gdn_args(q, k, v, g, beta, initial_state, state_v_first, cu_seqlens, std::nullopt);
  TORCH_CHECK_VALUE(d.num_seqs < 65536, "fused_recurrent on CUDA supports fewer than 65536 sequences, got ",
                    d.num_seqs);
  if (!decode_kernels_take(d.dim_k, d.dim_v, d.heads_v, q, "fused_recurrent_gated_delta_rule")) {
    return call_other_gpu_fallback<decltype(fused_recurrent_fwd_cuda)>(
        "fused_recurrent_gated_delta_rule_fwd", q.device(), q, k, v, g, beta, scale, initial_state,
        output_final_state, use_qk_l2norm, state_v_first, cu_seqlens);
  }
  c10::cuda::CUDAGuard guard(q.device());
  ScanIO io = prepare_scan_io(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm, state_v_first,
                              cu_seqlens, d);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  zero_rows_past_end(io, stream);
  if (d.num_seqs == 0) return {io.o, io.ht};
  const int tile = decode_tile_width(d.dim_k, d.dim_v);
  const dim3 grid(unsigned(d.dim_v / tile), unsigned(d.heads_v), unsigned(d.num_seqs));
  dispatch_recurrent(io.q, d.dim_k, tile, state_v_first, [&]<typename T, int kK, int kBV, bool kVFirst>() {
    fused_recurrent_kernel<T, kK, kBV, kVFirst><<<grid, kDecodeThreads, 0, stream>>>(io.params);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {io.o, io.ht};
}

}  // namespace

TORCH_LIBRARY_IMPL(mom_ops, CUDA, m) {
  m.impl("mom_decode_step", &mom_decode_step_cuda);
  m.impl("fused_recurrent_gated_delta_rule_fwd", &fused_recurrent_fwd_cuda);
}

}  // namespace mom_ops
