// The split forward chain's fp32 state S [kK, kBV] in wgmma accumulators (gdn_split_kernels.cuh, kWgmma): 8 compute
// warps = two warpgroups; warpgroup g holds the m64 tiles 64 (g kTiles + t) .. of S's kK rows (t < kTiles = kK / 128),
// each an m64 x kBV accumulator (common/wgmma.cuh: warp w % 4 of the warpgroup has rows 16 (w % 4) .., per n8 tile j
// the mma.sync C fragment). The same array shape [kTiles][kBV / 8][4] as StateTile's [kMT][kNT][4] at K = 128 / 256.
// Its 16-bit copies (sS [kK][kBV], V_d [64][kBV]) are wgmma operands: kBV = 64 rows of 128 bytes in the 128-byte
// swizzle, kBV = 32 rows of 64 bytes in the 64-byte swizzle.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/mma.cuh"
#include "common/tile_layout.h"
#include "common/wgmma_steps.cuh"

namespace mom_ops {

// A 16-bit tile of kBV columns and kRows rows as wgmma reads it (MN-major B: S for W S, V_d for K^T V_d).
template <int kBV, int kRows>
using WgColumnRows = std::conditional_t<kBV == 64, Sw128Slabs<kRows>, Sw64Rows>;

template <int kK, int kBV>
struct WgStateTile {
  static_assert(kK == 128 || kK == 256, "one or two m64 tiles per warpgroup");
  static_assert(kBV == 32 || kBV == 64, "32- or 64-column V-blocks (each warpgroup's W S is n16 / n32)");
  static constexpr int kTiles = kK / 128, kNT = kBV / 8, kMT = kTiles;
  template <int kRows>
  using ColumnRows = WgColumnRows<kBV, kRows>;
  static constexpr int kSwizzle = kBV == 64 ? 128 : 64;

  // fn(x, y, k, v) for each of this thread's pairs of elements (x, y) = s at (k, v), (k, v + 1).
  template <typename Fn>
  __device__ __forceinline__ static void for_each_pair(float (&s)[kTiles][kNT][4], int warp, int lane, Fn&& fn) {
    const int g8 = lane / 4, t4 = lane % 4;
#pragma unroll
    for (int t = 0; t < kTiles; ++t)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; e += 2)
          fn(s[t][nt][e], s[t][nt][e + 1], row0(warp, t) + g8 + (e >= 2 ? 8 : 0), nt * 8 + 2 * t4);
  }

  // fn(element, k, v) for each of this thread's elements of s. (Its own loop: through for_each_pair, ptxas spilled
  // 176 B in the K = 256, 64-column chain.)
  template <typename Fn>
  __device__ __forceinline__ static void for_each(float (&s)[kTiles][kNT][4], int warp, int lane, Fn&& fn) {
    const int g8 = lane / 4, t4 = lane % 4;
#pragma unroll
    for (int t = 0; t < kTiles; ++t)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          fn(s[t][nt][e], row0(warp, t) + g8 + (e >= 2 ? 8 : 0), nt * 8 + 2 * t4 + (e & 1));
  }

  // s in 16 bits to sS (ColumnRows<kK>), as (v, v + 1) pairs: 8 rows x 4 words per store, in distinct banks.
  template <typename T>
  __device__ __forceinline__ static void store(T* sS, float (&s)[kTiles][kNT][4], int warp, int lane) {
    for_each_pair(s, warp, lane, [&](float& x, float& y, int kk, int vv) {
      store2<T>(sS + ColumnRows<kK>::at(kk, vv), x, y);
    });
  }

  // s = decay s + K^T V_d over the chunk's 64 rows c: K [64 c][kK] in Sw128Slabs<64> (the chain's stage; MN-major A,
  // one slab per m64 tile), V_d [64 c][kBV] in ColumnRows<64> (MN-major B). Issued, committed and waited for.
  template <typename T>
  __device__ __forceinline__ static void decay_add_ktv(float (&s)[kTiles][kNT][4], float decay, const T* sK,
                                                       const T* sVd, int warp) {
#pragma unroll
    for (int t = 0; t < kTiles; ++t)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[t][nt][e] *= decay;
    wgmma_fence();
#pragma unroll
    for (int t = 0; t < kTiles; ++t)
      wgmma_k_steps<T, kBV, true, true, kGdnChunkSteps, 128, kSwizzle>(
          s[t], mnmajor_steps<Sw128Slabs<64>>(sK, 64 * (warp / 4 * kTiles + t)),
          mnmajor_steps<ColumnRows<64>>(sVd, 0), true);
    wgmma_commit();
    wgmma_wait<0>();
#pragma unroll
    for (int t = 0; t < kTiles; ++t) wgmma_fence_acc(s[t]);
  }

  // The first of S's rows in tile t of this warp's warpgroup, plus the warp's 16-row slice.
  __device__ __forceinline__ static int row0(int warp, int t) { return 64 * (warp / 4 * kTiles + t) + 16 * (warp % 4); }

 private:
  static constexpr int kGdnChunkSteps = 4;  // the chunk's 64 rows as k16 steps
};

}  // namespace mom_ops
