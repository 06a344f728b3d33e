// The grid of the split forward's output kernels where the scan in pieces runs beside them (scan_pieces.cuh). They
// take one (chunk slot, value head, V-block) item per CTA; with a fast decay every head is cut and every one of their
// CTAs exits at once, but a CTA costs its dispatch even so (H200 n1 T = 32K: 8192 empty CTAs, 34 us in the wgmma
// output kernel at two per SM). So with pieces a grid of the CTAs the device holds at once returns at once where the
// plan cut every (sequence, head), and otherwise claims the items one by one from a counter (a cut one exits in its
// body, as a CTA per item does); without pieces, or with MOM_OPS_GDN_SPLIT_ITEMS=0, a CTA per item, as before.
// One item per claim, not runs: beside the chain the output CTAs wait for the chain's chunks, and a CTA holding a run
// of items made the run wait in series (H200 n1 g x 0.001, nothing cut: fwd 1.155 ms with a CTA per item, 1.391
// with 32 fixed items per CTA, 1.359 with guided runs of up to 32). The forward and backward preps keep a CTA per
// item: claimed, their items ran 8-18% slower where nothing was cut. csrc/gdn/NOTES.md has the figures.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/env_flag.h"
#include "gdn/scan_params.h"
#include "gdn/scan_pieces.cuh"

namespace mom_ops {

// Host: whether the output kernels take many items per CTA (kItems): with pieces, unless MOM_OPS_GDN_SPLIT_ITEMS=0.
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

// body(item) for this CTA's items; a cut item's body exits at once. kItems false: a CTA per item, item blockIdx.x
// (the kernels as they were, launched unless the split items are on). kItems true: nothing where every (sequence,
// head) is cut; otherwise the CTA claims items one at a time from the plan's counters[kOutputItems] (zero before the
// launch) until none is left. Thread 0 claims the next item as the current one starts (so that the atomic's round
// trip is under the body; no faster than claiming after it in the one measurement), and hands each claim over in the
// first 4 bytes of shared memory, between barriers that no body runs between (the bodies use all of it).
template <bool kItems, class Body>
__device__ __forceinline__ void for_each_split_item(const ScanParams& p, const ScanPieces& pieces, int vblocks,
                                                    Body&& body) {
  if constexpr (!kItems) {
    body(int64_t(blockIdx.x));
  } else {
    if (pieces.counters[kAnyMissing] == 0) return;  // (written by the plan, an earlier launch)
    extern __shared__ __align__(16) unsigned char smem[];
    int* claim = reinterpret_cast<int*>(smem);
    int* counter = pieces.counters + kOutputItems;
    const int items = int(split_slots(p) * p.heads_v * vblocks);  // (< 2^31 - the grid: the launch checks)
    int next = threadIdx.x == 0 ? atomicAdd(counter, 1) : 0;  // (thread 0's claims)
#pragma unroll 1
    for (;;) {
      if (threadIdx.x == 0) *claim = next;
      __syncthreads();
      const int item = *claim;
      __syncthreads();
      if (item >= items) break;
      if (threadIdx.x == 0) next = atomicAdd(counter, 1);
      body(int64_t(item));
      __syncthreads();  // (the body's last shared-memory reads, before thread 0 writes the next claim)
    }
  }
}

}  // namespace mom_ops
