// A product over several k-steps of wgmma (common/wgmma.cuh), operands given by where each k-step starts. Kept apart
// from wgmma.cuh so that the CPU emulator's shim of wgmma.cuh (scripts/gdn_emulate) uses this file as it is.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/tile_layout.h"
#include "common/wgmma.cuh"

namespace mom_ops {

// Descriptor of an operand at p in a tile of kSwizzle-byte swizzle (128: common/sw128_layout.h, 64: sw64_layout.h).
template <int kSwizzle>
__device__ __forceinline__ uint64_t swizzled_desc(const void* p) {
  static_assert(kSwizzle == 128 || kSwizzle == 64, "128- or 64-byte swizzle");
  if constexpr (kSwizzle == 128) {
    return sw128_desc(p);
  } else {
    return sw64_desc(p);
  }
}

// The swizzle of a tile layout (common/tile_layout.h): 64 bytes for Sw64Rows, else 128 (Sw128Slabs).
template <typename Rows>
constexpr int kSwizzleOf = std::is_same_v<Rows, Sw64Rows> ? 64 : 128;

// The k-steps of an operand in a tile laid out as Rows (Sw128Slabs or Sw64Rows), for wgmma_k_steps: K-major from row
// `row`, MN-major from column `col`, both multiples of 8. Each is the operand's start plus an offset of k-step s that
// is a constant (the swizzle leaves column 0 of a row 8 r, and row 0, in place), so that a product computes one
// descriptor and adds constants to it.
template <typename Rows, typename T>
__device__ __forceinline__ auto kmajor_steps(const T* x, int row) {
  const T* start = x + Rows::at(row, 0);
  return [=](int s) { return start + Rows::at(0, 16 * s); };
}
template <typename Rows, typename T>
__device__ __forceinline__ auto mnmajor_steps(const T* x, int col) {
  const T* start = x + Rows::at(0, col);
  return [=](int s) { return start + Rows::at(16 * s, 0); };
}

// Descriptor of k-step s from k-step 0's: the start address field (16-byte units, bits 0-13) moves by the byte
// distance / 16; shared-memory addresses stay below 256 KB, so the field never carries into the next one.
template <typename P>
__device__ __forceinline__ uint64_t step_desc(uint64_t desc0, P at_s, P at_0) {
  return desc0 + uint64_t(int64_t(reinterpret_cast<const char*>(at_s) - reinterpret_cast<const char*>(at_0)) >> 4);
}

// acc (+)= A B, m64 x kN x (16 kSteps), accumulate = false overwrites acc. a_at(s), b_at(s): the operands' elements
// (row 0, k-step s), i.e. the start of each k-step's descriptor (a K-major operand: (row 0, column 16 s); an MN-major
// one: (row 16 s, column 0)), in tiles of kSwA- / kSwB-byte swizzle (kmajor_steps / mnmajor_steps). No fence, commit
// or wait: the caller groups products.
template <typename T, int kN, bool kTransA, bool kTransB, int kSteps, int kSwA = 128, int kSwB = 128, typename FA,
          typename FB>
__device__ __forceinline__ void wgmma_k_steps(float (&acc)[kN / 8][4], FA a_at, FB b_at, bool accumulate) {
  const uint64_t a0 = swizzled_desc<kSwA>(a_at(0)), b0 = swizzled_desc<kSwB>(b_at(0));
#pragma unroll
  for (int s = 0; s < kSteps; ++s)
    wgmma_m64k16<T, kN, kTransA, kTransB>(acc, step_desc(a0, a_at(s), a_at(0)), step_desc(b0, b_at(s), b_at(0)),
                                          accumulate || s > 0);
}

// The same for kN a multiple of 64 (n64 pieces): b_piece(j) is piece j's b_at (its B operand from column 64 j of the
// product: row 64 j of a K-major B, column 64 j of an MN-major one). For kN <= 64 it is wgmma_k_steps with b_piece(0).
template <typename T, int kN, bool kTransA, bool kTransB, int kSteps, int kSwA = 128, int kSwB = 128, typename FA,
          typename FB>
__device__ __forceinline__ void wgmma_k_steps_n64(float (&acc)[kN / 8][4], FA a_at, FB b_piece, bool accumulate) {
  if constexpr (kN <= 64) {
    wgmma_k_steps<T, kN, kTransA, kTransB, kSteps, kSwA, kSwB>(acc, a_at, b_piece(0), accumulate);
  } else {
    static_assert(kN % 64 == 0, "n64 pieces");
#pragma unroll
    for (int j = 0; j < kN / 64; ++j)  // acc's n8 tiles 8 j .. 8 j + 7
      wgmma_k_steps<T, 64, kTransA, kTransB, kSteps, kSwA, kSwB>(*reinterpret_cast<float(*)[8][4]>(&acc[8 * j]), a_at,
                                                                  b_piece(j), accumulate);
  }
}

// The same with A from registers (wgmma_m64n64k16_rs), m64 x n64 x (16 kSteps): a[s] is k-step s's fragment
// (acc_to_a), b_at(s) as above (128-byte swizzle).
template <typename T, bool kTransB, int kSteps, typename FB>
__device__ __forceinline__ void wgmma_rs_k_steps(float (&acc)[8][4], const uint32_t (&a)[kSteps][4], FB b_at,
                                                 bool accumulate) {
  const uint64_t b0 = sw128_desc(b_at(0));
#pragma unroll
  for (int s = 0; s < kSteps; ++s)
    wgmma_m64n64k16_rs<T, kTransB>(acc, a[s], step_desc(b0, b_at(s), b_at(0)), accumulate || s > 0);
}

// k-step s of an A operand from the accumulator acc of an m64 x n product (n8 tiles 2 s, 2 s + 1), each element
// times col_scale(column) (the column within the tile), in 16 bits.
template <typename T, int kTiles, typename Scale>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&acc)[kTiles][4], int s, int t4,
                                         Scale&& col_scale) {
  const int c0 = 16 * s + 2 * t4, c1 = c0 + 8;
  const float f00 = col_scale(c0), f01 = col_scale(c0 + 1), f10 = col_scale(c1), f11 = col_scale(c1 + 1);
  a[0] = pack2<T>(f00 * acc[2 * s][0], f01 * acc[2 * s][1]);
  a[1] = pack2<T>(f00 * acc[2 * s][2], f01 * acc[2 * s][3]);
  a[2] = pack2<T>(f10 * acc[2 * s + 1][0], f11 * acc[2 * s + 1][1]);
  a[3] = pack2<T>(f10 * acc[2 * s + 1][2], f11 * acc[2 * s + 1][3]);
}

}  // namespace mom_ops
