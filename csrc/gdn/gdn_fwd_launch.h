// The chunked forward's launch, shared by the forward binding (gdn_cuda.cu, where it is defined) and the
// backward's rerun of the forward with saves (gdn_bwd_cuda.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "gdn/gdn_fwd_kernel.cuh"
#include "gdn/gdn_split_kernels.cuh"

namespace mom_ops {

// Columns of V per forward CTA for this problem (64 or 128 at K <= 128, 32 or 64 at K = 256).
int gdn_value_block(int64_t dim_k, int64_t dim_v, int64_t num_seqs, int64_t heads_v);

// Whether MOM_OPS_GDN_BV forces gdn_value_block's width (narrow or wide; other values are not read).
bool gdn_value_block_forced();

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

}  // namespace mom_ops
