// The per-chunk prologue of the forward and both backward kernels: the l2norm factors of the chunk's q and
// k rows (raw rows in shared memory, padded or swizzled: common/tile_layout.h; rq, rk = 1 / |x| or 1 without
// l2norm) and G = cumsum(g) in place.
// All 256 threads; ends without a barrier (the caller syncs).
#pragma once

#include <cstdint>

#include "common/copy_rows.cuh"
#include "common/cp_async.cuh"
#include "common/mma.cuh"
#include "common/tile_layout.h"
#include "gdn/g_floor.cuh"

namespace mom_ops {

// rsqrt(|row|^2 + 1e-6) (or 1 without l2norm) of row r (kK 16-bit elements) of a tile laid out as Rows
// (common/tile_layout.h), by the two lanes (half = lane % 2) of a lane pair; both lanes get it. kSums partial sums
// (element e into sum e % kSums, added pairwise at the end): more than one where nothing hides a K / 2 long chain of
// dependent FMAs (the ws backward chain's aux warpgroup, one warp per scheduler); 1 is the plain running sum.
template <typename T, int kK, typename Rows, int kSums = 1>
__device__ __forceinline__ float row_norm_factor(const T* tile, int r, int half, bool l2norm) {
  static_assert(kSums == 1 || kSums == 2 || kSums == 4, "1, 2 or 4 partial sums");
  float ss[kSums] = {};
#pragma unroll
  for (int c = 0; c < kK / 2; c += 8) {
    const uint4 raw = *reinterpret_cast<const uint4*>(tile + Rows::at(r, half * (kK / 2) + c));
    const T* x = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int e = 0; e < 8; ++e) ss[e % kSums] += to_f32<T>(x[e]) * to_f32<T>(x[e]);
  }
#pragma unroll
  for (int n = kSums / 2; n >= 1; n /= 2)
#pragma unroll
    for (int i = 0; i < n; ++i) ss[i] = ss[2 * i] + ss[2 * i + 1];
  float sum = ss[0];
  sum += __shfl_xor_sync(0xffffffffu, sum, 1);
  return l2norm ? rsqrtf(sum + 1e-6f) : 1.f;
}

template <typename T, int kK, typename Rows>
__device__ __forceinline__ void chunk_norms_and_cumsum(const T* sQ, const T* sK, float* sG, float* sRq, float* sRk,
                                                       bool l2norm, int tid) {
  constexpr int C = 64;
  const int lane = tid % 32, warp = tid / 32;
  {  // two threads per q or k row
    const int row = tid / 2, half = tid % 2;
    const float r = row_norm_factor<T, kK, Rows>(row < C ? sQ : sK, row % C, half, l2norm);
    if (half == 0) (row < C ? sRq : sRk)[row % C] = r;
  }
  if (warp == 0) {  // inclusive scan, two rows per lane
    const float a = sG[2 * lane], b = sG[2 * lane + 1], pair = a + b;
    float incl = pair;
#pragma unroll
    for (int off = 1; off < 32; off *= 2) {
      const float up = __shfl_up_sync(0xffffffffu, incl, off);
      if (lane >= off) incl += up;
    }
    float excl = __shfl_up_sync(0xffffffffu, incl, 1);  // (not incl - pair: that loses the prefix to a large pair)
    if (lane == 0) excl = 0.f;
    __syncwarp();
    sG[2 * lane] = excl + a;
    sG[2 * lane + 1] = excl + pair;
  }
}

// The l2norm factors of the chunk's q rows alone (as chunk_norms_and_cumsum computes them), threads 0 .. 127; no
// barrier. For kernels that read G and rk from the split forward's g_rk.
template <typename T, int kK, typename Rows>
__device__ __forceinline__ void chunk_q_norms(const T* sQ, float* sRq, bool l2norm, int tid) {
  if (tid < 128) {
    const float r = row_norm_factor<T, kK, Rows>(sQ, tid / 2, tid % 2, l2norm);
    if (tid % 2 == 0) sRq[tid / 2] = r;
  }
}

// cp.async of the chunk's q and k rows c0 .. c0 + 63 of head h (rows [rows, heads_qk, kK]) into sQ, sK [64][kK]
// laid out as Rows, rows past len zero-filled; all kThreads threads, no commit.
template <typename T, int kK, typename Rows, int kThreads>
__device__ __forceinline__ void load_chunk_qk(T* sQ, T* sK, const T* q, const T* k, int64_t c0, int len,
                                              int heads_qk, int h, int tid) {
  const int64_t row0 = (c0 * heads_qk + h) * kK, stride = int64_t(heads_qk) * kK;
  copy_rows_async<64, kK, Rows, kThreads>(sQ, q + row0, stride, len, tid);
  copy_rows_async<64, kK, Rows, kThreads>(sK, k + row0, stride, len, tid);
}

// The backward's P = scale rq_i rk_j e^{G_i - G_j} (q_i . k_j) for i >= j (else 0) in 16 bits, after
// chunk_norms_and_cumsum: rows r0 .. r0 + 15, columns 32 ch .. 32 ch + 31 of sP [64][kLdC] (raw q, k rows in
// shared memory). Each of the 8 warps (r0 = 16 (warp % 4), ch = warp / 4) writes its own tile; no barrier.
template <typename T, int kK, int kLdK, int kLdC>
__device__ __forceinline__ void causal_p_rows(const T* sQ, const T* sK, const float* sG, const float* sRq,
                                              const float* sRk, float scale, T* sP, int r0, int ch, int lane) {
  const int g8 = lane / 4, t4 = lane % 4;
  float acc[4][4] = {};
  mma_rows<T, kK / 16, 4, false>(acc, sQ + r0 * kLdK, kLdK, sK + 32 * ch * kLdK, kLdK, lane);
#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int e = 0; e < 4; e += 2) {
      const int i = r0 + g8 + (e >= 2 ? 8 : 0), j = 32 * ch + nt * 8 + 2 * t4;
      const float f = scale * sRq[i], Gi = sG[i];
      const float x0 = i >= j ? f * sRk[j] * __expf(Gi - sG[j]) * acc[nt][e] : 0.f;
      const float x1 = i >= j + 1 ? f * sRk[j + 1] * __expf(Gi - sG[j + 1]) * acc[nt][e + 1] : 0.f;
      store2<T>(sP + i * kLdC + j, x0, x1);
    }
}

}  // namespace mom_ops
