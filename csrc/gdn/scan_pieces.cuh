// Long sequences cut into pieces that run in parallel (inference forward; csrc/gdn/NOTES.md, "Against FlashQLA").
// A piece of a (sequence, value head) starts its chain a few chunks before its first one from S = 0 instead of the
// state the previous piece would hand over. The missed part, Phi S with Phi the warm-up's transitions
// e^{g_t} (I - beta_t k_t k_t^T), has ||Phi|| <= e^{sum g} while every 0 <= beta_t ||k_t||^2 <= 2; so a warm-up
// qualifies where its summed log-decay is <= ln 2^-24 (below fp32 rounding of the state), beta is in [0, 2] and
// k is l2-normalised in the kernel. A (sequence, head) is cut only if every piece boundary has such a warm-up of at
// most kPieceMaxWarmup chunks (or reaches the sequence start, where it runs from h0); the others keep the split
// forward, whose kernels skip the cut ones. The rule's fp32 reference: mom_ops/reference/gdn_pieces.py.
#pragma once

#include <cstdint>

#include "gdn/scan_params.h"

namespace mom_ops {

constexpr int kPieceChunks = 16;     // chunks per piece (the ws kernel's n32 regime: ~16 chunks per sequence)
constexpr int kPieceMaxWarmup = 16;  // at most one piece's worth of warm-up
constexpr float kPieceLogEps = -16.635532f;  // ln 2^-24

// Pieces are numbered by piece slots, as chunks by chunk slots (scan_params.h): sequence s's pieces take slots
// bos / (64 chunks) + s + j, j < max(1, its chunks / chunks rounded up); the slots of two sequences never overlap and
// all fit in piece_slots(), so the grid is sized from the row count alone (no host sync, no grid per sequence).
struct ScanPieces {
  const int* start;  // [piece slots, HV]: the chunk each piece's chain starts at (0: the sequence start, from h0),
                     // -1 where no warm-up qualifies (then the (sequence, head) is not cut)
  const int* cut;    // [N, HV]: 1 where the (sequence, head) runs in pieces, 0 where the split forward runs it
  int chunks;        // chunks per piece; 0: no pieces
};

inline int64_t piece_slots(int64_t total_rows, int64_t num_seqs, int chunks) {
  return total_rows / (int64_t(64) * chunks) + num_seqs + 1;
}

// Whether (seq, hv) runs in pieces (then the split forward's kernels skip it).
__device__ __forceinline__ bool piece_is_cut(const ScanPieces& pc, int seq, int hv, int heads_v) {
  return pc.chunks > 0 && pc.cut[int64_t(seq) * heads_v + hv] != 0;
}

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
