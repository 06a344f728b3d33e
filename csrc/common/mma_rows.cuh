// Row-tile products built on common/mma.cuh's building blocks (load_a, load_a_trans, load_b, load_b_trans,
// mma_16816); mma.cuh includes this file at its end. Kept apart so that the CPU emulator's shim of mma.cuh
// (scripts/gdn_emulate) includes this file as it is instead of a copy.
#pragma once

#include <cstdint>

namespace mom_ops {

// acc[nt] += A (16 x 16 kSteps: row-major at a, row stride lda) times B (16 kSteps x 8 kNT): B stored k-major
// (element (k, n) at b[k * ldb + n]) when kBKMajor, else n-major (at b[n * ldb + k]).
template <typename T, int kSteps, int kNT, bool kBKMajor>
__device__ __forceinline__ void mma_rows(float (&acc)[kNT][4], const T* a, int lda, const T* b, int ldb, int lane) {
#pragma unroll
  for (int ks = 0; ks < kSteps; ++ks) {
    uint32_t af[4];
    load_a(af, a + ks * 16, lda, lane);
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

}  // namespace mom_ops
