// memory_mix kernels: a CTA takes 1 or 2 tokens at a time (grid-stride), one warp per head; each lane keeps
// kVecsPerLane 16-byte vectors of the head's V values in fp32 registers, so a row is read once and written once.
// All loads of a step (routed rows, shared, gate, grad) are issued before the first arithmetic.
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

// Tokens a warp works on at once: their loads are all in flight before the first use (registers allow 2 at
// V <= 32 vectors per head-row).
template <int kVecsPerLane>
constexpr int mix_tokens_per_warp() {
  return kVecsPerLane == 1 ? 2 : 1;
}

// What one (token, head) reads before any arithmetic: the first routed rows with their weights, and shared.
template <int kVec, int kVecsPerLane>
struct MixLoads {
  float x[kMixSlotsInFlight][kVecsPerLane][kVec];
  float w[kMixSlotsInFlight];
  float sh[kVecsPerLane][kVec];  // zeros without shared
};

template <int kVec, int kVecsPerLane>
__device__ __forceinline__ void zero(float (&x)[kVecsPerLane][kVec]) {
#pragma unroll
  for (int i = 0; i < kVecsPerLane; ++i)
#pragma unroll
    for (int e = 0; e < kVec; ++e) x[i][e] = 0.f;
}

template <typename T, int kVec, int kVecsPerLane>
__device__ __forceinline__ void issue_mix_loads(const MixParams& p, int64_t n, int h, int lane,
                                                MixLoads<kVec, kVecsPerLane>& L) {
  const int64_t row_elems = int64_t(p.heads) * p.dim_v, col0 = int64_t(h) * p.dim_v;
#pragma unroll
  for (int jj = 0; jj < kMixSlotsInFlight; ++jj) {
    const int r = jj < p.topk ? p.dst_row[n * p.topk + jj] : -1;
    const bool ok = r >= 0 && r < p.num_rows;
    L.w[jj] = ok ? p.weights[n * p.topk + jj] : 0.f;
    if (ok) {
      load_row<T, kVec, kVecsPerLane>(static_cast<const T*>(p.o_routed) + r * row_elems + col0, p.dim_v, lane, L.x[jj]);
    } else {
      zero(L.x[jj]);
    }
  }
  if (p.shared != nullptr) {
    load_row<T, kVec, kVecsPerLane>(static_cast<const T*>(p.shared) + n * row_elems + col0, p.dim_v, lane, L.sh);
  } else {
    zero(L.sh);
  }
}

// o = shared + sum_j w_j o_routed[row_j, h] in fp32; slots past the first kMixSlotsInFlight are loaded here.
template <typename T, int kVec, int kVecsPerLane>
__device__ __forceinline__ void finish_mix(const MixParams& p, int64_t n, int h, int lane,
                                           const MixLoads<kVec, kVecsPerLane>& L, float (&o)[kVecsPerLane][kVec]) {
  const int64_t row_elems = int64_t(p.heads) * p.dim_v, col0 = int64_t(h) * p.dim_v;
#pragma unroll
  for (int i = 0; i < kVecsPerLane; ++i)
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      o[i][e] = L.sh[i][e];
#pragma unroll
      for (int jj = 0; jj < kMixSlotsInFlight; ++jj) o[i][e] += L.w[jj] * L.x[jj][i][e];
    }
  for (int j = kMixSlotsInFlight; j < p.topk; ++j) {
    const int r = p.dst_row[n * p.topk + j];
    if (r < 0 || r >= p.num_rows) continue;
    const float w = p.weights[n * p.topk + j];
    float x[kVecsPerLane][kVec];
    load_row<T, kVec, kVecsPerLane>(static_cast<const T*>(p.o_routed) + r * row_elems + col0, p.dim_v, lane, x);
#pragma unroll
    for (int i = 0; i < kVecsPerLane; ++i)
#pragma unroll
      for (int e = 0; e < kVec; ++e) o[i][e] += w * x[i][e];
  }
}

