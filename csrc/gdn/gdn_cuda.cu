// CUDA binding of the chunked gated-delta-rule forward (tensor cores): checks, the prologue launches (row
// zeroing, longest-first order) and the kernel dispatch over dtype and head dim.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>

#include "common/env_flag.h"
#include "common/other_gpus.h"
#include "common/static_switch.h"
#include "common/tma_host.h"
#include "gdn/gdn_checks.h"
#include "gdn/gdn_fwd_kernel.cuh"
#include "gdn/gdn_fwd_launch.h"
#include "gdn/piece_plan_launch.h"
#include "gdn/scan_io.h"
#include "gdn/scan_launch.cuh"
#include "gdn/scan_prologue.cuh"

namespace mom_ops {

// Columns of V per CTA. The state tile S [K, BV] lives in registers and every V-block repeats the chunk-local
// work (A, T, W, U), so wide blocks (128 at K = 128, 64 at K = 256) repeat half as much; narrow ones (64, 32) give
// twice the CTAs. Wide wherever narrow blocks would need more than one wave (H100: n32 D128 1.157 -> 0.930 ms,
// n32 D256 1.620 -> 0.943 ms), narrow for few long chains (n1 D128: 6.38 narrow, 6.62 wide).
// MOM_OPS_GDN_BV=wide|narrow overrides (experiments).
int gdn_value_block(int64_t dim_k, int64_t dim_v, int64_t num_seqs, int64_t heads_v) {
  const int narrow = dim_k == 256 ? 32 : 64;
  if (dim_k < 128 || dim_v % (2 * narrow) != 0) return narrow;
  if (env_is("MOM_OPS_GDN_BV", "wide")) return 2 * narrow;
  if (env_is("MOM_OPS_GDN_BV", "narrow")) return narrow;
  const int64_t narrow_ctas = num_seqs * heads_v * (dim_v / narrow);
  const int narrow_ctas_per_sm = dim_k == 256 ? 1 : 2;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return narrow_ctas > int64_t(sms) * narrow_ctas_per_sm ? 2 * narrow : narrow;
}

bool gdn_value_block_forced() { return env_is("MOM_OPS_GDN_BV", "wide") || env_is("MOM_OPS_GDN_BV", "narrow"); }

bool scan_kernels_take(const at::Tensor& q, const GdnDims& d) {
  TORCH_CHECK_VALUE(q.scalar_type() != at::kDouble, "float64 q, k, v run on the CPU only");
  if (!cuda_kernels_run_on(q.device())) return false;
  const bool dtype = q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf;
  const bool dims = (d.dim_k == 64 || d.dim_k == 128 || d.dim_k == 256) && d.dim_v % (d.dim_k == 256 ? 32 : 64) == 0;
  if (dtype && dims) return true;
  TORCH_WARN_ONCE("mom_ops: the scan's CUDA kernels take bfloat16 / float16 q, k, v with K in {64, 128, 256} and V a "
                  "multiple of 64 (of 32 at K = 256); ", q.scalar_type(), " with K = ", d.dim_k, ", V = ", d.dim_v,
                  " runs on the Triton fallback, correct but far slower (mom_ops/_other_gpus.py).");
  return false;
}

namespace {

// The most chunks the split chain signals at a time to the outputs beside it (GdnSplitParams::chunks_per_signal):
// MOM_OPS_GDN_CHUNK_SIGNAL=N (>= 1; 1 signals each chunk), default 16.
int chunks_per_signal() {
  const char* env = std::getenv("MOM_OPS_GDN_CHUNK_SIGNAL");
  if (env == nullptr) return 16;
  char* end = nullptr;
  const long long chunks = std::strtoll(env, &end, 10);
  TORCH_CHECK_VALUE(end != env && *end == '\0' && chunks >= 1 && chunks <= 1024,
                    "MOM_OPS_GDN_CHUNK_SIGNAL must be a number of chunks in [1, 1024], got ", env);
  return int(chunks);
}

template <typename T, int kK, int kBV>
void launch_gdn_fwd(const GdnFwdParams& p, cudaStream_t stream) {
  using L = GdnSmem<T, kK, kBV>;
  auto kernel = p.save_s0 != nullptr ? gdn_fwd_kernel<T, kK, kBV, true> : gdn_fwd_kernel<T, kK, kBV, false>;
  // (two CTAs per SM fit in shared memory at K <= 128 with 64-column blocks)
  launch_scan_kernel(kernel, p, int64_t(p.num_seqs) * p.heads_v * p.num_vblocks, kGdnThreads, L::kBytes, stream,
                     "(sequence, head, V-block)");
}

}  // namespace

// The forward kernel for (dtype, K, value block); also the backward's rerun (gdn_bwd_cuda.cu).
void run_gdn_fwd(const GdnFwdParams& p, bool bf16, int dim_k, int bv, cudaStream_t stream) {
  BOOL_SWITCH(bf16, kBf16, [&] {
    using T = std::conditional_t<kBf16, __nv_bfloat16, __half>;
    HEADDIM_SWITCH(dim_k, kK, [&] {
      if constexpr (kK == 64) {
        launch_gdn_fwd<T, kK, 64>(p, stream);
      } else {
        constexpr int kNarrow = kK == 256 ? 32 : 64;
        if (bv == 2 * kNarrow) {
          launch_gdn_fwd<T, kK, 2 * kNarrow>(p, stream);
        } else {
          launch_gdn_fwd<T, kK, kNarrow>(p, stream);
        }
      }
    });
  });
}

namespace {

// The split forward (gdn_split_kernels.cuh: chunk-local terms for all chunks at once, then only the two state
// products per chunk in series, then the outputs) instead of the fused kernel: where the fused grid leaves most
// SMs idle (few long sequences: each fused CTA runs all its chunk-local work in series), at K = 256 (fused
// V-blocks of 32 or 64 repeat the chunk-local work 4-8 times) and in the training forward (`training`), where the
// fused kernel's stores of the saves cost more than the split's passes (H200, n32 D128 fwd+bwd 3.60 -> 3.43 ms; the
// split's saves are its own intermediates). H200, T = 32768: n1 D128 fwd 6.75 -> 1.23 ms, n32 D256 0.975 -> 0.856,
// but n32 D128 inference 0.94 fused vs 1.03 split (NOTES.md).
// MOM_OPS_GDN_SPLIT=1 / 0 forces the split / fused forward (tests, experiments).
bool use_split_forward(const GdnDims& d, int bv, bool training) {
  if (d.dim_v % kSplitBV != 0) return false;
  if (env_is("MOM_OPS_GDN_SPLIT", "1")) return true;
  if (env_is("MOM_OPS_GDN_SPLIT", "0")) return false;
  if (d.dim_k == 256 || training) return true;
  const int64_t fused_ctas = d.num_seqs * d.heads_v * (d.dim_v / bv);
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return fused_ctas < 2 * int64_t(sms);
}

// The warp-specialised forward (gdn_fwd_ws_kernel.cuh) at K = 128 with V a multiple of 128 where the inference
// forward would not take the split (large grids), for inference and training (with the saves) alike. H200 n32 D128
// (NOTES.md): inference 0.909 (fused) -> 0.486 ms, fwd + bwd 3.00 (split forward) -> 2.91 ms.
// MOM_OPS_GDN_WS=0 keeps the fused / split kernels; MOM_OPS_GDN_WS_TRAIN=0 the split for the training forward only.
bool use_warp_specialised_forward(const GdnDims& d, int bv, bool training) {
  if (d.dim_k != 128 || d.dim_v % 128 != 0) return false;
  if (env_is("MOM_OPS_GDN_WS", "0")) return false;
  if (training && env_is("MOM_OPS_GDN_WS_TRAIN", "0")) return false;
  return !use_split_forward(d, bv, false);
}

// Long sequences in pieces (scan_pieces.cuh) where the split forward would run (few, long sequences; inference and
// training) at K = 128, V % 128 == 0 with in-kernel l2norm: the warp-specialised kernel takes every (sequence, head)
// whose decay allows the cut, the split forward the others (H200, n1 D128 T = 32K: fwd 1.13 -> 0.58 ms at the
// bench's decay, fwd + bwd 3.30 -> 2.97, 2.39 with the backward's pieces; NOTES.md, "Against FlashQLA").
// MOM_OPS_GDN_PIECES=0 turns it off.
bool use_pieces(const GdnDims& d, bool use_qk_l2norm, bool split) {
  return split && use_qk_l2norm && d.dim_k == 128 && d.dim_v % 128 == 0 && !env_is("MOM_OPS_GDN_PIECES", "0");
}

// The split chain's V-block width at K = 256 where only the lengths can tell (as the backward chain's,
// gdn_bwd_cuda.cu): split_chain_value_block takes 32-column chains only where they fit in one wave, but they also
// finish first where one long sequence is the tail (H200, layer T = 32K: fwd 4.66 -> 4.00 ms with them forced; five
// even 16K-row sequences: 1.79 -> 2.00 ms). A narrow chunk costs 0.65 of a wide one (measured there). Not with the
// outputs beside the chain (their counters count one width's CTAs); MOM_OPS_GDN_CHAIN_BV forces a width.
ChainWidthChoice forward_chain_width_choice(const GdnDims& d, const ScanParams& p, int chain_bv) {
  if (d.dim_k != 256 || chain_bv != 64 || forced_split_chain_value_block() != 0) return {};
  return chain_width_choice(p, d.heads_v * (d.dim_v / 32), 0.65f);  // one CTA per SM (gdn_split.cu checks)
}

// The forward; with `saved` (the training forward) it also writes what the backward reads: the state at every
// chunk start, W, V_new and T (16-bit).
struct GdnSaved {
  at::Tensor chunk_states, w, v_new, t;

