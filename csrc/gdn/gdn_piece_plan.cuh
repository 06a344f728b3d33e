// The decision of the scan in pieces (scan_pieces.cuh): per (sequence, value head), where each piece's chain starts
// (forward: its warm-up's first chunk; backward, whose chain runs from the end: one past its warm-up's last chunk)
// and whether the (sequence, head) is cut at all. One launch before the scan kernels, after the missing flags were
// zeroed.
#pragma once

#include <cstdint>

#include "gdn/scan_params.h"
#include "gdn/scan_pieces.cuh"

namespace mom_ops {

constexpr int kPiecePlanWarps = 16;

struct PiecePlanParams {
  ScanParams scan;
  int* start;    // ScanPieces::start and missing, written here (missing zeroed before the launch)
  int* missing;
  int chunks;
  bool backward;  // warm-ups after the pieces (the backward's chain), else before them
};

// CTA per piece slot (as the ws kernel's pieces: sequence slot_sequence(slot), piece slot - its first slot; a slot
// past the sequence's pieces has no work), all value heads of the piece: warp w decides heads w, w + 16, ...: the
// fewest chunks before the piece (backward: after it) whose g sum to <= kPieceLogEps with every beta in [0, 2],
// summed chunk by chunk (lanes: two rows each; rows past the sequence's end count 0); a head with none gets its
// missing flag. The sequence's ends need no warm-up: the forward starts there from h0, the backward from dht. A warp
// loads the whole warm-up window (16 chunks: 64 loads per lane) before it sums, so a head costs one memory latency,
// and the warps of a CTA read the same rows (other heads' columns) through L1. (H200 n1 T = 32K: 35 us as a CTA per (sequence, head), 16 CTAs.)
static __global__ void __launch_bounds__(kPiecePlanWarps * 32) gdn_piece_plan_kernel(PiecePlanParams pp) {
  const ScanParams& p = pp.scan;
  const int chunks = pp.chunks;
  const int64_t rows_per_piece = int64_t(64) * chunks;
  const int seq = slot_sequence(p, blockIdx.x, rows_per_piece);  // (a warp collective: every thread, converged)
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int64_t bos, eos;
  sequence_bounds(p, seq, bos, eos);
  const int num_chunks = int((eos - bos + 63) / 64);
  const int pieces = max(1, (num_chunks + chunks - 1) / chunks);  // (an empty sequence's one piece: ht = h0)
  const int piece = int(blockIdx.x - (bos / rows_per_piece + seq));
  if (piece >= pieces) return;
  const int first = piece * chunks, last = min(num_chunks, first + chunks);  // the piece's chunks [first, last)
  // Warm-up chunk i (i < window): forward first - 1 - i, backward last + i.
  const int window = min(kPieceMaxWarmup, pp.backward ? num_chunks - last : first);
  const int exact = pp.backward ? num_chunks : 0;  // the chain's start at the sequence's end (h0 / dht)
  for (int hv = warp; hv < p.heads_v; hv += kPiecePlanWarps) {
    float g_sum[kPieceMaxWarmup];  // this lane's two rows of warm-up chunk i: g summed, and whether beta fits
    bool beta_ok[kPieceMaxWarmup];
#pragma unroll
    for (int i = 0; i < kPieceMaxWarmup; ++i) {
      g_sum[i] = 0.f, beta_ok[i] = true;
      if (i < window) {
        const int64_t r = bos + int64_t(pp.backward ? last + i : first - 1 - i) * 64 + 2 * lane;
#pragma unroll
        for (int e = 0; e < 2; ++e) {  // (only the sequence's last chunk may be partial: the backward's)
          const float b = r + e < eos ? p.beta[(r + e) * p.heads_v + hv] : 0.f;
          g_sum[i] += r + e < eos ? p.g[(r + e) * p.heads_v + hv] : 0.f;
          beta_ok[i] = beta_ok[i] && b >= 0.f && b <= 2.f;
        }
      }
    }
    const bool at_end = pp.backward ? last == num_chunks : first == 0;
    int run = at_end ? exact : -1;  // -1: no warm-up qualifies
    float total = 0.f;
#pragma unroll
    for (int i = 0; i < kPieceMaxWarmup; ++i) {
      if (i >= window || run >= 0) break;  // (uniform across the warp)
      float sum = g_sum[i];
#pragma unroll
      for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      if (__ballot_sync(0xffffffffu, beta_ok[i]) != 0xffffffffu) break;
      total += sum;
      if (total <= kPieceLogEps) run = pp.backward ? last + 1 + i : first - 1 - i;
    }
    if (run < 0 && window == (pp.backward ? num_chunks - last : first)) run = exact;  // the whole way: exact
    if (lane == 0) {
      pp.start[int64_t(blockIdx.x) * p.heads_v + hv] = run;
      if (run < 0 || !p.l2norm) pp.missing[int64_t(seq) * p.heads_v + hv] = 1;  // (the bound needs ||k|| <= 1)
    }
  }
}

}  // namespace mom_ops
