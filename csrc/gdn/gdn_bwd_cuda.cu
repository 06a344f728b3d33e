// CUDA binding of the chunked gated-delta-rule backward (issue #5): checks, then three launches on tensor cores:
//  1. unless chunk_gated_delta_rule_fwd_train saved them: that training forward again (gdn_fwd_train_cuda: the same
//     kernels, so the same saves), for S0 of every chunk, W, V_new and T (16-bit);
//  2. the state-gradient chain in reverse (gdn_bwd_chain_kernel.cuh, gdn_bwd_chain_ws_kernel.cuh or
//     gdn_bwd_split_kernels.cuh: use_split_backward_chain, use_warp_specialised_backward_chain): dS1
//     of every chunk, dh0;
//  3. every chunk's gradients in parallel (gdn_bwd_grads_kernel.cuh): dq, dk, dv, dg, dbeta.
// With HV > H (GVA) the grads kernel writes dq, dk per value head in fp32 and the group sum and the l2norm
// backward run here in torch. Design, count and measurements: csrc/gdn/NOTES.md.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "common/aligned.h"
#include "common/env_flag.h"
#include "common/other_gpus.h"
#include "common/tma_host.h"
#include "gdn/gdn_bwd_launch.h"
#include "gdn/gdn_checks.h"
#include "gdn/gdn_fwd_launch.h"
#include "gdn/l2norm_backward.h"
#include "gdn/piece_plan_launch.h"
#include "gdn/scan_io.h"
#include "gdn/scan_prologue.cuh"

