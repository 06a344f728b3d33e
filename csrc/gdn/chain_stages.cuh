// The load pipeline of the split chains (gdn_split_kernels.cuh, gdn_bwd_split_kernels.cuh): a chain walks its
// chunks in series, and each chunk's operands (W, K, U ... : ~40-60 KB at K = 128) must be in shared memory when the
// previous chunk's state update ends. Four load warps fill kStages stages (2 to 4, as many as fit: chain_stage_count)
// with cp.async, chunk i into stage i % kStages, while the 8 compute warps work on earlier chunks; the compute warps
// issue no copies (with every thread issuing its share, the copies' address arithmetic and issue were ~30% of the
// forward chain's chunk, NOTES.md). The load warps keep up to kStages - 1 chunks' copies in flight: with one at a
// time (two stages, each chunk's copies landed before the next one's were issued) every chunk waited for a whole
// L2 / HBM round trip (ncu, forward chain at n1 D128: ~2.1k cycles per chunk; 4 stages: 0.68 -> 0.56 ms on the
// H200). Four load warps, not one: each SM sub-partition then runs one load warp next to two compute warps, and the
// register cap is the same (9 or 12 warps both put 3 warps on a sub-partition: 168 registers each). Named barriers:
//   full(s):  the load warps arrive when their copies of stage s have landed; the compute warps sync on it;
//   empty(s): the compute warps arrive when they are done reading stage s; the load warps sync before refilling it;
//   compute:  the 8 compute warps among themselves.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/cp_async.cuh"
#include "common/named_barrier.cuh"
#include "common/tile_layout.h"
#include "common/wgmma.cuh"
#include "gdn/gdn_fwd_kernel.cuh"

namespace mom_ops {

struct ChainStages {
  static constexpr int kComputeThreads = kGdnThreads, kLoadThreads = 128;  // 8 compute warps, then 4 load warps
  static constexpr int kThreads = kComputeThreads + kLoadThreads;
  static constexpr int kMaxStages = 4;
  static constexpr int kFull = 1, kEmpty = kFull + kMaxStages, kCompute = kEmpty + kMaxStages;  // barrier ids 1-9
  static constexpr int kLoads = kCompute + 1;  // 10: the 4 load warps among themselves

  __device__ __forceinline__ static bool is_load_warp(int tid) { return tid >= kComputeThreads; }

  // The load warps: load(stage, i) issues chunk i's copies (this thread's share), for i = 0 .. num_chunks - 1. Chunk
  // i - kLag is handed over once chunk i's copies are issued: issuing chunk i waits for chunk i - kStages to free its
  // stage, and with kLag = kStages - 2 that chunk is done before the compute warps need chunk i - kLag.
  // kAsyncReaders: the stages are read by wgmma (the async proxy), so the landed copies are fenced before the
  // hand-over. landed(s, j), where given, runs in every load thread once its cp.async copies of chunk j have landed
  // and before the hand-over (the TMA loads' wait, gdn_split_kernels.cuh).
  template <int kStages, bool kAsyncReaders = false, typename Load, typename Landed = decltype(nullptr)>
  __device__ __forceinline__ static void produce(int64_t num_chunks, Load&& load, Landed&& landed = nullptr) {
    static_assert(kStages >= 2 && kStages <= kMaxStages, "2 to 4 stages");
    constexpr int kLag = kStages - 2;
    auto hand_over = [&](int64_t j) {
      if constexpr (!std::is_same_v<std::decay_t<Landed>, decltype(nullptr)>) landed(int(j % kStages), j);
      if constexpr (kAsyncReaders) fence_async_smem();
      named_bar_arrive(kFull + int(j % kStages), kThreads);
    };
    for (int64_t i = 0; i < num_chunks; ++i) {
      const int s = int(i % kStages);
      if (i >= kStages) named_bar_sync(kEmpty + s, kThreads);  // chunk i - kStages is done with stage s
      load(s, i);
      cp_async_commit();
      if (i >= kLag) {
        cp_async_wait<kLag>();  // chunk i - kLag's copies have landed
        hand_over(i - kLag);
      }
    }
    cp_async_wait<0>();
    for (int64_t i = num_chunks > kLag ? num_chunks - kLag : 0; i < num_chunks; ++i) hand_over(i);
  }
  // The compute warps, chunk i: wait until its stage has landed (also a barrier among the compute warps: what they
  // wrote to shared memory before it is visible to all of them after it) ...
  template <int kStages>
  __device__ __forceinline__ static void wait_full(int64_t i) { named_bar_sync(kFull + int(i % kStages), kThreads); }
  // ... and hand its stage back once no compute warp reads it any more (unless no later chunk will fill it).
  template <int kStages>
  __device__ __forceinline__ static void release(int64_t i, int64_t num_chunks) {
    if (i + kStages < num_chunks) named_bar_arrive(kEmpty + int(i % kStages), kThreads);
  }
  __device__ __forceinline__ static void compute_sync() { named_bar_sync(kCompute, kComputeThreads); }
};

// Stages of stage_bytes each that fit beside other_bytes within budget bytes of shared memory: 4, 3 or 2.
constexpr int chain_stage_count(int stage_bytes, int other_bytes, int budget = kSmemPerCta) {
  for (int stages = ChainStages::kMaxStages; stages > 2; --stages) {
    if (stages * stage_bytes + other_bytes <= budget) return stages;
  }
  return 2;
}

// Rows [0, len) of a 64-row tile from global memory (row r at src + r * src_ld elements, kRowBytes from each) to
// dst (dst_ld elements per row), zeros for rows [len, 64); by the load warps' threads (ltid in [0, kLoadThreads)),
// in 16-byte cp.async pieces.
template <int kRowBytes, typename E>
__device__ __forceinline__ void load_rows(E* dst, int dst_ld, const E* src, int64_t src_ld, int len, int ltid) {
  constexpr int kPieces = kRowBytes / 16, kRowsPerPass = ChainStages::kLoadThreads / kPieces;
  constexpr int kPerPiece = 16 / int(sizeof(E));
  static_assert(kRowBytes % 16 == 0 && ChainStages::kLoadThreads % kPieces == 0, "a pass copies whole rows");
  const int r = ltid / kPieces, col = (ltid % kPieces) * kPerPiece;
#pragma unroll
  for (int r0 = 0; r0 < kGdnChunk; r0 += kRowsPerPass) {
    const int row = r0 + r;
    const bool valid = row < len;  // else zero-filled from row 0, which exists (len >= 1), unread
    cp_async16(dst + row * dst_ld + col, src + (valid ? row : 0) * src_ld + col, valid);
  }
}

// The chain's 16-bit state tile sS ([kK, kBV], element (r, c) at Rows::at(r, c): PaddedRows or a wgmma swizzle, which
// moves whole 16-byte chunks) -> dst (rows dst_ld apart), 16 bytes at a time, by the kComputeThreads compute threads:
// the chunk states (forward) and state gradients (backward) they save.
template <int kK, int kBV, typename Rows, typename T>
__device__ __forceinline__ void store_state_tile(T* dst, int dst_ld, const T* sS, int tid) {
  for (int idx = tid; idx < kK * (kBV / 8); idx += ChainStages::kComputeThreads) {
    const int r = idx / (kBV / 8), col = (idx % (kBV / 8)) * 8;
    *reinterpret_cast<uint4*>(dst + int64_t(r) * dst_ld + col) = *reinterpret_cast<const uint4*>(sS + Rows::at(r, col));
  }
}

}  // namespace mom_ops
