// The per-chunk prologue of the forward and both backward kernels: the l2norm factors of the chunk's q and
// k rows (raw rows in shared memory; rq, rk = 1 / |x| or 1 without l2norm) and G = cumsum(g) in place.
// All 256 threads; ends without a barrier (the caller syncs).
#pragma once

#include <cstdint>

#include "common/mma.cuh"

namespace mom_ops {

template <typename T, int kK, int kLdK>
__device__ __forceinline__ void chunk_norms_and_cumsum(const T* sQ, const T* sK, float* sG, float* sRq, float* sRk,
                                                       bool l2norm, int tid) {
  constexpr int C = 64;
  const int lane = tid % 32, warp = tid / 32;
  {  // two threads per q or k row
    const int row = tid / 2, half = tid % 2;
    const T* src = (row < C ? sQ + row * kLdK : sK + (row - C) * kLdK) + half * (kK / 2);
    float ss = 0.f;
#pragma unroll
    for (int c = 0; c < kK / 2; c += 8) {
      const uint4 raw = *reinterpret_cast<const uint4*>(src + c);
      const T* x = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int e = 0; e < 8; ++e) ss += to_f32<T>(x[e]) * to_f32<T>(x[e]);
    }
    ss += __shfl_xor_sync(0xffffffffu, ss, 1);
    if (half == 0) (row < C ? sRq : sRk)[row % C] = l2norm ? rsqrtf(ss + 1e-6f) : 1.f;
  }
  if (warp == 0) {  // inclusive scan, two rows per lane
    const float a = sG[2 * lane], b = sG[2 * lane + 1], pair = a + b;
    float incl = pair;
#pragma unroll
    for (int off = 1; off < 32; off *= 2) {
      const float up = __shfl_up_sync(0xffffffffu, incl, off);
      if (lane >= off) incl += up;
    }
    const float excl = incl - pair;
    __syncwarp();
    sG[2 * lane] = excl + a;
    sG[2 * lane + 1] = excl + pair;
  }
}

}  // namespace mom_ops