namespace mom_ops {
namespace {

// A tensor saved by the training forward: the expected shape, q's dtype and device, contiguous.
at::Tensor checked_saved(const at::Tensor& t, const char* name, const std::vector<int64_t>& shape,
                         const at::Tensor& q) {
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(shape), name, " must have shape ", at::IntArrayRef(shape),
                    " (as chunk_gated_delta_rule_fwd_train returns it), got ", t.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == q.scalar_type() && t.device() == q.device(), name, " must be ",
                    q.scalar_type(), " on ", q.device(), ", got ", t.scalar_type(), " on ", t.device());
  return contiguous_aligned16(t);  // read in 16-byte copies
}

// The warp-specialised chain (gdn_bwd_chain_ws_kernel.cuh) where it applies: K = 128 or 256, V a multiple of 128
// (and not the split chain's few long sequences). At K = 256 only where its grid fills the GPU (else the split chain
// below). MOM_OPS_GDN_BWD_WS=0 leaves the chain kernel (K = 128) or the split chain (K = 256), =1 takes the ws chain
// wherever it applies.
bool use_warp_specialised_backward_chain(const GdnDims& d) {
  if ((d.dim_k != 128 && d.dim_k != 256) || d.dim_v % 128 != 0 || env_is("MOM_OPS_GDN_BWD_WS", "0")) return false;
  if (d.dim_k == 128 || env_is("MOM_OPS_GDN_BWD_WS", "1")) return true;
  const int64_t ctas = d.num_seqs * d.heads_v * (d.dim_v / 128);
  return ctas >= int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
}

// The split backward chain (gdn_bwd_split_kernels.cuh: P^T dO and diag(scale rq e^G) dO for all chunks at once,
// then per chunk only the products that read dS) instead of the chain kernel for few long sequences, as the
// forward's split; V a multiple of 64. K <= 128: where the chain kernel's grid is under two waves. H200, T = 32768,
// fwd+bwd: n1 D128 7.38 -> 4.42 ms (with the load warps and narrow chains), n32 D128 3.70 chain kernel vs 3.74 split
// (NOTES.md). K = 256: wherever the ws chain's grid does not fill the GPU (the layer at T = 8K, 32K), in place of
// the chain kernel, which forms P and loads q, k in series with every chunk. MOM_OPS_GDN_BWD_SPLIT=1 / 0 forces.
bool use_split_backward_chain(const GdnDims& d, int fwd_bv) {
  if (d.dim_v % 64 != 0) return false;
  if (env_is("MOM_OPS_GDN_BWD_SPLIT", "1")) return true;
  if (env_is("MOM_OPS_GDN_BWD_SPLIT", "0")) return false;
  if (d.dim_k == 256) return !use_warp_specialised_backward_chain(d);
  const int64_t chain_ctas = d.num_seqs * d.heads_v * (d.dim_v / fwd_bv);
  return chain_ctas < 2 * int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
}

// Who scales the ws chain's Qs: the state warpgroups at K = 128, aux at K = 256 (H200, chain kernel time: K = 128
// 0.339 -> 0.326 ms with the state warpgroups; K = 256 0.404 vs 0.412 ms). MOM_OPS_GDN_BWD_WS_QS=aux / state forces.
bool ws_chain_qs_in_state(const GdnDims& d) {
  return d.dim_k == 128 ? !env_is("MOM_OPS_GDN_BWD_WS_QS", "aux") : env_is("MOM_OPS_GDN_BWD_WS_QS", "state");
}

// The state-gradient chain in pieces (scan_pieces.cuh) where the split chain runs (few long sequences) at K = 128,
// V % 128 == 0 with in-kernel l2norm: the ws chain takes every (sequence, head) whose decay allows the cut, piece by
// piece (each warmed up from dS = 0 over the chunks after it), the split chain the others. H200, n1 D128 T = 32K,
// fwd + bwd: 2.970 -> 2.389 ms at the bench's decay, +0.036 ms at g x 0.02 where nothing is cut (NOTES.md,
// "Against FlashQLA"). MOM_OPS_GDN_BWD_PIECES=0 turns it off.
bool use_backward_pieces(const GdnDims& d, bool use_qk_l2norm) {
  return d.dim_k == 128 && d.dim_v % 128 == 0 && use_qk_l2norm && !env_is("MOM_OPS_GDN_BWD_PIECES", "0");
}

// The split chain's V-block width: the forward's rule (split_chain_value_block), at most 32 at K = 256.
int backward_split_chain_value_block(const GdnDims& d) {
  const int bv = split_chain_value_block(d.num_seqs, d.heads_v, d.dim_v);
  return d.dim_k == 256 ? std::min(bv, 32) : bv;
}

// The chain kernel's V-block width at K = 256 where only the lengths can tell. The forward's rule (gdn_value_block)
// takes narrow 32-column blocks only where their CTAs fit in one wave, else wide 64-column ones. Past that, narrow
// blocks still finish first where one long sequence is the tail: the layer at T = 32K (the shared memory's
// 32K-row segment beside four ~16K-row routed ones), chain 4.90 -> 3.70 ms (H200); with even lengths they need a
// second wave (five 16K-row sequences: +1.3 ms). There the order kernel simulates both (ChainWidthChoice) and both
// widths are launched, the one not chosen returning at once. A narrow chunk costs 0.755 of a wide one (measured at
// T = 32K). MOM_OPS_GDN_BV=narrow / wide forces (gdn_value_block). Since the split chain took over at K = 256 (few
// sequences), the chain kernel runs there only with MOM_OPS_GDN_BWD_SPLIT=0.
ChainWidthChoice backward_chain_width_choice(const GdnDims& d, const ScanParams& p, int fwd_bv) {
  const int narrow = gdn_bwd_value_block(d.dim_k);  // one chain CTA per SM at K = 256 (gdn_bwd_chain.cu checks)
  if (d.dim_k != 256 || fwd_bv != 2 * narrow || gdn_value_block_forced()) return {};
  return chain_width_choice(p, d.heads_v * (d.dim_v / narrow), 0.755f);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gdn_bwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g, const at::Tensor& beta,
    double scale, const std::optional<at::Tensor>& initial_state, const at::Tensor& grad_o,
    const std::optional<at::Tensor>& grad_final_state, bool use_qk_l2norm, bool state_v_first,
    const std::optional<at::Tensor>& cu_seqlens, const std::optional<at::Tensor>& chunk_indices,
    const std::optional<at::Tensor>& chunk_states, const std::optional<at::Tensor>& saved_w,
    const std::optional<at::Tensor>& saved_v_new, const std::optional<at::Tensor>& saved_t) {
  const GdnDims d = check_gdn_args(q, k, v, g, beta, initial_state, state_v_first, cu_seqlens, chunk_indices);
  TORCH_CHECK_VALUE(grad_o.sizes() == v.sizes(), "grad_o must have the shape of v ", v.sizes(), ", got ",
                    grad_o.sizes());
  TORCH_CHECK_VALUE(grad_o.device() == q.device(), "grad_o must be on ", q.device(), ", got ", grad_o.device());
  const std::vector<int64_t> state_shape = {d.num_seqs, d.heads_v, state_v_first ? d.dim_v : d.dim_k,
                                            state_v_first ? d.dim_k : d.dim_v};
  if (grad_final_state.has_value()) {
    TORCH_CHECK_VALUE(grad_final_state->sizes() == at::IntArrayRef(state_shape), "grad_final_state must have shape ",
                      at::IntArrayRef(state_shape), ", got ", grad_final_state->sizes());
    TORCH_CHECK_VALUE(grad_final_state->device() == q.device(), "grad_final_state must be on ", q.device());
  }
  const bool have_saved = chunk_states.has_value() && chunk_states->numel() > 0;
  TORCH_CHECK_VALUE(!have_saved || (saved_w.has_value() && saved_v_new.has_value() && saved_t.has_value()),
                    "chunk_states, w, v_new and t come together (from chunk_gated_delta_rule_fwd_train)");
  if (!scan_kernels_take(q, d)) {
    return call_other_gpu_fallback<decltype(gdn_bwd_cuda)>(
        "chunk_gated_delta_rule_bwd", q.device(), q, k, v, g, beta, scale, initial_state, grad_o, grad_final_state,
        use_qk_l2norm, state_v_first, cu_seqlens, chunk_indices, chunk_states, saved_w, saved_v_new, saved_t);
  }
  c10::cuda::CUDAGuard guard(q.device());  // first: the V-block choice reads this device's SM count
  const int bwd_bv = gdn_bwd_value_block(d.dim_k);
  const int fwd_bv = gdn_value_block(d.dim_k, d.dim_v, d.num_seqs, d.heads_v);
  TORCH_INTERNAL_ASSERT(d.dim_v % bwd_bv == 0 && d.dim_v % fwd_bv == 0);  // (scan_kernels_take)
  ScanIO io = prepare_scan_io(q, k, v, g, beta, scale, initial_state, /*output_final_state=*/false, use_qk_l2norm,
                              state_v_first, cu_seqlens, d, /*need_o=*/false);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t rows = d.batch * d.seqlen, slots = chunk_slots(rows, d.num_seqs);
  const bool gva = d.heads_v != d.heads_qk;
  const auto opts = q.options(), f32 = q.options().dtype(at::kFloat);
  const at::Tensor dout = contiguous_aligned16(grad_o.to(q.scalar_type()));  // read in 16-byte copies
  const at::Tensor dht = grad_final_state.has_value() ? grad_final_state->to(at::kFloat).contiguous() : at::Tensor();

  at::Tensor dq = gva ? at::empty({rows, d.heads_v, d.dim_k}, f32) : at::empty(q.sizes(), opts);
  at::Tensor dk = gva ? at::empty({rows, d.heads_v, d.dim_k}, f32) : at::empty(k.sizes(), opts);
  at::Tensor dv = at::empty(v.sizes(), opts);
  // in g's / beta's shapes (the [rows, HV] layout): returned without a reshape, so not views, as the CPU op's
  at::Tensor dg = at::empty(g.sizes(), f32), dbeta = at::empty(beta.sizes(), f32);
  at::Tensor dh0 = io.h0.defined() ? at::empty(state_shape, f32) : at::empty({0}, f32);
  zero_rows_past_end(io.params, {&dq, &dk, &dv, &dg, &dbeta}, stream);

  if (d.num_seqs > 0 && d.heads_v > 0 && rows > 0) {
    const bool bf16 = q.scalar_type() == at::kBFloat16;
    const bool split_chain = use_split_backward_chain(d, fwd_bv);
    const bool ws_chain = !split_chain && use_warp_specialised_backward_chain(d);
    const ChainWidthChoice width_choice =
        split_chain || ws_chain ? ChainWidthChoice{} : backward_chain_width_choice(d, io.params, fwd_bv);
    const at::Tensor order = longest_first_order(io, stream, width_choice);
    const std::vector<int64_t> s0_shape = {slots, d.heads_v, d.dim_k, d.dim_v};
    const at::Tensor ds1 = at::empty(s0_shape, opts);
    at::Tensor s0, w, vn, t;
    if (have_saved) {  // from chunk_gated_delta_rule_fwd_train
      s0 = checked_saved(*chunk_states, "chunk_states", s0_shape, q);
      w = checked_saved(*saved_w, "w", {rows, d.heads_v, d.dim_k}, q);
      vn = checked_saved(*saved_v_new, "v_new", {rows, d.heads_v, d.dim_v}, q);
      t = checked_saved(*saved_t, "t", {rows, d.heads_v, kGdnChunk}, q);
    } else {  // rerun the training forward (the same kernels as the autograd path, so the same saves)
      std::tie(std::ignore, std::ignore, s0, w, vn, t) =
          gdn_fwd_train_cuda(q, k, v, g, beta, scale, initial_state, /*output_final_state=*/false, use_qk_l2norm,
                             state_v_first, cu_seqlens, chunk_indices);
    }

    GdnBwdParams bp{};
    static_cast<ScanParams&>(bp) = io.params;
    bp.dout = dout.data_ptr();
    bp.dht = dht.defined() ? dht.data_ptr<float>() : nullptr;
    bp.dh0 = io.h0.defined() ? dh0.data_ptr<float>() : nullptr;
    bp.s0 = s0.data_ptr();
    bp.w = w.data_ptr();
    bp.vn = vn.data_ptr();
    bp.t = t.data_ptr();
    bp.ds1 = ds1.data_ptr();
    bp.num_vblocks = int(d.dim_v / fwd_bv);  // the chain's value blocks are the forward's
    bp.v_first = state_v_first;
    bp.seq_order = order.defined() ? order.data_ptr<int>() : nullptr;
    bp.dq = dq.data_ptr();
    bp.dk = dk.data_ptr();
    bp.dqk_per_value_head = gva;
    bp.dv = dv.data_ptr();
    bp.dg = dg.data_ptr<float>();
    bp.dbeta = dbeta.data_ptr<float>();
    if (split_chain) {
      GdnBwdSplitParams sbp{};
      static_cast<GdnBwdParams&>(sbp) = bp;
      const at::Tensor pdo = at::empty({rows, d.heads_v, d.dim_v}, f32);
      const at::Tensor doq = at::empty({rows, d.heads_v, d.dim_v}, opts);
      const at::Tensor g_rk = at::empty({slots, d.heads_v, 2, kGdnChunk}, f32);
      sbp.pdo = pdo.data_ptr<float>();
      sbp.doq = doq.data_ptr();
      sbp.g_rk = g_rk.data_ptr<float>();
      // (q,) k and W by TMA (the maps' row coordinate is 32-bit); where a map is refused, by cp.async
      const int64_t hd = d.heads_qk * d.dim_k, vd = d.heads_v * d.dim_k;
      sbp.chain_tma = gdn_chain_tma() && rows + kGdnChunk < (int64_t(1) << 31) &&
                      tensor_map_3d(&sbp.q_map, sbp.q, bf16, d.dim_k, d.heads_qk, rows, d.dim_k, hd, 64, 64) &&
                      tensor_map_3d(&sbp.k_map, sbp.k, bf16, d.dim_k, d.heads_qk, rows, d.dim_k, hd, 64, 64) &&
                      tensor_map_3d(&sbp.w_map, sbp.w, bf16, d.dim_k, d.heads_v, rows, d.dim_k, vd, 64, 64);
      PiecePlan piece_plan;  // (its workspace lives until the kernels are issued)
      if (use_backward_pieces(d, use_qk_l2norm)) {
        piece_plan = launch_piece_plan(io.params, d, rows, /*backward=*/true, opts, stream);
        sbp.pieces = piece_plan.pieces;
        GdnBwdParams wp = sbp;  // the cut (sequence, head)s; the split chain the rest
        wp.num_vblocks = int(d.dim_v / 128);
        wp.ws_qs_in_state = ws_chain_qs_in_state(d);
        run_gdn_bwd_chain_ws(wp, bf16, int(d.dim_k), stream);
      }
      run_gdn_bwd_chain_split(sbp, bf16, int(d.dim_k), slots, backward_split_chain_value_block(d), stream);
    } else if (ws_chain) {
      bp.num_vblocks = int(d.dim_v / 128);
      bp.ws_qs_in_state = ws_chain_qs_in_state(d);
      run_gdn_bwd_chain_ws(bp, bf16, int(d.dim_k), stream);
    } else if (width_choice.slots > 0) {  // both widths; the order kernel's flag (order[N]) lets one run
      for (const int id : {0, 1}) {
        GdnBwdParams width_p = bp;
        const int bv = id == 1 ? fwd_bv / 2 : fwd_bv;
        width_p.num_vblocks = int(d.dim_v / bv);
        width_p.chain_width = order.data_ptr<int>() + d.num_seqs;
        width_p.chain_width_id = id;
        run_gdn_bwd_chain(width_p, bf16, int(d.dim_k), bv, stream);
      }
    } else {
      run_gdn_bwd_chain(bp, bf16, int(d.dim_k), fwd_bv, stream);
    }
    run_gdn_bwd_grads(bp, bf16, int(d.dim_k), slots, stream);
  } else if (io.h0.defined()) {
    dh0.copy_(grad_final_state.has_value() ? dht : at::zeros_like(dh0));
  }

  if (gva) {  // sum over the value heads of each q/k head, then the l2norm backward, in fp32
    const int64_t group = d.heads_v / d.heads_qk;
    dq = dq.view({rows, d.heads_qk, group, d.dim_k}).sum(2);
    dk = dk.view({rows, d.heads_qk, group, d.dim_k}).sum(2);
    if (use_qk_l2norm) {
      dq = l2norm_backward(io.q.view({rows, d.heads_qk, d.dim_k}).to(at::kFloat), dq);
      dk = l2norm_backward(io.k.view({rows, d.heads_qk, d.dim_k}).to(at::kFloat), dk);
    }
    dq = dq.view(q.sizes()).to(q.scalar_type());  // (16-bit q: a new tensor, not a view)
    dk = dk.view(k.sizes()).to(q.scalar_type());
  }
  return {dq, dk, dv, dg.to(g.scalar_type()), dbeta.to(beta.scalar_type()), dh0};
}

}  // namespace

TORCH_LIBRARY_IMPL(mom_ops, CUDA, m) { m.impl("chunk_gated_delta_rule_bwd", &gdn_bwd_cuda); }

}  // namespace mom_ops