template <typename T, int kVec, int kVecsPerLane>
__global__ void memory_mix_fwd_kernel(MixParams p) {
  constexpr int kTok = mix_tokens_per_warp<kVecsPerLane>();
  const int lane = threadIdx.x % 32, h = threadIdx.x / 32;
  const int64_t row_elems = int64_t(p.heads) * p.dim_v;
  for (int64_t n0 = int64_t(blockIdx.x) * kTok; n0 < p.num_tokens; n0 += int64_t(gridDim.x) * kTok) {
    MixLoads<kVec, kVecsPerLane> L[kTok];
    float z[kTok][kVecsPerLane][kVec];
#pragma unroll
    for (int t = 0; t < kTok; ++t) {
      const int64_t n = n0 + t;
      if (n >= p.num_tokens) break;
      if (p.gate != nullptr)
        load_row<T, kVec, kVecsPerLane>(static_cast<const T*>(p.gate) + n * row_elems + int64_t(h) * p.dim_v, p.dim_v,
                                        lane, z[t]);
      issue_mix_loads<T, kVec, kVecsPerLane>(p, n, h, lane, L[t]);
    }
#pragma unroll
    for (int t = 0; t < kTok; ++t) {
      const int64_t n = n0 + t;
      if (n >= p.num_tokens) break;
      const int64_t base = n * row_elems + int64_t(h) * p.dim_v;
      float o[kVecsPerLane][kVec];
      finish_mix<T, kVec, kVecsPerLane>(p, n, h, lane, L[t], o);
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
            const float act = p.gate != nullptr ? z[t][i][e] * sigmoidf(z[t][i][e]) : 1.f;
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
}

// Dynamic shared memory: kTok * heads * topk floats (d_w per head) + heads * V floats (d_norm_w per head).
template <typename T, int kVec, int kVecsPerLane>
__global__ void memory_mix_bwd_kernel(MixParams p) {
  constexpr int kTok = mix_tokens_per_warp<kVecsPerLane>();
  extern __shared__ float smem[];
  float* s_dw = smem;                                // [kTok, heads, topk]
  float* s_dnw = smem + kTok * p.heads * p.topk;     // [heads, V]
  const int lane = threadIdx.x % 32, h = threadIdx.x / 32;
  const int64_t row_elems = int64_t(p.heads) * p.dim_v;
  const bool norm = p.norm_weight != nullptr, gated = p.gate != nullptr;
  float dnw[kVecsPerLane][kVec] = {};
  for (int64_t n0 = int64_t(blockIdx.x) * kTok; n0 < p.num_tokens; n0 += int64_t(gridDim.x) * kTok) {
    MixLoads<kVec, kVecsPerLane> L[kTok];
    float dy[kTok][kVecsPerLane][kVec], z[kTok][kVecsPerLane][kVec];
#pragma unroll
    for (int t = 0; t < kTok; ++t) {
      const int64_t n = n0 + t;
      if (n >= p.num_tokens) break;
      const int64_t base = n * row_elems + int64_t(h) * p.dim_v;
      load_row<T, kVec, kVecsPerLane>(static_cast<const T*>(p.grad_out) + base, p.dim_v, lane, dy[t]);
      if (gated) load_row<T, kVec, kVecsPerLane>(static_cast<const T*>(p.gate) + base, p.dim_v, lane, z[t]);
      issue_mix_loads<T, kVec, kVecsPerLane>(p, n, h, lane, L[t]);
    }
#pragma unroll
    for (int t = 0; t < kTok; ++t) {
      const int64_t n = n0 + t;
      if (n >= p.num_tokens) break;
      const int64_t base = n * row_elems + int64_t(h) * p.dim_v;
      float o[kVecsPerLane][kVec];
      float (&d)[kVecsPerLane][kVec] = dy[t];
      finish_mix<T, kVec, kVecsPerLane>(p, n, h, lane, L[t], o);
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
            const float s = gated ? sigmoidf(z[t][i][e]) : 1.f, act = gated ? z[t][i][e] * s : 1.f;
            if (gated) dz[e] = d[i][e] * xhat * w * s * (1.f + z[t][i][e] * (1.f - s));
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
        if (c < p.dim_v && p.grad_shared != nullptr)
          store_f32<T, kVec>(static_cast<T*>(p.grad_shared) + base + c, d[i]);
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
              for (int e = 0; e < kVec; ++e) x[e] = j == 0 ? L[t].x[0][i][e] : L[t].x[1][i][e];
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
        if (lane == 0) s_dw[(t * p.heads + h) * p.topk + j] = dot;
      }
      // Rows k*n .. k*n+k-1 that hold no pair get a zero gradient (each row is owned by exactly one token).
      for (int j = 0; j < p.topk; ++j) {
        const int64_t r = n * p.topk + j;
        if (r < p.num_rows && p.src_pair[r] < 0) {
          float zero_row[kVec] = {};
#pragma unroll
          for (int i = 0; i < kVecsPerLane; ++i) {
            const int c = (lane + 32 * i) * kVec;
            if (c < p.dim_v)
              store_f32<T, kVec>(static_cast<T*>(p.grad_o_routed) + r * row_elems + int64_t(h) * p.dim_v + c, zero_row);
          }
        }
      }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < kTok * p.topk; idx += blockDim.x) {
      const int t = idx / p.topk, j = idx % p.topk;
      if (n0 + t >= p.num_tokens) continue;
      float sum = 0.f;
      for (int hh = 0; hh < p.heads; ++hh) sum += s_dw[(t * p.heads + hh) * p.topk + j];
      p.grad_weights[(n0 + t) * p.topk + j] = sum;
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
