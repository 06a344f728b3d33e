// A product over several k-steps of wgmma (common/wgmma.cuh), operands given by where each k-step starts. Kept apart
// from wgmma.cuh so that the CPU emulator's shim of wgmma.cuh (scripts/gdn_emulate) uses this file as it is.
#pragma once

#include <cstdint>

#include "common/wgmma.cuh"

namespace mom_ops {

// acc (+)= A B, m64 x kN x (16 kSteps), accumulate = false overwrites acc. a_at(s), b_at(s): the operands' elements
// (row 0, k-step s) in 128-byte-swizzled tiles, i.e. the start of each k-step's descriptor (a K-major operand:
// (row 0, column 16 s); an MN-major one: (row 16 s, column 0)). No fence, commit or wait: the caller groups products.
template <typename T, int kN, bool kTransA, bool kTransB, int kSteps, typename FA, typename FB>
__device__ __forceinline__ void wgmma_k_steps(float (&acc)[kN / 8][4], FA a_at, FB b_at, bool accumulate) {
#pragma unroll
  for (int s = 0; s < kSteps; ++s)
    wgmma_m64k16<T, kN, kTransA, kTransB>(acc, sw128_desc(a_at(s)), sw128_desc(b_at(s)), accumulate || s > 0);
}

// The same with A from registers (wgmma_m64n64k16_rs), m64 x n64 x (16 kSteps): a[s] is k-step s's fragment
// (acc_to_a), b_at(s) as above.
template <typename T, bool kTransB, int kSteps, typename FB>
__device__ __forceinline__ void wgmma_rs_k_steps(float (&acc)[8][4], const uint32_t (&a)[kSteps][4], FB b_at,
                                                 bool accumulate) {
#pragma unroll
  for (int s = 0; s < kSteps; ++s)
    wgmma_m64n64k16_rs<T, kTransB>(acc, a[s], sw128_desc(b_at(s)), accumulate || s > 0);
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
