// The split forward chain's fp32 state S [kK, kBV] in wgmma accumulators (gdn_split_kernels.cuh, kWgmma): 8 compute
// warps = two warpgroups; warpgroup g holds the m64 tiles 64 (g kTiles + t) .. of S's kK rows (t < kTiles = kK / 128),
// each an m64 x kBV accumulator (common/wgmma.cuh: warp w % 4 of the warpgroup has rows 16 (w % 4) .., per n8 tile j
// the mma.sync C fragment). The same array shape [kTiles][kBV / 8][4] as StateTile's [kMT][kNT][4] at K = 128 / 256.
// Its 16-bit copies (sS [kK][kBV], V_d [64][kBV]) are wgmma operands: kBV = 64 rows of 128 bytes in the 128-byte
// swizzle, kBV = 32 rows of 64 bytes in the 64-byte swizzle.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/env_flag.h"
#include "common/mma.cuh"
#include "common/tile_layout.h"
#include "common/wgmma_steps.cuh"

namespace mom_ops {

// A 16-bit tile of kBV columns and kRows rows as wgmma reads it (MN-major B: S for W S, V_d for K^T V_d).
template <int kBV, int kRows>
using WgColumnRows = std::conditional_t<kBV == 64, Sw128Slabs<kRows>, Sw64Rows>;

// Where the split chains (forward and backward) have a wgmma instance, and whether it runs (MOM_OPS_GDN_CHAIN_WGMMA=0:
// the mma.sync one; bitwise the same results either way).
template <int kK, int kBV>
constexpr bool chain_on_wgmma_fits() { return (kK == 128 || kK == 256) && (kBV == 32 || kBV == 64); }
inline bool gdn_chain_on_wgmma() { return !env_is("MOM_OPS_GDN_CHAIN_WGMMA", "0"); }

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
    decay_add_atb<T, 1>(s, decay, {sK}, {sVd}, warp);
  }

  // s = decay s + sum over products i of a_i^T b_i (a_i [64 c][kK] as K above, b_i [64 c][kBV] as V_d), the products'
  // k-steps interleaved (k-step 0 of each, then k-step 1, ...) as StateTile::decay_add_atb2 sums them, so that the
  // results are bitwise those of the mma.sync chain: the backward's dS update Q^T doq + W^T (-dVn).
  template <typename T, int kProducts>
  __device__ __forceinline__ static void decay_add_atb(float (&s)[kTiles][kNT][4], float decay,
                                                       const T* const (&a)[kProducts], const T* const (&b)[kProducts],
                                                       int warp) {
#pragma unroll
    for (int t = 0; t < kTiles; ++t)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[t][nt][e] *= decay;
    wgmma_fence();
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
      const int m0 = 64 * (warp / 4 * kTiles + t);  // this tile's first row of s: column m0 of every a_i
#pragma unroll
      for (int step = 0; step < kChunkSteps; ++step)
#pragma unroll
        for (int i = 0; i < kProducts; ++i) {
          const auto a_at = mnmajor_steps<Sw128Slabs<64>>(a[i], m0);
          const auto b_at = mnmajor_steps<ColumnRows<64>>(b[i], 0);
          wgmma_m64k16<T, kBV, true, true>(s[t], step_desc(swizzled_desc<128>(a_at(0)), a_at(step), a_at(0)),
                                           step_desc(swizzled_desc<kSwizzle>(b_at(0)), b_at(step), b_at(0)), true);
        }
    }
    wgmma_commit();
    wgmma_wait<0>();
#pragma unroll
    for (int t = 0; t < kTiles; ++t) wgmma_fence_acc(s[t]);
  }

  // The first of S's rows in tile t of this warp's warpgroup, plus the warp's 16-row slice.
  __device__ __forceinline__ static int row0(int warp, int t) { return 64 * (warp / 4 * kTiles + t) + 16 * (warp % 4); }

 private:
  static constexpr int kChunkSteps = 4;  // the chunk's 64 rows as k16 steps
};

}  // namespace mom_ops
