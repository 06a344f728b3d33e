// A product over several k-steps of wgmma (common/wgmma.cuh), operands given by where each k-step starts. Kept apart
// from wgmma.cuh so that the CPU emulator's shim of wgmma.cuh (scripts/gdn_emulate) uses this file as it is.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/wgmma.cuh"

namespace mom_ops {

// An operand given as a pointer into a 128-byte-swizzled tile, or as a ready descriptor (e.g. sw64_desc of a tile in
// the 64-byte swizzle).
template <typename X>
__device__ __forceinline__ uint64_t operand_desc(X x) {
  if constexpr (std::is_pointer_v<X>) {
    return sw128_desc(x);
  } else {
    return x;
  }
}

// acc (+)= A B, m64 x kN x (16 kSteps), accumulate = false overwrites acc. a_at(s), b_at(s): the operands' elements
// (row 0, k-step s), i.e. the start of each k-step's descriptor (a K-major operand: (row 0, column 16 s); an MN-major
// one: (row 16 s, column 0)), as pointers into 128-byte-swizzled tiles or as descriptors (operand_desc). No fence,
// commit or wait: the caller groups products.
template <typename T, int kN, bool kTransA, bool kTransB, int kSteps, typename FA, typename FB>
__device__ __forceinline__ void wgmma_k_steps(float (&acc)[kN / 8][4], FA a_at, FB b_at, bool accumulate) {
#pragma unroll
  for (int s = 0; s < kSteps; ++s)
    wgmma_m64k16<T, kN, kTransA, kTransB>(acc, operand_desc(a_at(s)), operand_desc(b_at(s)), accumulate || s > 0);
}

// The same for kN a multiple of 64 (n64 pieces): b_piece(j) is piece j's b_at (its B operand from column 64 j of the
// product: row 64 j of a K-major B, column 64 j of an MN-major one). For kN <= 64 it is wgmma_k_steps with b_piece(0).
template <typename T, int kN, bool kTransA, bool kTransB, int kSteps, typename FA, typename FB>
__device__ __forceinline__ void wgmma_k_steps_n64(float (&acc)[kN / 8][4], FA a_at, FB b_piece, bool accumulate) {
  if constexpr (kN <= 64) {
    wgmma_k_steps<T, kN, kTransA, kTransB, kSteps>(acc, a_at, b_piece(0), accumulate);
  } else {
    static_assert(kN % 64 == 0, "n64 pieces");
#pragma unroll
    for (int j = 0; j < kN / 64; ++j)  // acc's n8 tiles 8 j .. 8 j + 7
      wgmma_k_steps<T, 64, kTransA, kTransB, kSteps>(*reinterpret_cast<float(*)[8][4]>(&acc[8 * j]), a_at,
                                                      b_piece(j), accumulate);
  }
}

// The same with A from registers (wgmma_m64n64k16_rs), m64 x n64 x (16 kSteps): a[s] is k-step s's fragment
// (acc_to_a), b_at(s) as above.
template <typename T, bool kTransB, int kSteps, typename FB>
__device__ __forceinline__ void wgmma_rs_k_steps(float (&acc)[8][4], const uint32_t (&a)[kSteps][4], FB b_at,
                                                 bool accumulate) {
#pragma unroll
  for (int s = 0; s < kSteps; ++s)
    wgmma_m64n64k16_rs<T, kTransB>(acc, a[s], operand_desc(b_at(s)), accumulate || s > 0);
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
