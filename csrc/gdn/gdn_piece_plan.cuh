// The decision of the scan in pieces (scan_pieces.cuh): per (sequence, value head), where each piece's chain starts
// (forward: its warm-up's first chunk; backward, whose chain runs from the end: one past its warm-up's last chunk)
// and whether the (sequence, head) is cut at all. One launch before the scan kernels, after the missing flags were
// zeroed.
#pragma once

#include <cstdint>

#include "gdn/g_floor.cuh"
#include "gdn/scan_params.h"
#include "gdn/scan_pieces.cuh"

namespace mom_ops {

constexpr int kPiecePlanThreads = 512;
constexpr int kPlanHeads = 32;  // value heads a CTA decides together (a head block)

struct PiecePlanParams {
  ScanParams scan;
  int* start;        // ScanPieces::start and missing, written here (missing zeroed before the launch)
  int* missing;
  int* any_missing;  // ScanPieces::counters[kAnyMissing] (zeroed before the launch): 1 once any flag is raised
  int chunks;
  int max_warmup;  // chunks a warm-up may take at most
  bool backward;   // warm-ups after the pieces (the backward's chain), else before them
};

// Shared memory: one pass's (warm-up chunk, head) sums of g and whether every beta of the chunk is in [0, 2], and
// which heads of the block have decided.
struct PiecePlanShared {
  float g_sum[kPiecePlanThreads];  // [chunk i of the pass][head j of the block]
  int beta_ok[kPiecePlanThreads];
  int decided[kPlanHeads];
};
constexpr int kPiecePlanSmem = int(sizeof(PiecePlanShared));

// CTA per piece slot (as the ws kernel's pieces: sequence slot_sequence(slot), piece slot - its first slot; a slot
// past the sequence's pieces has no work), all value heads of the piece in blocks of kPlanHeads: for each head, the
// fewest chunks (at most max_warmup) before the piece (backward: after it) whose g sum to <= kPieceLogEps with every
// beta in [0, 2], summed chunk by chunk (rows past the sequence's end count 0); a head with none gets its missing
// flag. The sequence's ends need no warm-up: the forward starts there from h0, the backward from dht.
// A pass sums kPiecePlanThreads / (heads in the block) warm-up chunks at once, a thread per (chunk, head), heads
// fastest, so that a warp's loads read whole rows of g and beta [rows, HV] (a warp per head reading strided columns
// was L1-bound: H200 n1 T = 32K, 21 us with 16-chunk warm-ups, 76 us with 64), and 32 rows' loads in flight per
// thread. Then a thread per head walks the pass's chunks in order.
static __global__ void __launch_bounds__(kPiecePlanThreads, 1) gdn_piece_plan_kernel(PiecePlanParams pp) {
  extern __shared__ __align__(16) unsigned char smem[];
  PiecePlanShared& sh = *reinterpret_cast<PiecePlanShared*>(smem);
  const ScanParams& p = pp.scan;
  const int chunks = pp.chunks;
  const int64_t rows_per_piece = int64_t(64) * chunks;
  const int seq = slot_sequence(p, blockIdx.x, rows_per_piece);  // (a warp collective: every thread, converged)
  const int t = threadIdx.x;
  int64_t bos, eos;
  sequence_bounds(p, seq, bos, eos);
  const int num_chunks = int((eos - bos + 63) / 64);
  const int pieces = max(1, (num_chunks + chunks - 1) / chunks);  // (an empty sequence's one piece: ht = h0)
  const int piece = int(blockIdx.x - (bos / rows_per_piece + seq));
  if (piece >= pieces) return;  // (uniform across the CTA)
  const int first = piece * chunks, last = min(num_chunks, first + chunks);  // the piece's chunks [first, last)
  // Warm-up chunk i (i < window): forward first - 1 - i, backward last + i.
  const int reach = pp.backward ? num_chunks - last : first;  // chunks between the piece and the chain's start
  const int window = min(pp.max_warmup, reach);
  const int exact = pp.backward ? num_chunks : 0;  // the chain's start at the sequence's end (h0 / dht)
  const bool at_end = reach == 0;
  for (int hb = 0; hb < p.heads_v; hb += kPlanHeads) {
    const int nh = min(kPlanHeads, p.heads_v - hb);  // heads in this block
    const int batch = kPiecePlanThreads / nh;       // warm-up chunks a pass sums
    // Thread t < nh decides head hb + t.
    int run = at_end ? exact : -1;  // -1: no warm-up qualifies
    bool decided = at_end;          // a warm-up found, or a beta out of [0, 2] met
    float total = 0.f;
    for (int b0 = 0; !at_end && b0 < window; b0 += batch) {  // warm-up chunks b0 .. b0 + batch - 1
      const int i = t / nh, j = t % nh;  // this thread's (chunk, head) of the pass
      if (i < batch && b0 + i < window) {
        const int c = pp.backward ? last + b0 + i : first - 1 - b0 - i;
        const int64_t row0 = bos + int64_t(c) * 64;
        const int rows = int(min(int64_t(64), eos - row0));  // (only the sequence's last chunk may be partial)
        const float* g_col = p.g + row0 * p.heads_v + hb + j;
        const float* beta_col = p.beta + row0 * p.heads_v + hb + j;
        float g_sum = 0.f;
        bool beta_ok = true;
#pragma unroll 1
        for (int r0 = 0; r0 < 64; r0 += 32) {
          float g[32], b[32];
#pragma unroll
          for (int r = 0; r < 32; ++r) {
            g[r] = r0 + r < rows ? g_col[int64_t(r0 + r) * p.heads_v] : 0.f;
            b[r] = r0 + r < rows ? beta_col[int64_t(r0 + r) * p.heads_v] : 0.f;
          }
#pragma unroll
          for (int r = 0; r < 32; ++r) {  // (g as the kernels read it; a NaN beta: not ok)
            g_sum += gdn_floor_g(g[r]);
            beta_ok &= (b[r] >= 0.f) & (b[r] <= 2.f);
          }
        }
        sh.g_sum[t] = g_sum;
        sh.beta_ok[t] = beta_ok;
      }
      __syncthreads();
      if (t < nh) {
        for (int ii = 0; ii < batch && b0 + ii < window && !decided; ++ii) {
          if (!sh.beta_ok[ii * nh + t]) {
            decided = true;
            break;
          }
          total += sh.g_sum[ii * nh + t];
          if (total <= kPieceLogEps) {
            run = pp.backward ? last + 1 + b0 + ii : first - 1 - b0 - ii;
            decided = true;
          }
        }
        sh.decided[t] = decided;
      }
      __syncthreads();  // (sh.g_sum read; sh.decided written)
      bool all_decided = true;
      for (int jj = 0; jj < nh; ++jj) all_decided = all_decided && sh.decided[jj] != 0;
      if (all_decided) break;  // (uniform: every thread read the same flags, rewritten only after the next barrier)
    }
    if (t < nh) {
      if (run < 0 && window == reach) run = exact;  // the whole way: exact
      const int hv = hb + t;
      pp.start[int64_t(blockIdx.x) * p.heads_v + hv] = run;
      if (run < 0 || !p.l2norm) {  // (the bound needs ||k|| <= 1)
        pp.missing[int64_t(seq) * p.heads_v + hv] = 1;
        *pp.any_missing = 1;
      }
    }
  }
}

}  // namespace mom_ops
