// The warp-specialised kernels' state (S^T in the forward, dS^T in the backward chain: [128 v][K k], fp32 wgmma
// accumulators, 64 v rows per state warpgroup, kKc = K / 64 accumulators of m64 x n64 each): its elements, its 16-bit
// shared copy (the A operand of the products with it, K = 128), and the saved chunk states written out as 16-bit
// [k][v] rows (save_s0, ds1).
#pragma once

#include <cstdint>

#include "common/stmatrix.cuh"
#include "common/tile_layout.h"
#include "common/wgmma.cuh"
#include "common/wgmma_steps.cuh"

namespace mom_ops {

// fn(element, k, v) over one state warpgroup's accumulators st[kc][n][e]: v = vrow0 (+8 for e >= 2) with
// vrow0 = 64 wg + 16 wr + g8, k = 64 kc + 8 n + 2 t4 (+1 for odd e).
template <int kKc, typename Fn>
__device__ __forceinline__ void for_each_ws_state(float (&st)[kKc][8][4], int vrow0, int t4, Fn&& fn) {
#pragma unroll
  for (int kc = 0; kc < kKc; ++kc)
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) fn(st[kc][n][e], 64 * kc + 8 * n + 2 * t4 + (e & 1), vrow0 + (e >= 2 ? 8 : 0));
}

// The row of the 16-bit copy (Sw128Slabs<128>, [v][k]) that this lane addresses in publish_ws_state: stmatrix lane
// 8 m + r writes row r of matrix m, v row 64 wg + 16 wr + 8 (m % 2) + r.
template <typename T>
__device__ __forceinline__ T* ws_state_copy_row(T* copy, int wg, int wr, int lane) {
  return copy + (64 * wg + 16 * wr + 8 * ((lane / 8) % 2) + lane % 8) * 64;
}

// Two m64 x n64 accumulators (columns 64 kc ..) -> 16-bit rows of a tile in 64-column slabs of kSlabRows rows
// (Sw128Slabs), by stmatrix: acc_to_a packs n8 tiles 2 j, 2 j + 1 as matrices m = 0..3, lane 8 m + r writes row r of
// matrix m, whose start is row (tile + that row's index * 64, the index 16 w + 8 (m % 2) + r for warp w's rows); its
// 16-byte chunk 2 j + m / 2 swizzles by the row's low bits = lane % 8, and slab kc is an immediate offset.
template <int kSlabRows, typename T>
__device__ __forceinline__ void store_acc_rows_sw128(const float (&acc)[2][8][4], T* row, int lane) {
  const int t4 = lane % 4, mat = lane / 8, mrow = lane % 8;
#pragma unroll
  for (int kc = 0; kc < 2; ++kc)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      uint32_t x[4];
      acc_to_a<T>(x, acc[kc], j, t4, [](int) { return 1.f; });
      store_matrix_x4(x, row + kc * Sw128Slabs<kSlabRows>::at(0, 64) + (((2 * j + mat / 2) ^ mrow) << 3));
    }
}

// st -> its 16-bit copy ([v][k], Sw128Slabs<128>), then the fence that lets wgmma read it.
template <typename T>
__device__ __forceinline__ void publish_ws_state(const float (&st)[2][8][4], T* copy_row, int lane) {
  store_acc_rows_sw128<128>(st, copy_row, lane);
  fence_async_smem();
}

// st: one state warpgroup's accumulators, st[kc][n][e] (kc < kKc) at v = 16 wr + g8 (+8 for e >= 2) of its 64
// columns and k = 64 kc + 8 n + 2 t4 (+1 for odd e). tile: the warpgroup's [64][64] 16-bit scratch
// (Sw128Slabs<64>), free on entry and free again on return. dst: element (k = 0, the warpgroup's first v column)
// of the [K, V] rows, ld elements apart. Each warp writes and reads back only its own 16 v columns, so only
// __syncwarp orders them.
template <typename T, int kKc>
__device__ __forceinline__ void store_state_rows(const float (&st)[kKc][8][4], T* tile, T* dst, int64_t ld, int lane,
                                                 int wr) {
  using Sw = Sw128Slabs<64>;
  const int t4 = lane % 4, mat = lane / 8, mrow = lane % 8;
#pragma unroll
  for (int kc = 0; kc < kKc; ++kc) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {  // k rows 16 j + 8 (m / 2) + r of this half, v columns 16 wr + 8 (m % 2) ..
      uint32_t x[4];
      acc_to_a<T>(x, st[kc], j, t4, [](int) { return 1.f; });
      store_matrix_x4_trans(x, tile + Sw::at(16 * j + 8 * (mat / 2) + mrow, 16 * wr + 8 * (mat % 2)));
    }
    __syncwarp();
#pragma unroll 1
    for (int i = 0; i < 4; ++i) {  // 64 rows x 2 chunks of 16 bytes: row (lane + 32 i) / 2, chunk lane % 2
      const int r = (lane + 32 * i) / 2, col = 16 * wr + 8 * (lane % 2);
      *reinterpret_cast<uint4*>(dst + int64_t(64 * kc + r) * ld + col) =
          *reinterpret_cast<const uint4*>(tile + Sw::at(r, col));
    }
    __syncwarp();
  }
}

}  // namespace mom_ops
