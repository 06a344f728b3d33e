// The chunked forward's launches (gdn_cuda.cu and the kernels' .cu files) and its training forward, which the
// backward reruns where the saves were not passed (gdn_bwd_cuda.cu).
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "gdn/gdn_checks.h"
#include "gdn/gdn_fwd_kernel.cuh"
#include "gdn/gdn_split_kernels.cuh"

namespace mom_ops {

// Columns of V per forward CTA for this problem (64 or 128 at K <= 128, 32 or 64 at K = 256).
int gdn_value_block(int64_t dim_k, int64_t dim_v, int64_t num_seqs, int64_t heads_v);

// Whether MOM_OPS_GDN_BV forces gdn_value_block's width (narrow or wide; other values are not read).
bool gdn_value_block_forced();

// Whether the scan's CUDA kernels take these inputs (d: check_gdn_args's) on q's GPU: bf16 / fp16, K in
// {64, 128, 256}, V a multiple of 64 (of 32 at K = 256), and a GPU they run on (common/other_gpus.h). Where not, the
// op runs on its Triton fallback (a warning, once, for inputs the kernels do not take); float64 is an error.
bool scan_kernels_take(const at::Tensor& q, const GdnDims& d);

// Launches gdn_fwd_kernel<bf16 ? bf16 : fp16, dim_k, bv> on p.num_seqs x p.heads_v x p.num_vblocks CTAs.
void run_gdn_fwd(const GdnFwdParams& p, bool bf16, int dim_k, int bv, cudaStream_t stream);

// The warp-specialised forward (gdn_fwd_ws_kernel.cuh: K = 128, V % 128 == 0; the saves too when p.save_s0 is set)
// on p.num_seqs x p.heads_v x p.num_vblocks CTAs (p.num_vblocks = V / 128).
void run_gdn_fwd_ws(const GdnFwdParams& p, bool bf16, cudaStream_t stream);

// V-block width of the split chains (forward and backward): 64, halved (to 32, then 16) while the chains still fit
// in one wave (few, long sequences); MOM_OPS_GDN_CHAIN_BV=16 / 32 / 64 forces it.
int split_chain_value_block(int64_t num_seqs, int64_t heads_v, int64_t dim_v);

// The width MOM_OPS_GDN_CHAIN_BV forces (16, 32 or 64), or 0 (unset, or another value: not read).
int forced_split_chain_value_block();

// The split forward (gdn_split_kernels.cuh): prep on num_slots x p.heads_v CTAs, the chain on p.num_seqs x
// p.heads_v x V / chain_bv (split_chain_value_block), the outputs on num_slots x p.heads_v x V / 128 (or / 64,
// gdn_output_value_block). p.save_w, save_vn, save_s0, u and g_rk are required.
void run_gdn_fwd_split(const GdnSplitParams& p, bool bf16, int dim_k, int64_t num_slots, int chain_bv,
                       cudaStream_t stream);

// The training forward (chunk_gated_delta_rule_fwd_train's CUDA kernel): o, ht and the saves (chunk states, W,
// V_new, T) that the backward reads; the backward runs it where they were not passed, so that both give the same
// gradients bit for bit.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gdn_fwd_train_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g, const at::Tensor& beta,
    double scale, const std::optional<at::Tensor>& initial_state, bool output_final_state, bool use_qk_l2norm,
    bool state_v_first, const std::optional<at::Tensor>& cu_seqlens, const std::optional<at::Tensor>& chunk_indices);

}  // namespace mom_ops
