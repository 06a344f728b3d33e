// Long sequences cut into pieces that run in parallel (the forward, and the backward's state-gradient chain;
// csrc/gdn/NOTES.md, "Against FlashQLA"). A piece of a (sequence, value head) starts its chain a few chunks before its
// first one from S = 0 instead of the state the previous piece would hand over. The missed part, Phi S with Phi the
// warm-up's transitions e^{g_t} (I - beta_t k_t k_t^T), has ||Phi|| <= e^{sum g} while every 0 <= beta_t ||k_t||^2 <=
// 2; so a warm-up qualifies where its summed log-decay is <= ln 2^-24 (below fp32 rounding of the state), beta is in
// [0, 2] and k is l2-normalised in the kernel. A (sequence, head) is cut only if every piece boundary has such a
// warm-up of at most max_warmup chunks (up to 64 by default: piece_size.h; or reaches the sequence start, where it runs
// from h0); the others keep the split kernels, which skip the cut ones. (The kernels round the state to 16 bits for
// their products, so where the decay is slow the two runs' roundings differ for a while after the warm-up and their
// outputs differ at that rounding's level, ~1e-3, not 2^-24; each is as far from fp32.) The backward's chain runs from
// the end: its pieces warm up over the chunks after them, from dS = 0 (or from dht at the sequence's end); the
// transposed transitions have the same bound. The decision: gdn_piece_plan.cuh; its fp32 reference (forward):
// mom_ops/reference/gdn_pieces.py.
#pragma once

#include <cstdint>

#include "gdn/scan_params.h"

namespace mom_ops {

constexpr int kPieceChunks = 16;     // the fewest chunks per piece (piece_size.h; the ws kernel's n32 regime: ~16)
constexpr int kPieceMaxWarmup = 16;  // the warm-ups' bound at 16-chunk pieces (the emulator drivers' default)
constexpr float kPieceLogEps = -16.635532f;  // ln 2^-24

// Pieces are numbered by piece slots, as chunks by chunk slots (scan_params.h): sequence s's pieces take slots
// bos / (64 chunks) + s + j, j < max(1, its chunks / chunks rounded up); the slots of two sequences never overlap and
// all fit in piece_slots(), so the grid is sized from the row count alone (no host sync, no grid per sequence).
struct ScanPieces {
  const int* start;    // [piece slots, HV]: the chunk each piece's chain starts at (0: the sequence start, from
                       // h0); backward: one past the chunk it starts at (the sequence's chunks: from dht); -1
                       // where no warm-up qualifies (then the (sequence, head) is not cut)
  const int* missing;  // [N, HV]: 0 where the (sequence, head) runs in pieces, nonzero where the split forward runs
                       // it (a piece without a warm-up that qualifies, or k not normalised)
  int chunks;          // chunks per piece; 0: no pieces
  int* counters;       // [kPieceCounters], zeroed with missing (split_items.cuh)
};

// ScanPieces::counters: whether any (sequence, head) is not cut (the plan raises it with its missing flag), then the
// output kernel's next unclaimed item (split_items.cuh; a plan serves one call, which launches it at most once).
enum PieceCounter : int { kAnyMissing = 0, kOutputItems, kPieceCounters };

inline int64_t piece_slots(int64_t total_rows, int64_t num_seqs, int chunks) {
  return total_rows / (int64_t(64) * chunks) + num_seqs + 1;
}

// Whether (seq, hv) runs in pieces (then the split forward's kernels skip it).
__device__ __forceinline__ bool piece_is_cut(const ScanPieces& pc, int seq, int hv, int heads_v) {
  return pc.chunks > 0 && pc.missing[int64_t(seq) * heads_v + hv] == 0;
}

}  // namespace mom_ops
