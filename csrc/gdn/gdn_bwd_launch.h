// Launches of the two backward kernels (defined in gdn_bwd_chain.cu and gdn_bwd_grads.cu, one translation unit
// each so that they compile in parallel), called by the backward binding (gdn_bwd_cuda.cu).
#pragma once

#include <cuda_runtime.h>

#include "gdn/gdn_bwd_params.h"

namespace mom_ops {

// Value-block width of the grads kernel: 64 at K <= 128, 32 at K = 256.
inline int gdn_bwd_value_block(int64_t dim_k) { return dim_k == 256 ? 32 : 64; }

// gdn_bwd_chain_kernel with value blocks of bv columns (gdn_value_block's choice; 64 only at K = 64) on
// p.num_seqs x p.heads_v x p.num_vblocks CTAs.
void run_gdn_bwd_chain(const GdnBwdParams& p, bool bf16, int dim_k, int bv, cudaStream_t stream);

// The warp-specialised chain (gdn_bwd_chain_ws_kernel.cuh; K = 128 or 256, V a multiple of 128) on p.num_seqs x
// p.heads_v x p.num_vblocks CTAs (num_vblocks = V / 128); writes what run_gdn_bwd_chain writes (ds1, dh0). With
// p.pieces.chunks > 0 (K = 128) a CTA per piece slot instead of per sequence, for the cut heads only.
void run_gdn_bwd_chain_ws(const GdnBwdParams& p, bool bf16, int dim_k, cudaStream_t stream);

// The split chain (gdn_bwd_split_kernels.cuh; V % 64 == 0): its prep kernel on num_slots x p.heads_v CTAs, then the
// chain on p.num_seqs x p.heads_v x V / chain_bv (16, 32 or 64: split_chain_value_block; 16 or 32 at K = 256);
// writes what run_gdn_bwd_chain writes (ds1, dh0).
void run_gdn_bwd_chain_split(const GdnBwdSplitParams& p, bool bf16, int dim_k, int64_t num_slots, int chain_bv,
                             cudaStream_t stream);

// gdn_bwd_grads_kernel on num_slots x p.heads_v CTAs.
void run_gdn_bwd_grads(const GdnBwdParams& p, bool bf16, int dim_k, int64_t num_slots, cudaStream_t stream);

}  // namespace mom_ops