  // Empty tensors for a forward over `rows` rows (t only when with_t: the split forward's inference workspace
  // needs the other three).
  static GdnSaved empty(const at::Tensor& q, const GdnDims& d, int64_t rows, bool with_t) {
    GdnSaved s;
    s.chunk_states = at::empty({chunk_slots(rows, d.num_seqs), d.heads_v, d.dim_k, d.dim_v}, q.options());
    s.w = at::empty({rows, d.heads_v, d.dim_k}, q.options());
    s.v_new = at::empty({rows, d.heads_v, d.dim_v}, q.options());
    if (with_t) s.t = at::empty({rows, d.heads_v, kGdnChunk}, q.options());
    return s;
  }
};

// The forward on the CUDA kernels (d: check_gdn_args's, where scan_kernels_take(q, d)).
std::tuple<at::Tensor, at::Tensor> run_forward(const GdnDims& d, const at::Tensor& q, const at::Tensor& k,
                                               const at::Tensor& v, const at::Tensor& g, const at::Tensor& beta,
                                               double scale, const std::optional<at::Tensor>& initial_state,
                                               bool output_final_state, bool use_qk_l2norm, bool state_v_first,
                                               const std::optional<at::Tensor>& cu_seqlens, GdnSaved* saved) {
  c10::cuda::CUDAGuard guard(q.device());  // first: the V-block choice reads this device's SM count
  const int bv = gdn_value_block(d.dim_k, d.dim_v, d.num_seqs, d.heads_v);
  TORCH_CHECK_VALUE(d.num_seqs * d.heads_v * (d.dim_v / bv) < (int64_t(1) << 31), "too many sequences x heads");
  ScanIO io = prepare_scan_io(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm, state_v_first,
                              cu_seqlens, d);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t rows = d.batch * d.seqlen;
  if (saved != nullptr) *saved = GdnSaved::empty(q, d, rows, true);
  zero_rows_past_end(io, stream);
  if (d.num_seqs == 0 || d.heads_v == 0) return {io.o, io.ht};
  const bool ws = use_warp_specialised_forward(d, bv, saved != nullptr);
  const bool split = !ws && use_split_forward(d, bv, saved != nullptr);
  const int chain_bv = split ? split_chain_value_block(d.num_seqs, d.heads_v, d.dim_v) : 0;
  const bool pieces = use_pieces(d, use_qk_l2norm, split);
  const bool overlap = split && gdn_split_overlap(d.dim_k, chain_bv);
  const ChainWidthChoice width_choice =
      split && !overlap ? forward_chain_width_choice(d, io.params, chain_bv) : ChainWidthChoice{};
  const at::Tensor order = longest_first_order(io, stream, width_choice);
  GdnFwdParams p{};
  static_cast<ScanParams&>(p) = io.params;
  p.num_vblocks = int(d.dim_v / bv);
  p.v_first = state_v_first;
  p.seq_order = order.defined() ? order.data_ptr<int>() : nullptr;
  if (saved != nullptr) {
    p.save_s0 = saved->chunk_states.data_ptr();
    p.save_w = saved->w.data_ptr();
    p.save_vn = saved->v_new.data_ptr();
    p.save_t = saved->t.data_ptr();
  }
  if (ws) {
    p.num_vblocks = int(d.dim_v / 128);
    run_gdn_fwd_ws(p, q.scalar_type() == at::kBFloat16, stream);
    return {io.o, io.ht};
  }
  PiecePlan piece_plan;  // (its workspace lives until the kernels are issued)
  if (pieces) {
    piece_plan = launch_piece_plan(io.params, d, rows, /*backward=*/false, q.options(), stream);
    p.pieces = piece_plan.pieces;
    GdnFwdParams wp = p;
    wp.num_vblocks = int(d.dim_v / 128);
    run_gdn_fwd_ws(wp, q.scalar_type() == at::kBFloat16, stream);  // the cut (sequence, head)s; the split the rest
  }
  if (split) {
    GdnSplitParams sp{};
    static_cast<GdnFwdParams&>(sp) = p;
    // Without `saved` (inference), what the backward would keep is workspace here.
    const GdnSaved work = saved != nullptr ? *saved : GdnSaved::empty(q, d, rows, false);
    const at::Tensor u = at::empty({rows, d.heads_v, d.dim_v}, q.options().dtype(at::kFloat));
    const at::Tensor g_rk =
        at::empty({chunk_slots(rows, d.num_seqs), d.heads_v, 2, kGdnChunk}, q.options().dtype(at::kFloat));
    sp.save_s0 = work.chunk_states.data_ptr();
    sp.save_w = work.w.data_ptr();
    sp.save_vn = work.v_new.data_ptr();
    sp.save_t = work.t.defined() ? work.t.data_ptr() : nullptr;
    sp.u = u.data_ptr<float>();
    sp.g_rk = g_rk.data_ptr<float>();
    // The wgmma chain's W and K by TMA (the maps' row coordinate is 32-bit); where a map is refused, by cp.async.
    const bool bf16 = q.scalar_type() == at::kBFloat16;
    sp.chain_tma = gdn_chain_tma() && rows + kGdnChunk < (int64_t(1) << 31) &&
                   tensor_map_3d(&sp.w_map, sp.save_w, bf16, d.dim_k, d.heads_v, rows, d.dim_k, d.heads_v * d.dim_k,
                                 64, 64) &&
                   tensor_map_3d(&sp.k_map, sp.k, bf16, d.dim_k, d.heads_qk, rows, d.dim_k, d.heads_qk * d.dim_k, 64,
                                 64);
    const int64_t slots = chunk_slots(rows, d.num_seqs);
    at::Tensor counters;  // the outputs beside the chain: [slots, HV] chunk counters, then the chains' (prep zeroes)
    if (overlap) {
      counters = at::empty({slots * d.heads_v + 1}, q.options().dtype(at::kInt));
      sp.chunk_ready = counters.data_ptr<int>();
      sp.chains_done = sp.chunk_ready + slots * d.heads_v;
      sp.chain_ctas_per_head = int(d.dim_v / chain_bv);
      sp.chain_ctas = int(d.num_seqs * d.heads_v * (d.dim_v / chain_bv));
      sp.chunks_per_signal = chunks_per_signal();
    }
    if (width_choice.slots > 0) sp.chain_width = order.data_ptr<int>() + d.num_seqs;  // both widths launched
    run_gdn_fwd_split(sp, q.scalar_type() == at::kBFloat16, int(d.dim_k), slots, chain_bv, stream);
    return {io.o, io.ht};
  }
  run_gdn_fwd(p, q.scalar_type() == at::kBFloat16, int(d.dim_k), bv, stream);
  return {io.o, io.ht};
}

std::tuple<at::Tensor, at::Tensor> gdn_fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                const at::Tensor& g, const at::Tensor& beta, double scale,
                                                const std::optional<at::Tensor>& initial_state,
                                                bool output_final_state, bool use_qk_l2norm, bool state_v_first,
                                                const std::optional<at::Tensor>& cu_seqlens,
                                                const std::optional<at::Tensor>& chunk_indices) {
  const GdnDims d = check_gdn_args(q, k, v, g, beta, initial_state, state_v_first, cu_seqlens, chunk_indices);
  if (!scan_kernels_take(q, d)) {
    return call_other_gpu_fallback<decltype(gdn_fwd_cuda)>(
        "chunk_gated_delta_rule_fwd", q.device(), q, k, v, g, beta, scale, initial_state, output_final_state,
        use_qk_l2norm, state_v_first, cu_seqlens, chunk_indices);
  }
  return run_forward(d, q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm, state_v_first,
                     cu_seqlens, nullptr);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gdn_fwd_train_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g, const at::Tensor& beta,
    double scale, const std::optional<at::Tensor>& initial_state, bool output_final_state, bool use_qk_l2norm,
    bool state_v_first, const std::optional<at::Tensor>& cu_seqlens, const std::optional<at::Tensor>& chunk_indices) {
  const GdnDims d = check_gdn_args(q, k, v, g, beta, initial_state, state_v_first, cu_seqlens, chunk_indices);
  if (!scan_kernels_take(q, d)) {  // (the fallback saves nothing: its backward recomputes)
    return call_other_gpu_fallback<decltype(gdn_fwd_train_cuda)>(
        "chunk_gated_delta_rule_fwd_train", q.device(), q, k, v, g, beta, scale, initial_state, output_final_state,
        use_qk_l2norm, state_v_first, cu_seqlens, chunk_indices);
  }
  GdnSaved saved;
  auto [o, ht] = run_forward(d, q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm,
                             state_v_first, cu_seqlens, &saved);
  return {o, ht, saved.chunk_states, saved.w, saved.v_new, saved.t};
}

TORCH_LIBRARY_IMPL(mom_ops, CUDA, m) {
  m.impl("chunk_gated_delta_rule_fwd", &gdn_fwd_cuda);
  m.impl("chunk_gated_delta_rule_fwd_train", &gdn_fwd_train_cuda);
}

}  // namespace mom_ops
