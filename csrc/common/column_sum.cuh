// Column sums of an fp32 matrix in a fixed order: how the per-CTA partials of a weight gradient become the gradient
// without float atomics (bitwise reproducible). at::sum over dim 0 of a short-and-wide [CTAs, V] matrix took 6.6 us
// on the H100 for [264, 256] (memory_mix bwd); this takes one round of loads.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mom_ops {

constexpr int kColumnSumWarps = 32;  // row groups per CTA; a CTA covers 32 columns

// out[c] = sum_r in[r, c] for in [rows, cols] (row-major): warp w adds rows w, w + 32, ... for its lane's column,
// then warp 0 adds the 32 warp sums in warp order. Grid: ceil(cols / 32) CTAs of kColumnSumWarps * 32 threads.
template <typename Out>
__global__ void __launch_bounds__(kColumnSumWarps * 32)
    column_sum_kernel(const float* __restrict__ in, int64_t rows, int64_t cols, Out* __restrict__ out) {
  __shared__ float warp_sums[kColumnSumWarps][33];  // +1: no bank conflicts when warp 0 reads a column
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t c = int64_t(blockIdx.x) * 32 + lane;
  float acc = 0.f;
  if (c < cols) {
#pragma unroll 8
    for (int64_t r = warp; r < rows; r += kColumnSumWarps) acc += in[r * cols + c];
  }
  warp_sums[warp][lane] = acc;
  __syncthreads();
  if (warp == 0 && c < cols) {
    float sum = 0.f;
    for (int w = 0; w < kColumnSumWarps; ++w) sum += warp_sums[w][lane];
    out[c] = static_cast<Out>(sum);
  }
}

}  // namespace mom_ops
