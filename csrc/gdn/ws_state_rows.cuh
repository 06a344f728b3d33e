// The warp-specialised kernels' state (S^T, or dS^T in the backward chain) written out as 16-bit [k][v] rows, the
// layout of the saved chunk states (save_s0, ds1): from the fp32 wgmma accumulators through a per-warpgroup [64][64]
// shared tile, transposed by stmatrix, then 16-byte rows. Reading S^T's [v][k] shared copy instead took 8 two-byte
// loads and the byte permutes per 16-byte store: ~60% of the state warpgroups' samples in ncu (backward chain).
#pragma once

#include <cstdint>

#include "common/stmatrix.cuh"
#include "common/tile_layout.h"
#include "common/wgmma_steps.cuh"

namespace mom_ops {

// st: one state warpgroup's accumulators, st[kc][n][e] at v = 16 wr + g8 (+8 for e >= 2) of its 64 columns and
// k = 64 kc + 8 n + 2 t4 (+1 for odd e). tile: the warpgroup's [64][64] 16-bit scratch (Sw128Slabs<64>), free on
// entry and free again on return. dst: element (k = 0, the warpgroup's first v column) of the [K, V] rows, ld
// elements apart. Each warp writes and reads back only its own 16 v columns, so only __syncwarp orders them.
template <typename T>
__device__ __forceinline__ void store_state_rows(const float (&st)[2][8][4], T* tile, T* dst, int64_t ld, int lane,
                                                 int wr) {
  using Sw = Sw128Slabs<64>;
  const int t4 = lane % 4, mat = lane / 8, mrow = lane % 8;
#pragma unroll
  for (int kc = 0; kc < 2; ++kc) {
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
