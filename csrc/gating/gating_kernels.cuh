// gdn_gating kernels: g = -exp(A_log) * softplus(a + dt_bias) (fp32), beta = sigmoid(b), and their backward.
// Element-wise over [R, H]; each thread keeps one head column (so exp(A_log) and dt_bias are read once per thread,
// and the backward's per-head sums stay in registers): a CTA of kGatingThreads threads covers `cols` = min(H, 256)
// heads of blockIdx.y's column tile and 256 / cols rows per pass, kGatingPasses passes. Measured (H200, 49152 x 4
// bf16, graph replay): 8 passes of load-use-store fwd 11.9 us, bwd 18.5 us; 4 rows loaded first 8.3 / 12.4 us.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/vec.cuh"

namespace mom_ops {

constexpr int kGatingThreads = 256;
constexpr int kGatingPasses = 4;  // rows per thread: each loads all of its inputs before any math or store
constexpr float kGatingSoftplusThreshold = 20.f;  // torch.nn.functional.softplus's default

struct GatingParams {
  const void *a, *b;              // [R, H], rows a_row_stride / b_row_stride elements apart
  const void *A_log, *dt_bias;    // [H], A_log_stride / dt_bias_stride elements apart
  float* g;                       // fwd: [R, H] contiguous
  void* beta;                     // fwd: [R, H] contiguous, b's dtype
  const float* grad_g;            // bwd: [R, H], rows grad_g_row_stride apart
  const void* grad_beta;          // bwd: [R, H] in b's dtype, rows grad_beta_row_stride apart
  void *grad_a, *grad_b;          // bwd: [R, H] in a's dtype, rows grad_a_row_stride / grad_b_row_stride apart
  float* partial;                 // bwd: [gridDim.x, 2, H] per-CTA sums (grad_A_log, grad_dt_bias)
  int64_t rows, heads;
  int64_t a_row_stride, b_row_stride, grad_g_row_stride, grad_beta_row_stride, grad_a_row_stride, grad_b_row_stride;
  int64_t A_log_stride, dt_bias_stride;
  int cols;                       // heads per column tile: min(H, kGatingThreads)
};

// The rows a CTA covers: kGatingPasses passes of kGatingThreads / cols rows.
__host__ __device__ inline int64_t gating_rows_per_cta(int cols) {
  return int64_t(kGatingThreads / cols) * kGatingPasses;
}

__device__ __forceinline__ float gating_sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

__device__ __forceinline__ float gating_softplus(float x) {
  return x > kGatingSoftplusThreshold ? x : log1pf(expf(x));
}

// This thread's head column h (or -1 when it has none) and its first row, row step and row end.
struct GatingSlot {
  int64_t h, row, row_step, row_end;
};

__device__ __forceinline__ GatingSlot gating_slot(const GatingParams& p) {
  const int lanes = kGatingThreads / p.cols;  // rows per pass
  const int t = threadIdx.x;
  GatingSlot s;
  s.h = int64_t(blockIdx.y) * p.cols + t % p.cols;
  const int64_t first = int64_t(blockIdx.x) * gating_rows_per_cta(p.cols);
  s.row = first + t / p.cols;
  s.row_step = lanes;
  s.row_end = min(first + gating_rows_per_cta(p.cols), p.rows);
  if (t >= lanes * p.cols || s.h >= p.heads) s.h = -1;
  return s;
}

template <typename T, typename P>
__global__ void __launch_bounds__(kGatingThreads) gdn_gating_fwd_kernel(GatingParams p) {
  const GatingSlot s = gating_slot(p);
  if (s.h < 0) return;
  const float decay = -expf(to_float(static_cast<const P*>(p.A_log)[s.h * p.A_log_stride]));
  const float bias = to_float(static_cast<const P*>(p.dt_bias)[s.h * p.dt_bias_stride]);
  const T* a = static_cast<const T*>(p.a);
  const T* b = static_cast<const T*>(p.b);
  T* beta = static_cast<T*>(p.beta);
  float av[kGatingPasses], bv[kGatingPasses];  // all loads in flight at once (latency, not bandwidth, bounds this)
#pragma unroll
  for (int i = 0; i < kGatingPasses; ++i) {
    const int64_t r = s.row + i * s.row_step;
    av[i] = r < s.row_end ? to_float(a[r * p.a_row_stride + s.h]) : 0.f;
    bv[i] = r < s.row_end ? to_float(b[r * p.b_row_stride + s.h]) : 0.f;
  }
#pragma unroll
  for (int i = 0; i < kGatingPasses; ++i) {
    const int64_t r = s.row + i * s.row_step;
    if (r >= s.row_end) break;
    p.g[r * p.heads + s.h] = decay * gating_softplus(av[i] + bias);
    beta[r * p.heads + s.h] = static_cast<T>(gating_sigmoid(bv[i]));
  }
}

// grad_a = grad_g * decay * softplus'(x), grad_b = grad_beta * s (1 - s) (s = sigmoid(b) recomputed in fp32);
// per CTA and head: sum(grad_g * g) (-> grad_A_log, since dg / dA_log = g) and sum(grad_a) (-> grad_dt_bias), added
// over the CTA's row lanes in lane order (fixed order: the result is bitwise reproducible).
template <typename T, typename P>
__global__ void __launch_bounds__(kGatingThreads) gdn_gating_bwd_kernel(GatingParams p) {
  __shared__ float sums[2][kGatingThreads];
  const GatingSlot s = gating_slot(p);
  float sum_A_log = 0.f, sum_dt_bias = 0.f;
  if (s.h >= 0) {
    const float decay = -expf(to_float(static_cast<const P*>(p.A_log)[s.h * p.A_log_stride]));
    const float bias = to_float(static_cast<const P*>(p.dt_bias)[s.h * p.dt_bias_stride]);
    const T* a = static_cast<const T*>(p.a);
    const T* b = static_cast<const T*>(p.b);
    const T* grad_beta = static_cast<const T*>(p.grad_beta);
    T* grad_a = static_cast<T*>(p.grad_a);
    T* grad_b = static_cast<T*>(p.grad_b);
    float av[kGatingPasses], bv[kGatingPasses], dgv[kGatingPasses], dbetav[kGatingPasses];
#pragma unroll
    for (int i = 0; i < kGatingPasses; ++i) {
      const int64_t r = s.row + i * s.row_step;
      const bool in = r < s.row_end;
      av[i] = in ? to_float(a[r * p.a_row_stride + s.h]) : 0.f;
      bv[i] = in ? to_float(b[r * p.b_row_stride + s.h]) : 0.f;
      dgv[i] = in ? p.grad_g[r * p.grad_g_row_stride + s.h] : 0.f;
      dbetav[i] = in ? to_float(grad_beta[r * p.grad_beta_row_stride + s.h]) : 0.f;
    }
#pragma unroll
    for (int i = 0; i < kGatingPasses; ++i) {
      const int64_t r = s.row + i * s.row_step;
      if (r >= s.row_end) break;
      const float x = av[i] + bias;
      const float dsoftplus = x > kGatingSoftplusThreshold ? 1.f : gating_sigmoid(x);
      const float da = dgv[i] * decay * dsoftplus;
      const float sb = gating_sigmoid(bv[i]);
      grad_a[r * p.grad_a_row_stride + s.h] = static_cast<T>(da);
      grad_b[r * p.grad_b_row_stride + s.h] = static_cast<T>(dbetav[i] * sb * (1.f - sb));
      sum_A_log += dgv[i] * decay * gating_softplus(x);
      sum_dt_bias += da;
    }
  }
  sums[0][threadIdx.x] = sum_A_log;
  sums[1][threadIdx.x] = sum_dt_bias;
  __syncthreads();
  const int lanes = kGatingThreads / p.cols;
  if (int(threadIdx.x) < p.cols && s.h >= 0) {
    float total_A_log = 0.f, total_dt_bias = 0.f;
    for (int lane = 0; lane < lanes; ++lane) {
      total_A_log += sums[0][lane * p.cols + threadIdx.x];
      total_dt_bias += sums[1][lane * p.cols + threadIdx.x];
    }
    float* partial = p.partial + int64_t(blockIdx.x) * 2 * p.heads;
    partial[s.h] = total_A_log;
    partial[p.heads + s.h] = total_dt_bias;
  }
}

}  // namespace mom_ops
