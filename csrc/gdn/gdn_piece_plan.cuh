// The decision of the inference forward in pieces (scan_pieces.cuh): per (sequence, value head), each piece's first
// chunk to run (its warm-up's) and whether the (sequence, head) is cut at all. One launch before the scan kernels.
#pragma once

#include <cstdint>

#include "gdn/scan_params.h"
#include "gdn/scan_pieces.cuh"

namespace mom_ops {

constexpr int kPiecePlanWarps = 8;

struct PiecePlanParams {
  ScanParams scan;
  int* start;  // ScanPieces::start and cut, written here
  int* cut;
  int chunks;
};

// CTA per (sequence, value head); warp w decides pieces w, w + 8, ...: the fewest whole chunks before the piece
// whose g sum to <= kPieceLogEps with every beta in [0, 2], summed chunk by chunk (lanes: two rows each); then warp
// 0 reads the pieces back (global writes of the CTA, ordered by the barrier) for the (sequence, head)'s cut flag.
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
    const int first = piece * chunks;
    int run = first == 0 ? 0 : -1;  // -1: no warm-up qualifies
    float total = 0.f;
    for (int w = 1; piece > 0 && w <= min(kPieceMaxWarmup, first); ++w) {
      const int64_t r = bos + int64_t(first - w) * 64 + 2 * lane;  // a whole chunk: it precedes the piece
      const float g0 = p.g[r * p.heads_v + hv], g1 = p.g[(r + 1) * p.heads_v + hv];
      const float b0 = p.beta[r * p.heads_v + hv], b1 = p.beta[(r + 1) * p.heads_v + hv];
      float sum = g0 + g1;
#pragma unroll
      for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      const bool beta_ok = b0 >= 0.f && b0 <= 2.f && b1 >= 0.f && b1 <= 2.f;
      if (__ballot_sync(0xffffffffu, beta_ok) != 0xffffffffu) break;
      total += sum;
      if (total <= kPieceLogEps) {
        run = first - w;
        break;
      }
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
