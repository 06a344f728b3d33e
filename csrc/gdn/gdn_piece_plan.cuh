// The decision of the inference forward in pieces (scan_pieces.cuh): per (sequence, value head), each piece's first
// chunk to run (its warm-up's) and whether the (sequence, head) is cut at all. One launch before the scan kernels.
#pragma once

#include <cstdint>

#include "gdn/scan_params.h"
#include "gdn/scan_pieces.cuh"

namespace mom_ops {

constexpr int kPiecePlanWarps = 16;

struct PiecePlanParams {
  ScanParams scan;
  int* start;  // ScanPieces::start and cut, written here
  int* cut;
  int chunks;
};

// CTA per (sequence, value head); warp w decides pieces w, w + 16, ...: the fewest whole chunks before the piece
// whose g sum to <= kPieceLogEps with every beta in [0, 2], summed chunk by chunk (lanes: two rows each); then warp
// 0 reads the pieces back (global writes of the CTA, ordered by the barrier) for the (sequence, head)'s cut flag.
// A warp loads its piece's whole warm-up window (16 chunks: 64 loads per lane) before it sums, so that a piece costs
// one memory latency, not 16 (H200 n1 T = 32K: ~55 us with the loads chunk by chunk, 8 warps).
static __global__ void __launch_bounds__(kPiecePlanWarps * 32) gdn_piece_plan_kernel(PiecePlanParams pp) {
  const ScanParams& p = pp.scan;
  const int chunks = pp.chunks;
  const int seq = blockIdx.x / p.heads_v, hv = blockIdx.x % p.heads_v;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int64_t bos, eos;
  sequence_bounds(p, seq, bos, eos);
  const int num_chunks = int((eos - bos + 63) / 64);
  const int pieces = max(1, (num_chunks + chunks - 1) / chunks);  // (an empty sequence's one piece: ht = h0)
  int* runs = pp.start + (bos / (int64_t(64) * chunks) + seq) * p.heads_v + hv;  // piece j at runs[j * heads_v]
  for (int piece = warp; piece < pieces; piece += kPiecePlanWarps) {
    const int first = piece * chunks, window = min(kPieceMaxWarmup, first);  // chunks first - w, w = 1 .. window
    float g_sum[kPieceMaxWarmup];  // this lane's two rows of chunk first - 1 - i: g summed, and whether beta fits
    bool beta_ok[kPieceMaxWarmup];
#pragma unroll
    for (int i = 0; i < kPieceMaxWarmup; ++i) {
      g_sum[i] = 0.f, beta_ok[i] = true;
      if (i < window) {  // whole chunks: they precede the piece
        const int64_t r = bos + int64_t(first - 1 - i) * 64 + 2 * lane;
        const float b0 = p.beta[r * p.heads_v + hv], b1 = p.beta[(r + 1) * p.heads_v + hv];
        g_sum[i] = p.g[r * p.heads_v + hv] + p.g[(r + 1) * p.heads_v + hv];
        beta_ok[i] = b0 >= 0.f && b0 <= 2.f && b1 >= 0.f && b1 <= 2.f;
      }
    }
    int run = first == 0 ? 0 : -1;  // -1: no warm-up qualifies
    float total = 0.f;
#pragma unroll
    for (int i = 0; i < kPieceMaxWarmup; ++i) {
      if (i >= window || run >= 0) break;  // (uniform across the warp)
      float sum = g_sum[i];
#pragma unroll
      for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      if (__ballot_sync(0xffffffffu, beta_ok[i]) != 0xffffffffu) break;
      total += sum;
      if (total <= kPieceLogEps) run = first - 1 - i;
    }
    if (run < 0 && first <= kPieceMaxWarmup) run = 0;  // from the sequence start: exact
    if (lane == 0) runs[int64_t(piece) * p.heads_v] = run;
  }
  __syncthreads();
  if (warp == 0) {
    bool missing = !p.l2norm;  // the bound needs ||k|| <= 1
    for (int piece = lane; piece < pieces; piece += 32) missing = missing || runs[int64_t(piece) * p.heads_v] < 0;
    const bool cut = __ballot_sync(0xffffffffu, missing) == 0u;  // (every lane: a warp collective)
    if (lane == 0) pp.cut[blockIdx.x] = cut ? 1 : 0;
  }
}

}  // namespace mom_ops
