// memory_mix kernels: one CTA per token (grid-stride), one warp per head; each lane keeps kVecsPerLane 16-byte
// vectors of the head's V values in fp32 registers, so a row is read once and written once.
//   fwd: o = sum_j w_j o_routed[row_j, h] + shared[n, h];  out = o * rstd * norm_w * silu(gate)
//   bwd: the same gather again, then the RMSNorm/gate backward, d_o_routed[row_j, h] = w_j do,
//        d_w[n, j] = sum_h <do, o_routed[row_j, h]>, d_norm_w partial sums per CTA (summed by the caller).
// Deterministic: no atomics on floats; every sum has a fixed order.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/vec.cuh"

namespace mom_ops {

struct MixParams {
  const void* o_routed;      // [R, H, V]
  const int* dst_row;        // [N, k]
  const int* src_pair;       // [R]
  const float* weights;      // [N, k]
  const void* shared;        // [N, H, V] or nullptr
  const float* norm_weight;  // [V] fp32, or nullptr
  const void* gate;          // [N, H, V] or nullptr
  void* out;                 // fwd: [N, H, V]
  const void* grad_out;      // bwd: [N, H, V]
  void* grad_o_routed;       // bwd: [R, H, V]
  float* grad_weights;       // bwd: [N, k]
  void* grad_shared;         // bwd: [N, H, V] or nullptr
  void* grad_gate;           // bwd: [N, H, V] or nullptr
  float* grad_norm_partial;  // bwd: [gridDim.x, V] or nullptr
  int64_t num_tokens, num_rows;
  int topk, heads, dim_v;
  float eps;
};

template <typename T, int kVec>
__device__ __forceinline__ void load_f32(const T* src, float (&dst)[kVec]) {
  const Vec<T, kVec> v = *reinterpret_cast<const Vec<T, kVec>*>(src);
#pragma unroll
  for (int e = 0; e < kVec; ++e) dst[e] = to_float(v.v[e]);
}

template <typename T, int kVec>
__device__ __forceinline__ void store_f32(T* dst, const float (&src)[kVec]) {
  Vec<T, kVec> v;
#pragma unroll
  for (int e = 0; e < kVec; ++e) v.v[e] = T(src[e]);
  *reinterpret_cast<Vec<T, kVec>*>(dst) = v;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

__device__ __forceinline__ float sigmoidf(float z) { return 1.f / (1.f + __expf(-z)); }

// Loads one head-row slice (this lane's kVecsPerLane vectors) of a [*, H, V] tensor into fp32 registers; lanes
// past V get zeros.
template <typename T, int kVec, int kVecsPerLane>
__device__ __forceinline__ void load_row(const T* row, int dim_v, int lane, float (&x)[kVecsPerLane][kVec]) {
#pragma unroll
  for (int i = 0; i < kVecsPerLane; ++i) {
    const int c = (lane + 32 * i) * kVec;
    if (c < dim_v) {
      load_f32<T, kVec>(row + c, x[i]);
    } else {
#pragma unroll
      for (int e = 0; e < kVec; ++e) x[i][e] = 0.f;
    }
  }
}

constexpr int kMixSlotsInFlight = 2;  // routed rows whose loads are issued together (the bwd assumes 2)

// o (fp32, in registers) of token n, head h: the weighted gather of the k routed rows plus shared. The loads of
// kMixSlotsInFlight rows and of shared are issued before any use; the first rows stay in `first` for the
// backward's dot products.
template <typename T, int kVec, int kVecsPerLane>
__device__ __forceinline__ void gather_mix(const MixParams& p, int64_t n, int h, int lane,
                                           float (&o)[kVecsPerLane][kVec],
                                           float (&first)[kMixSlotsInFlight][kVecsPerLane][kVec]) {
  const int64_t row_elems = int64_t(p.heads) * p.dim_v, col0 = int64_t(h) * p.dim_v;
  float sh[kVecsPerLane][kVec];
  if (p.shared != nullptr) {
    load_row<T, kVec, kVecsPerLane>(static_cast<const T*>(p.shared) + n * row_elems + col0, p.dim_v, lane, sh);
  }
#pragma unroll
  for (int i = 0; i < kVecsPerLane; ++i)
#pragma unroll
    for (int e = 0; e < kVec; ++e) o[i][e] = p.shared != nullptr ? sh[i][e] : 0.f;
  for (int j0 = 0; j0 < p.topk; j0 += kMixSlotsInFlight) {
    float x[kMixSlotsInFlight][kVecsPerLane][kVec], w[kMixSlotsInFlight];
#pragma unroll
    for (int jj = 0; jj < kMixSlotsInFlight; ++jj) {
      const int j = j0 + jj;
      const int r = j < p.topk ? p.dst_row[n * p.topk + j] : -1;
      const bool ok = r >= 0 && r < p.num_rows;
      w[jj] = ok ? p.weights[n * p.topk + j] : 0.f;
      if (ok) {
        load_row<T, kVec, kVecsPerLane>(static_cast<const T*>(p.o_routed) + r * row_elems + col0, p.dim_v, lane, x[jj]);
      } else {
#pragma unroll
        for (int i = 0; i < kVecsPerLane; ++i)
#pragma unroll
          for (int e = 0; e < kVec; ++e) x[jj][i][e] = 0.f;
      }
    }
#pragma unroll
    for (int jj = 0; jj < kMixSlotsInFlight; ++jj)
#pragma unroll
      for (int i = 0; i < kVecsPerLane; ++i)
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          o[i][e] += w[jj] * x[jj][i][e];
          if (j0 == 0) first[jj][i][e] = x[jj][i][e];
        }
  }
}

template <typename T, int kVec, int kVecsPerLane>
__global__ void memory_mix_fwd_kernel(MixParams p) {
  const int lane = threadIdx.x % 32, h = threadIdx.x / 32;
  const int64_t row_elems = int64_t(p.heads) * p.dim_v;
  for (int64_t n = blockIdx.x; n < p.num_tokens; n += gridDim.x) {
    const int64_t base = n * row_elems + int64_t(h) * p.dim_v;
    float o[kVecsPerLane][kVec], unused[kMixSlotsInFlight][kVecsPerLane][kVec], z[kVecsPerLane][kVec];
    if (p.gate != nullptr) load_row<T, kVec, kVecsPerLane>(static_cast<const T*>(p.gate) + base, p.dim_v, lane, z);
    gather_mix<T, kVec, kVecsPerLane>(p, n, h, lane, o, unused);
    if (p.norm_weight != nullptr) {
      float ss = 0.f;
#pragma unroll
      for (int i = 0; i < kVecsPerLane; ++i)
#pragma unroll
        for (int e = 0; e < kVec; ++e) ss += o[i][e] * o[i][e];  // lanes past V hold zeros
      const float rstd = rsqrtf(warp_sum(ss) / p.dim_v + p.eps);
#pragma unroll
      for (int i = 0; i < kVecsPerLane; ++i) {
        const int c = (lane + 32 * i) * kVec;
        if (c >= p.dim_v) continue;
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          const float act = p.gate != nullptr ? z[i][e] * sigmoidf(z[i][e]) : 1.f;
          o[i][e] = o[i][e] * rstd * p.norm_weight[c + e] * act;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kVecsPerLane; ++i) {
      const int c = (lane + 32 * i) * kVec;
      if (c < p.dim_v) store_f32<T, kVec>(static_cast<T*>(p.out) + base + c, o[i]);
    }
  }
}

// Dynamic shared memory: heads * topk floats (d_w per head) + heads * V floats (d_norm_w per head).
template <typename T, int kVec, int kVecsPerLane>
__global__ void memory_mix_bwd_kernel(MixParams p) {
  extern __shared__ float smem[];
  float* s_dw = smem;                          // [heads, topk]
  float* s_dnw = smem + p.heads * p.topk;      // [heads, V]
  const int lane = threadIdx.x % 32, h = threadIdx.x / 32;
  const int64_t row_elems = int64_t(p.heads) * p.dim_v;
  const bool norm = p.norm_weight != nullptr, gated = p.gate != nullptr;
  float dnw[kVecsPerLane][kVec] = {};
  for (int64_t n = blockIdx.x; n < p.num_tokens; n += gridDim.x) {
    const int64_t base = n * row_elems + int64_t(h) * p.dim_v;
    float o[kVecsPerLane][kVec], d[kVecsPerLane][kVec], z[kVecsPerLane][kVec];
    float first[kMixSlotsInFlight][kVecsPerLane][kVec];
    load_row<T, kVec, kVecsPerLane>(static_cast<const T*>(p.grad_out) + base, p.dim_v, lane, d);
    if (gated) load_row<T, kVec, kVecsPerLane>(static_cast<const T*>(p.gate) + base, p.dim_v, lane, z);
    gather_mix<T, kVec, kVecsPerLane>(p, n, h, lane, o, first);
    if (norm) {
      float ss = 0.f;
#pragma unroll
      for (int i = 0; i < kVecsPerLane; ++i)
#pragma unroll
        for (int e = 0; e < kVec; ++e) ss += o[i][e] * o[i][e];
      const float rstd = rsqrtf(warp_sum(ss) / p.dim_v + p.eps);
      float dot = 0.f;  // <dxhat, xhat>
#pragma unroll
      for (int i = 0; i < kVecsPerLane; ++i) {
        const int c = (lane + 32 * i) * kVec;
        if (c >= p.dim_v) continue;
        float dz[kVec];
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          const float xhat = o[i][e] * rstd, w = p.norm_weight[c + e];
          const float s = gated ? sigmoidf(z[i][e]) : 1.f, act = gated ? z[i][e] * s : 1.f;
          if (gated) dz[e] = d[i][e] * xhat * w * s * (1.f + z[i][e] * (1.f - s));
          dnw[i][e] += d[i][e] * xhat * act;
          d[i][e] = d[i][e] * w * act;  // dxhat
          dot += d[i][e] * xhat;
          o[i][e] = xhat;
        }
        if (gated) store_f32<T, kVec>(static_cast<T*>(p.grad_gate) + base + c, dz);
      }
      const float mean_dot = warp_sum(dot) / p.dim_v;
#pragma unroll
      for (int i = 0; i < kVecsPerLane; ++i)
#pragma unroll
        for (int e = 0; e < kVec; ++e) d[i][e] = rstd * (d[i][e] - o[i][e] * mean_dot);  // do
    }
#pragma unroll
    for (int i = 0; i < kVecsPerLane; ++i) {
      const int c = (lane + 32 * i) * kVec;
      if (c < p.dim_v && p.grad_shared != nullptr) store_f32<T, kVec>(static_cast<T*>(p.grad_shared) + base + c, d[i]);
    }
    for (int j = 0; j < p.topk; ++j) {
      const int r = p.dst_row[n * p.topk + j];
      float dot = 0.f;
      if (r >= 0 && r < p.num_rows) {
        const float w = p.weights[n * p.topk + j];
        const int64_t rbase = r * row_elems + int64_t(h) * p.dim_v;
#pragma unroll
        for (int i = 0; i < kVecsPerLane; ++i) {
          const int c = (lane + 32 * i) * kVec;
          if (c >= p.dim_v) continue;
          float x[kVec], g[kVec];
          if (j < kMixSlotsInFlight) {  // still in registers from the gather
#pragma unroll
            for (int e = 0; e < kVec; ++e) x[e] = j == 0 ? first[0][i][e] : first[1][i][e];
          } else {
            load_f32<T, kVec>(static_cast<const T*>(p.o_routed) + rbase + c, x);
          }
#pragma unroll
          for (int e = 0; e < kVec; ++e) {
            dot += d[i][e] * x[e];
            g[e] = w * d[i][e];
          }
          store_f32<T, kVec>(static_cast<T*>(p.grad_o_routed) + rbase + c, g);
        }
      }
      dot = warp_sum(dot);
      if (lane == 0) s_dw[h * p.topk + j] = dot;
    }
    // Rows k*n .. k*n+k-1 that hold no pair get a zero gradient (each row is owned by exactly one CTA step).
    for (int j = 0; j < p.topk; ++j) {
      const int64_t r = n * p.topk + j;
      if (r < p.num_rows && p.src_pair[r] < 0) {
        float zero[kVec] = {};
#pragma unroll
        for (int i = 0; i < kVecsPerLane; ++i) {
          const int c = (lane + 32 * i) * kVec;
          if (c < p.dim_v) store_f32<T, kVec>(static_cast<T*>(p.grad_o_routed) + r * row_elems + int64_t(h) * p.dim_v + c, zero);
        }
      }
    }
    __syncthreads();
    for (int j = threadIdx.x; j < p.topk; j += blockDim.x) {
      float sum = 0.f;
      for (int hh = 0; hh < p.heads; ++hh) sum += s_dw[hh * p.topk + j];
      p.grad_weights[n * p.topk + j] = sum;
    }
    __syncthreads();
  }
  if (norm) {
#pragma unroll
    for (int i = 0; i < kVecsPerLane; ++i) {
      const int c = (lane + 32 * i) * kVec;
      if (c < p.dim_v)
#pragma unroll
        for (int e = 0; e < kVec; ++e) s_dnw[h * p.dim_v + c + e] = dnw[i][e];
    }
    __syncthreads();
    for (int c = threadIdx.x; c < p.dim_v; c += blockDim.x) {
      float sum = 0.f;
      for (int hh = 0; hh < p.heads; ++hh) sum += s_dnw[hh * p.dim_v + c];
      p.grad_norm_partial[int64_t(blockIdx.x) * p.dim_v + c] = sum;
    }
  }
}

}  // namespace mom_ops
