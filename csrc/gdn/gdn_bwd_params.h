// What the two backward kernels of the chunked scan take (gdn_bwd_chain_kernel.cuh, gdn_bwd_grads_kernel.cuh):
// the forward's inputs (ScanParams), the upstream gradients, the tensors the forward rerun saved (16-bit, the input
// dtype: chunk-start states S0 by slot, W, V_new and T by row) and the gradient outputs.
#pragma once

#include <cuda.h>

#include "gdn/scan_params.h"
#include "gdn/scan_pieces.cuh"

namespace mom_ops {

struct GdnBwdParams : ScanParams {
  const void* dout;        // [rows, HV, V] dL/do
  const float* dht;        // [N, HV, K, V] ([N, HV, V, K] with v_first) dL/d final state, or nullptr
  float* dh0;              // same shape: dL/d initial state, or nullptr
  const void* s0;          // [slots, HV, K, V] state at every chunk start (chunk_slot)
  const void* w;           // [rows, HV, K] W = T diag(beta e^G rk) K
  const void* vn;          // [rows, HV, V] V_new
  const void* t;           // [rows, HV, 64] T = (I + A)^-1 of each chunk, row by row
  void* ds1;               // [slots, HV, K, V] dL/d state at every chunk end (written by the chain kernel)
  int num_vblocks;         // chain kernel: V / BV
  bool v_first;
  const int* seq_order;    // chain kernel: sequences longest first, or nullptr
  // chain kernel: where set, the launch runs only if *chain_width == chain_width_id (both widths are launched and
  // the order kernel's simulation picks one: scan_prologue.cuh's ChainWidthChoice); nullptr: always
  const int* chain_width;
  int chain_width_id;
  bool ws_qs_in_state;     // ws chain: the state warpgroups scale Qs (else aux)
  ScanPieces pieces;       // the chain in pieces (scan_pieces.cuh: the ws chain the cut heads, the split the others)
  // Gradient outputs of the grads kernel. dq, dk: [rows, H, K] in the input dtype with the l2norm backward
  // applied when HV == H; else fp32 [rows, HV, K] w.r.t. the normalised q, k per value head (the host sums the
  // group and applies the l2norm backward).
  void* dq;
  void* dk;
  bool dqk_per_value_head;
  void* dv;                // [rows, HV, V] input dtype
  float* dg;               // [rows, HV]
  float* dbeta;            // [rows, HV]
};

// The split chain's (gdn_bwd_split_kernels.cuh) chunk-local terms, written by its prep kernel.
struct GdnBwdSplitParams : GdnBwdParams {
  float* pdo;   // [rows, HV, V] fp32 workspace: P^T dO
  void* doq;    // [rows, HV, V] 16-bit workspace: diag(scale rq e^G) dO
  float* g_rk;  // [slots, HV, 2, 64] fp32 workspace: each chunk's G = cumsum(g), then rk
  // The chain's q (where in the stages), k and W tiles by TMA, as the forward's wgmma chain takes W and K
  // (GdnSplitParams::chain_tma): maps of q, k [rows, H, K] and w [rows, HV, K], 64 x 64 boxes, 128-byte swizzle.
  bool chain_tma;
  CUtensorMap q_map, k_map, w_map;
};

}  // namespace mom_ops
