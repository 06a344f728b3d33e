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
constexpr int kPlanBatch = 16;  // warm-up chunks whose loads a warp issues together

struct PiecePlanParams {
  ScanParams scan;
  int* start;    // ScanPieces::start and missing, written here (missing zeroed before the launch)
  int* missing;
  int chunks;
  int max_warmup;  // chunks a warm-up may take at most
  bool backward;   // warm-ups after the pieces (the backward's chain), else before them
};

// CTA per piece slot (as the ws kernel's pieces: sequence slot_sequence(slot), piece slot - its first slot; a slot
// past the sequence's pieces has no work), all value heads of the piece: warp w decides heads w, w + 16, ...: the
// fewest chunks (at most max_warmup) before the piece (backward: after it) whose g sum to <= kPieceLogEps with every
// beta in [0, 2], summed chunk by chunk (lanes: two rows each; rows past the sequence's end count 0); a head with
// none gets its missing flag. The sequence's ends need no warm-up: the forward starts there from h0, the backward
// from dht. A warp loads 16 warm-up chunks (64 loads per lane) before it sums them, so a batch costs one memory
// latency, not 16, and the warps of a CTA read the same rows (other heads' columns) through L1. (H200 n1 T = 32K:
// 35 us as a CTA per (sequence, head), 16 CTAs, chunk by chunk.)
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
  const int window = min(pp.max_warmup, pp.backward ? num_chunks - last : first);
  const int exact = pp.backward ? num_chunks : 0;  // the chain's start at the sequence's end (h0 / dht)
  const bool at_end = pp.backward ? last == num_chunks : first == 0;
  for (int hv = warp; hv < p.heads_v; hv += kPiecePlanWarps) {
    int run = at_end ? exact : -1;  // -1: no warm-up qualifies
    bool decided = at_end;          // a warm-up found, or a beta out of [0, 2] met (uniform across the warp)
    float total = 0.f;
    for (int b0 = 0; b0 < window && !decided; b0 += kPlanBatch) {  // warm-up chunks b0 .. b0 + kPlanBatch - 1
      float g_sum[kPlanBatch];  // this lane's two rows of warm-up chunk b0 + i: g summed, and whether beta fits
      bool beta_ok[kPlanBatch];
#pragma unroll
      for (int i = 0; i < kPlanBatch; ++i) {
        g_sum[i] = 0.f, beta_ok[i] = true;
        if (b0 + i < window) {
          const int c = pp.backward ? last + b0 + i : first - 1 - b0 - i;
          const int64_t r = bos + int64_t(c) * 64 + 2 * lane;
#pragma unroll
          for (int e = 0; e < 2; ++e) {  // (only the sequence's last chunk may be partial: the backward's)
            const float b = r + e < eos ? p.beta[(r + e) * p.heads_v + hv] : 0.f;
            g_sum[i] += r + e < eos ? p.g[(r + e) * p.heads_v + hv] : 0.f;
            beta_ok[i] = beta_ok[i] && b >= 0.f && b <= 2.f;
          }
        }
      }
#pragma unroll
      for (int i = 0; i < kPlanBatch; ++i) {
        if (b0 + i >= window || decided) break;
        float sum = g_sum[i];
#pragma unroll
        for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
        if (__ballot_sync(0xffffffffu, beta_ok[i]) != 0xffffffffu) {
          decided = true;
          break;
        }
        total += sum;
        if (total <= kPieceLogEps) {
          run = pp.backward ? last + 1 + b0 + i : first - 1 - b0 - i;
          decided = true;
        }
      }
    }
    if (run < 0 && window == (pp.backward ? num_chunks - last : first)) run = exact;  // the whole way: exact
    if (lane == 0) {
      pp.start[int64_t(blockIdx.x) * p.heads_v + hv] = run;
      if (run < 0 || !p.l2norm) pp.missing[int64_t(seq) * p.heads_v + hv] = 1;  // (the bound needs ||k|| <= 1)
    }
  }
}

}  // namespace mom_ops
