// Row-tile products built on common/mma.cuh's building blocks (load_a, load_a_trans, load_b, load_b_trans,
// mma_16816); mma.cuh includes this file at its end. Kept apart so that the CPU emulator's shim of mma.cuh
// (scripts/gdn_emulate) includes this file as it is instead of a copy.
#pragma once

#include <cstdint>

namespace mom_ops {

// The body of mma_rows and mma_rows_sw128: a_fragment(af, ks) gives A's 16 x 16 block ks (its columns 16 ks ..).
template <typename T, int kSteps, int kNT, bool kBKMajor, typename AFragment>
__device__ __forceinline__ void mma_rows_from(float (&acc)[kNT][4], AFragment&& a_fragment, const T* b, int ldb,
                                              int lane) {
#pragma unroll
  for (int ks = 0; ks < kSteps; ++ks) {
    uint32_t af[4];
    a_fragment(af, ks);
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      uint32_t bf[2];
      if constexpr (kBKMajor) {
        load_b_trans(bf, b + ks * 16 * ldb + nt * 8, ldb, lane);
      } else {
        load_b(bf, b + nt * 8 * ldb + ks * 16, ldb, lane);
      }
      mma_16816<T>(acc[nt], af, bf);
    }
  }
}

// acc[nt] += A (16 x 16 kSteps: row-major at a, row stride lda) times B (16 kSteps x 8 kNT): B stored k-major
// (element (k, n) at b[k * ldb + n]) when kBKMajor, else n-major (at b[n * ldb + k]).
template <typename T, int kSteps, int kNT, bool kBKMajor>
__device__ __forceinline__ void mma_rows(float (&acc)[kNT][4], const T* a, int lda, const T* b, int ldb, int lane) {
  mma_rows_from<T, kSteps, kNT, kBKMajor>(
      acc, [&](uint32_t (&af)[4], int ks) { load_a(af, a + ks * 16, lda, lane); }, b, ldb, lane);
}

// acc[nt] += A (16 x 16 kSteps) times B (16 kSteps x 8 kNT), A stored transposed (element (m, k) at a[k * lda + m]:
// the rows of the storage are A's columns) and B stored k-major (element (k, n) at b[k * ldb + n]).
template <typename T, int kSteps, int kNT>
__device__ __forceinline__ void mma_rows_at(float (&acc)[kNT][4], const T* a, int lda, const T* b, int ldb, int lane) {
#pragma unroll
  for (int ks = 0; ks < kSteps; ++ks) {
    uint32_t af[4];
    load_a_trans(af, a + ks * 16 * lda, lda, lane);
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      uint32_t bf[2];
      load_b_trans(bf, b + ks * 16 * ldb + nt * 8, ldb, lane);
      mma_16816<T>(acc[nt], af, bf);
    }
  }
}

// A operands from a tile in 64-column slabs of kSlabRows rows, each slab in the 128-byte swizzle (common/tile_layout.h
// Sw128Slabs: element (r, c) at (c / 64) kSlabRows 64 + r 64 + (((c / 8) % 8) ^ (r % 8)) 8 + c % 8), for rows r0 and
// columns c0 that are multiples of 16. A lane's ldmatrix row r has r % 8 = lane % 8 and its 16-byte chunk (c / 8) % 8
// = 2 ((c0 / 16) % 4) + h with h one bit of the lane, so the chunk's place is 2 ((c0 / 16) % 4) ^ (h ^ lane % 8): one
// XOR with a constant per 16 columns, after one per-lane offset.
// Row-major A[m][k] = tile(r0 + m, c0 + k):
template <int kSlabRows, typename T>
__device__ __forceinline__ void load_a_sw128(uint32_t (&a)[4], const T* tile, int r0, int c0, int lane) {
  const int r = r0 + lane % 16, x = (lane / 16) ^ (lane % 8);  // (r0 % 16 == 0: r % 8 == lane % 8)
  ldmatrix_x4(a, tile + (c0 / 64) * (kSlabRows * 64) + r * 64 + (((c0 / 8) % 8) ^ x) * 8);
}
// Stored transposed, A[m][k] = tile(r0 + k, c0 + m):
template <int kSlabRows, typename T>
__device__ __forceinline__ void load_a_trans_sw128(uint32_t (&a)[4], const T* tile, int r0, int c0, int lane) {
  const int r = r0 + (lane % 8) + (lane / 16) * 8, x = ((lane / 8) % 2) ^ (lane % 8);
  ldmatrix_x4_trans(a, tile + (c0 / 64) * (kSlabRows * 64) + r * 64 + (((c0 / 8) % 8) ^ x) * 8);
}

// mma_rows with A the 16 rows from r0 of such a tile (its columns 0 .. 16 kSteps - 1); B k-major.
template <typename T, int kSteps, int kNT, int kSlabRows>
__device__ __forceinline__ void mma_rows_sw128(float (&acc)[kNT][4], const T* a, int r0, const T* b, int ldb,
                                               int lane) {
  mma_rows_from<T, kSteps, kNT, true>(
      acc, [&](uint32_t (&af)[4], int ks) { load_a_sw128<kSlabRows>(af, a, r0, ks * 16, lane); }, b, ldb, lane);
}

}  // namespace mom_ops
