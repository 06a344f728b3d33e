// The grid of the split kernels that take one (chunk slot, value head[, V-block]) item each (forward prep and
// outputs, backward prep) where the scan in pieces runs beside them (scan_pieces.cuh). With a fast decay every head
// is cut and every one of their CTAs exits at once; but a CTA costs its dispatch even so (H200 n1 T = 32K: 8192 empty
// CTAs per kernel, 29 us in the wgmma output kernel at two per SM, 17 us in prep at three). With
// MOM_OPS_GDN_SPLIT_ITEMS=1 (and pieces) a CTA takes up to 32 items, skipping the cut ones, whose flags its lanes read
// together; otherwise a CTA takes one item, as before. Off by default: where nothing is cut it lost (H200 n1 g x
// 0.001 fwd 1.158 -> 1.391 ms: the output kernel beside the chain fits one CTA per SM there, so half of its
// statically assigned items waited for the chain's end; the backward prep +21 us at 70 registers instead of 48),
// though where everything is cut it won (g x 1 fwd 0.538 -> 0.500, fwd + bwd 2.323 -> 2.271; NOTES.md).
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/env_flag.h"
#include "gdn/scan_params.h"
#include "gdn/scan_pieces.cuh"

namespace mom_ops {

constexpr int kSplitItemsPerCta = 32;  // the most a CTA takes: a lane of each warp per item

// Host: whether the split kernels take many items per CTA (kItems): with pieces, where MOM_OPS_GDN_SPLIT_ITEMS=1.
inline bool split_items_on(const ScanPieces& pieces) {
  return pieces.chunks > 0 && env_is("MOM_OPS_GDN_SPLIT_ITEMS", "1");
}

// Host: CTAs for `items` items: one each (the kernels' kItems = false); with many (kItems = true) at least one full
// wave of `resident` CTAs (so that uncut heads keep every SM busy) and at most 32 items per CTA.
inline int64_t split_item_grid(int64_t items, bool many, int64_t resident) {
  if (!many) return items;
  return std::min(items, std::max((items + kSplitItemsPerCta - 1) / kSplitItemsPerCta, resident));
}

// Device side (CUDA units and the emulator only, as scan_pieces.cuh).
// Chunk slots of the call (chunk_slots() on the host): the split kernels' items are slots x heads (x V-blocks).
__device__ __forceinline__ int64_t split_slots(const ScanParams& p) { return p.total_rows / 64 + p.num_seqs + 1; }

// The sequence of chunk slot `slot` as slot_sequence finds it, by one thread alone (a binary search; none at N = 1).
__device__ __forceinline__ int slot_sequence_thread(const ScanParams& p, int64_t slot) {
  int lo = 0, hi = p.num_seqs - 1;  // the last sequence whose first slot is <= slot is in [lo, hi]
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    int64_t bos, eos;
    sequence_bounds(p, mid, bos, eos);
    if (bos / 64 + mid <= slot) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// body(item) for this CTA's items. kItems false: a CTA per item, item blockIdx.x (a cut one exits in its body; the
// kernels as they were, launched unless the split items are on). kItems true: items blockIdx.x + l gridDim.x (l < 32) whose
// (sequence, value head) is not cut, in order, lane l of every warp reading item l's flag (the same ballot in each
// warp), a barrier after each (the body reuses shared memory). Items are slot-major: value head
// (item / vblocks) % heads_v, slot item / (vblocks heads_v).
template <bool kItems, class Body>
__device__ __forceinline__ void for_each_split_item(const ScanParams& p, const ScanPieces& pieces, int vblocks,
                                                    Body&& body) {
  if constexpr (!kItems) {
    body(int64_t(blockIdx.x));
  } else {
    const int64_t items = split_slots(p) * p.heads_v * vblocks;
    const int64_t mine = blockIdx.x + int64_t(threadIdx.x % 32) * gridDim.x;
    bool uncut = false;
    if (mine < items) {
      const int64_t slot = mine / (int64_t(vblocks) * p.heads_v);
      const int hv = int((mine / vblocks) % p.heads_v);
      uncut = !piece_is_cut(pieces, slot_sequence_thread(p, slot), hv, p.heads_v);
    }
#pragma unroll 1
    for (unsigned todo = __ballot_sync(0xffffffffu, uncut); todo != 0; todo &= todo - 1) {
      body(blockIdx.x + int64_t(__ffs(todo) - 1) * gridDim.x);
      __syncthreads();
    }
  }
}

}  // namespace mom_ops
