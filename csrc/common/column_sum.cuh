// Column sums of an fp32 matrix in a fixed order: how the per-CTA partials of a weight gradient become the gradient
// without float atomics (bitwise reproducible). at::sum over dim 0 of a short-and-wide [CTAs, V] matrix took 6.6 us
// on the H100 for [264, 256] (memory_mix bwd); this takes one round of loads.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/static_switch.h"

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

// The column sums of partial (fp32, [rows, ...] read as [rows, cols] with cols = the product of out_shape) as a new
// tensor of out_shape in out_dtype on partial's device: written by the kernel in that dtype where it can (fp32,
// fp16, bf16: no separate cast launch), else in fp32 and cast.
inline at::Tensor column_sums(const at::Tensor& partial, at::IntArrayRef out_shape, at::ScalarType out_dtype) {
  const bool direct = out_dtype == at::kFloat || out_dtype == at::kHalf || out_dtype == at::kBFloat16;
  at::Tensor out = at::empty(out_shape, partial.options().dtype(direct ? out_dtype : at::kFloat));
  const int64_t cols = out.numel();
  if (cols > 0) {
    FLOAT_SWITCH(out.scalar_type(), out_t, [&] {
      column_sum_kernel<out_t><<<unsigned((cols + 31) / 32), kColumnSumWarps * 32, 0,
                                 at::cuda::getCurrentCUDAStream()>>>(partial.data_ptr<float>(), partial.size(0), cols,
                                                                     out.data_ptr<out_t>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return direct ? out : out.to(out_dtype);
}

}  // namespace mom_ops
