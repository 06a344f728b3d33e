// The grid of the split kernels that take one (chunk slot, value head[, V-block]) item each (forward prep and
// outputs, backward prep) where the scan in pieces runs beside them (scan_pieces.cuh). With a fast decay every head
// is cut and every one of their CTAs exits at once; but a CTA costs its dispatch even so (H200 n1 T = 32K: 8192 empty
// CTAs per kernel, 29 us in the wgmma output kernel at two per SM, 17 us in prep at three). So with pieces a grid of
// the CTAs the device holds at once claims runs of items from a counter, skipping the cut ones, whose flags a run's
// lanes read together; without pieces, or with MOM_OPS_GDN_SPLIT_ITEMS=0, a CTA takes one item, as before.
// Claims, not a fixed share per CTA: beside the chain the output kernel fits one CTA per SM, not the calculator's
// two, and a fixed share of the CTAs that wait for the chain's end waited with them (H200 n1 g x 0.001 fwd 1.158 ->
// 1.391 ms with 32 fixed items per CTA; NOTES.md).
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/env_flag.h"
#include "gdn/scan_params.h"
#include "gdn/scan_pieces.cuh"

namespace mom_ops {

constexpr int kSplitItemsPerClaim = 32;  // the longest run a CTA claims: a lane of each warp per item

// Host: whether the split kernels take many items per CTA (kItems): with pieces, unless MOM_OPS_GDN_SPLIT_ITEMS=0.
inline bool split_items_on(const ScanPieces& pieces) {
  return pieces.chunks > 0 && !env_is("MOM_OPS_GDN_SPLIT_ITEMS", "0");
}

// Host: CTAs for `items` items: one each (the kernels' kItems = false); with many (kItems = true) the `resident` CTAs
// the device holds at once, which claim the items between them.
inline int64_t split_item_grid(int64_t items, bool many, int64_t resident) {
  return many ? std::min(items, resident) : items;
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
// kernels as they were, launched unless the split items are on). kItems true: the CTA claims runs of consecutive
// items from *counter (zero before the launch) until none is left; a run is about the items left over twice the
// grid, 1 to 32 of them (guided: long runs while many are left, so that cut heads are skipped 32 at a time, short ones
// at the end, so that the CTAs finish together). Lane l of every warp reads the run's l-th item's cut flag (the same
// ballot in each warp); the CTA runs the uncut ones in order with a barrier after each (the body reuses shared
// memory). Thread 0 hands the claim over in the first 8 bytes of shared memory, between two barriers that no body runs
// between. Items are slot-major: value head (item / vblocks) % heads_v, slot item / (vblocks heads_v).
template <bool kItems, class Body>
__device__ __forceinline__ void for_each_split_item(const ScanParams& p, const ScanPieces& pieces, int vblocks,
                                                    int* counter, Body&& body) {
  if constexpr (!kItems) {
    body(int64_t(blockIdx.x));
  } else {
    extern __shared__ __align__(16) unsigned char smem[];
    int* claim = reinterpret_cast<int*>(smem);  // [first item, run length]
    const int items = int(split_slots(p) * p.heads_v * vblocks);  // (< 2^31 - 32 grid: the launch checks)
    const int lane = threadIdx.x % 32;
#pragma unroll 1
    for (;;) {
      if (threadIdx.x == 0) {
        const int left = items - *reinterpret_cast<volatile int*>(counter);  // (a hint: others claim meanwhile)
        const int run = max(1, min(kSplitItemsPerClaim, left / (2 * int(gridDim.x))));
        claim[0] = atomicAdd(counter, run);
        claim[1] = run;
      }
      __syncthreads();
      const int first = claim[0], run = claim[1];
      __syncthreads();
      if (first >= items) break;
      const int mine = first + lane;
      bool uncut = false;
      if (lane < run && mine < items) {
        const int64_t slot = mine / (int64_t(vblocks) * p.heads_v);
        const int hv = int((mine / vblocks) % p.heads_v);
        uncut = !piece_is_cut(pieces, slot_sequence_thread(p, slot), hv, p.heads_v);
      }
#pragma unroll 1
      for (unsigned todo = __ballot_sync(0xffffffffu, uncut); todo != 0; todo &= todo - 1) {
        body(int64_t(first) + __ffs(todo) - 1);
        __syncthreads();
      }
    }
  }
}

}  // namespace mom_ops
