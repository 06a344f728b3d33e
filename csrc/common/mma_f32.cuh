// fp32 products on the tensor cores: each fp32 operand as a tf32 pair hi + lo (hi = tf32(x), lo = tf32(x - hi)),
// d += a_hi b_hi + a_hi b_lo + a_lo b_hi ("3xTF32"): three m16n8k8 mma for about fp32's accuracy (the dropped
// a_lo b_lo and the rounding of lo are ~2^-22 relative). Built on common/mma.cuh's to_tf32 and mma_1688_tf32; mma.cuh
// includes this file at its end (and the CPU emulator's shim of mma.cuh includes it as it is).
#pragma once

#include <cstdint>

namespace mom_ops {

// The hi and lo tf32 parts of the n fp32 values x.
template <int n>
__device__ __forceinline__ void split_tf32(const float (&x)[n], uint32_t (&hi)[n], uint32_t (&lo)[n]) {
#pragma unroll
  for (int i = 0; i < n; ++i) {
    hi[i] = to_tf32(x[i]);
    lo[i] = to_tf32(x[i] - __uint_as_float(hi[i]));
  }
}

// d += a * b for fp32 fragments a (16x8) and b (8x8) in mma_1688_tf32's layouts.
__device__ __forceinline__ void mma_1688_f32(float (&d)[4], const float (&a)[4], const float (&b)[2]) {
  uint32_t a_hi[4], a_lo[4], b_hi[2], b_lo[2];
  split_tf32(a, a_hi, a_lo);
  split_tf32(b, b_hi, b_lo);
  mma_1688_tf32(d, a_lo, b_hi);  // the small terms first
  mma_1688_tf32(d, a_hi, b_lo);
  mma_1688_tf32(d, a_hi, b_hi);
}

}  // namespace mom_ops
