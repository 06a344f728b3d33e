// Recurrent gated-delta kernels for decoding: one CTA owns a V-tile of kBV columns (64, or 128 at K <= 128) of one
// [K, V] state for one value head and keeps it in registers while it takes one or more steps:
//   S = exp(g) S;  u = beta (v - S^T k);  S = S + k u^T;  o = scale S^T q.
// The state is read once and written once (the op is bound by those bytes). Reductions over K go through
// shared memory in a fixed order, so results are bitwise reproducible.
//
// Element ownership: the state tile is a [rows, cols] block of floats with cols contiguous in memory; each thread
// owns 4 consecutive cols of kRowsPerThread rows. For the [K, V] layout rows are k and cols are v; for the
// [V, K] layout (state_v_first) rows are v and cols are k. `kgroup` says which partial sum over k a thread's
// element feeds, so both layouts share the reduction code.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/vec.cuh"
#include "gdn/scan_params.h"

namespace mom_ops {

constexpr int kDecodeThreads = 256;
constexpr int kDecodeBV = 64;  // value columns per CTA (kBV) where 128 does not apply (decode_tile_width)

struct DecodeParams {
  const void* q;          // [N, H, K], or [N, J, H, K] when q_per_slot
  const void* k;          // [N, J, H, K]
  const void* v;          // [N, J, HV, V]
  const float* g;         // [N, J, HV]
  const float* beta;      // [N, J, HV]
  const float* weights;   // [N, J]
  const void* slots;      // [N, J] int32 / int64
  bool slots_int64;
  float* pool;            // [P, HV, K, V] or [P, HV, V, K]
  void* out;              // [N, HV, V]
  int64_t num_tokens, pool_rows;
  int token0;             // the launch's first token (grid.z holds at most 65535: launches of that many; < 2^26)
  int num_slots, heads_qk, heads_v, dim_v;
  float scale;
  bool l2norm, q_per_slot;
};

template <int kK, int kBV, bool kVFirst>
struct TileLayout {
  static constexpr int kCols = kVFirst ? kK : kBV;       // contiguous extent of the tile
  static constexpr int kRows = kVFirst ? kBV : kK;
  static constexpr int kColThreads = kCols / 4;                // threads along a row (float4 each)
  static constexpr int kRowGroups = kDecodeThreads / kColThreads;
  static constexpr int kRowsPerThread = kRows / kRowGroups;
  static constexpr int kKGroups = kVFirst ? kColThreads : kRowGroups;  // partial sums over k per column v
  static_assert(kRows % kRowGroups == 0, "tile rows must split evenly over the row groups");
};

// Shared buffers of one CTA.
template <int kK, int kBV, bool kVFirst>
struct DecodeSmem {
  float q[kK], k[kK], v[kBV], u[kBV], o[kBV];
  float red[TileLayout<kK, kBV, kVFirst>::kKGroups * kBV];  // partial sums [kgroup][v]
};

template <typename T>
__device__ __forceinline__ void load_vector_l2(const T* src, int n, bool l2norm, float scale, float* dst,
                                               float* red) {
  const int tid = threadIdx.x;
  float x = tid < n ? to_float(src[tid]) : 0.f;
  if (l2norm) {  // x * rsqrt(sum x^2 + 1e-6), block-wide sum in fixed order
    float sq = x * x;
#pragma unroll
    for (int off = 16; off > 0; off /= 2) sq += __shfl_xor_sync(0xffffffffu, sq, off);
    if (tid % 32 == 0) red[tid / 32] = sq;
    __syncthreads();
    float total = 0.f;
    for (int w = 0; w < kDecodeThreads / 32; ++w) total += red[w];
    x *= rsqrtf(total + 1e-6f);
    __syncthreads();
  }
  if (tid < n) dst[tid] = x * scale;
}

// This thread's first element in the tile: row r and col c (tile-relative).
template <int kK, int kBV, bool kVFirst>
__device__ __forceinline__ void tile_coords(int& r, int& c) {
  using L = TileLayout<kK, kBV, kVFirst>;
  r = threadIdx.x / L::kColThreads;
  c = (threadIdx.x % L::kColThreads) * 4;
}

// s.red[kgroup][v] = sum over this thread's elements of column v of (scale_S * S[k, v]) * x[k]; scales S in place.
template <int kK, int kBV, bool kVFirst>
__device__ __forceinline__ void reduce_tile(float (&S)[TileLayout<kK, kBV, kVFirst>::kRowsPerThread][4], const float* x,
                                            float scale_S, float* red) {
  using L = TileLayout<kK, kBV, kVFirst>;
  int r, c;
  tile_coords<kK, kBV, kVFirst>(r, c);
  if (kVFirst) {  // rows are v, cols are k: one sum per row
    const int kgroup = threadIdx.x % L::kColThreads;
#pragma unroll
    for (int i = 0; i < L::kRowsPerThread; ++i) {
      float sum = 0.f;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        S[i][e] *= scale_S;
        sum += S[i][e] * x[c + e];
      }
      red[kgroup * kBV + r + i * L::kRowGroups] = sum;
    }
  } else {  // rows are k, cols are v: one sum per col
    const int kgroup = threadIdx.x / L::kColThreads;
    float sum[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int i = 0; i < L::kRowsPerThread; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        S[i][e] *= scale_S;
        sum[e] += S[i][e] * x[r + i * L::kRowGroups];
      }
#pragma unroll
    for (int e = 0; e < 4; ++e) red[kgroup * kBV + c + e] = sum[e];
  }
}

// One step on the register tile S (this thread's elements). Needs s.k, s.v (tile) and scale*q in s.q; adds
// weight * o to s.o. `decay` = exp(g), `beta` scalars.
template <int kK, int kBV, bool kVFirst>
__device__ __forceinline__ void step_tile(float (&S)[TileLayout<kK, kBV, kVFirst>::kRowsPerThread][4], float decay,
                                          float beta, float weight, DecodeSmem<kK, kBV, kVFirst>& s) {
  using L = TileLayout<kK, kBV, kVFirst>;
  const int tid = threadIdx.x;
  int r, c;
  tile_coords<kK, kBV, kVFirst>(r, c);
  // k and tile-local v of element (i, e): rows are k or v, cols are v or k.
  auto kidx = [&](int i, int e) { return kVFirst ? c + e : r + i * L::kRowGroups; };
  auto vidx = [&](int i, int e) { return kVFirst ? r + i * L::kRowGroups : c + e; };

  // pred[v] = sum_k S'[k, v] k[k] with S' = decay * S: partial sums inside the thread, then over kgroups in
  // shared memory. [K, V] layout: a thread's 4 cols are 4 v's summed over its rows; [V, K]: each row is a v.
  reduce_tile<kK, kBV, kVFirst>(S, s.k, decay, s.red);
  __syncthreads();
  if (tid < kBV) {
    float pred = 0.f;
    for (int gidx = 0; gidx < L::kKGroups; ++gidx) pred += s.red[gidx * kBV + tid];
    s.u[tid] = beta * (s.v[tid] - pred);
  }
  __syncthreads();
  // S = S' + k u^T; o[v] = sum_k S[k, v] (scale q[k]).
#pragma unroll
  for (int i = 0; i < L::kRowsPerThread; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) S[i][e] += s.k[kidx(i, e)] * s.u[vidx(i, e)];
  reduce_tile<kK, kBV, kVFirst>(S, s.q, 1.f, s.red);
  __syncthreads();
  if (tid < kBV) {
    float o = 0.f;
    for (int gidx = 0; gidx < L::kKGroups; ++gidx) o += s.red[gidx * kBV + tid];
    s.o[tid] += weight * o;
  }
  __syncthreads();
}

// Pointer to this thread's first float4 of the V-tile starting at v0 inside one [K, V] (or [V, K]) state.
template <int kK, int kBV, bool kVFirst>
__device__ __forceinline__ float* tile_base(float* state, int dim_v, int v0) {
  int r, c;
  tile_coords<kK, kBV, kVFirst>(r, c);
  return kVFirst ? state + int64_t(v0 + r) * kK + c : state + int64_t(r) * dim_v + v0 + c;
}

template <int kK, int kBV, bool kVFirst>
__device__ __forceinline__ void load_tile(const float* base, int row_stride,
                                          float (&S)[TileLayout<kK, kBV, kVFirst>::kRowsPerThread][4]) {
  using L = TileLayout<kK, kBV, kVFirst>;
#pragma unroll
  for (int i = 0; i < L::kRowsPerThread; ++i) {
    const float4 x = *reinterpret_cast<const float4*>(base + int64_t(i) * L::kRowGroups * row_stride);
    S[i][0] = x.x, S[i][1] = x.y, S[i][2] = x.z, S[i][3] = x.w;
  }
}

template <int kK, int kBV, bool kVFirst>
__device__ __forceinline__ void store_tile(float* base, int row_stride,
                                           const float (&S)[TileLayout<kK, kBV, kVFirst>::kRowsPerThread][4]) {
  using L = TileLayout<kK, kBV, kVFirst>;
#pragma unroll
  for (int i = 0; i < L::kRowsPerThread; ++i)
    *reinterpret_cast<float4*>(base + int64_t(i) * L::kRowGroups * row_stride) =
        make_float4(S[i][0], S[i][1], S[i][2], S[i][3]);
}

// grid: (V / kBV, HV, tokens of this launch). CTA (vt, hv, z) steps the J pool states of token n = token0 + z for
// head hv, V-tile vt.
template <typename T, int kK, int kBV, bool kVFirst>
__global__ void __launch_bounds__(kDecodeThreads) mom_decode_step_kernel(DecodeParams p) {
  __shared__ DecodeSmem<kK, kBV, kVFirst> s;
  const int vt = blockIdx.x, hv = blockIdx.y, tid = threadIdx.x;
  // n as a 32-bit sum: with an int64 token0 the index products went 64-bit and the kernel 128 -> 144 registers, one
  // CTA per SM instead of two (decode_N256_H16_D128 0.195 -> 0.245 ms on the H100, csrc/decode/NOTES.md).
  const int64_t n = int(p.token0 + blockIdx.z);
  const int h = hv / (p.heads_v / p.heads_qk), v0 = vt * kBV;
  if (tid < kBV) s.o[tid] = 0.f;
  if (!p.q_per_slot)
    load_vector_l2(static_cast<const T*>(p.q) + (n * p.heads_qk + h) * kK, kK, p.l2norm, p.scale, s.q, s.red);
  const int row_stride = kVFirst ? kK : p.dim_v;
  for (int j = 0; j < p.num_slots; ++j) {
    const int64_t nj = n * p.num_slots + j;
    const int64_t slot = p.slots_int64 ? static_cast<const int64_t*>(p.slots)[nj] : static_cast<const int*>(p.slots)[nj];
    if (slot < 0 || slot >= p.pool_rows) continue;  // padding (out-of-range rows are skipped, never touched)
    float* state = p.pool + (slot * p.heads_v + hv) * int64_t(kK) * p.dim_v;
    float* base = tile_base<kK, kBV, kVFirst>(state, p.dim_v, v0);
    float S[TileLayout<kK, kBV, kVFirst>::kRowsPerThread][4];
    load_tile<kK, kBV, kVFirst>(base, row_stride, S);  // issued first: the state bytes are the cost
    __syncthreads();  // the previous step's readers of s.q / s.k / s.v are done
    if (p.q_per_slot)
      load_vector_l2(static_cast<const T*>(p.q) + (nj * p.heads_qk + h) * kK, kK, p.l2norm, p.scale, s.q, s.red);
    load_vector_l2(static_cast<const T*>(p.k) + (nj * p.heads_qk + h) * kK, kK, p.l2norm, 1.f, s.k, s.red);
    if (tid < kBV) s.v[tid] = to_float(static_cast<const T*>(p.v)[(nj * p.heads_v + hv) * p.dim_v + v0 + tid]);
    __syncthreads();
    const float g = p.g[nj * p.heads_v + hv], beta = p.beta[nj * p.heads_v + hv];
    step_tile<kK, kBV, kVFirst>(S, expf(g), beta, p.weights[nj], s);
    store_tile<kK, kBV, kVFirst>(base, row_stride, S);
  }
  __syncthreads();
  if (tid < kBV) static_cast<T*>(p.out)[(n * p.heads_v + hv) * p.dim_v + v0 + tid] = T(s.o[tid]);
}

// Token-by-token scan of short sequences (fused_recurrent): grid (V / kBV, HV, num_seqs); the state tile stays in
// registers from h0 to the final state.
template <typename T, int kK, int kBV, bool kVFirst>
__global__ void __launch_bounds__(kDecodeThreads) fused_recurrent_kernel(ScanParams p) {
  __shared__ DecodeSmem<kK, kBV, kVFirst> s;
  const int vt = blockIdx.x, hv = blockIdx.y, tid = threadIdx.x;
  const int64_t seq = blockIdx.z;
  const int h = hv / (p.heads_v / p.heads_qk), v0 = vt * kBV;
  int64_t bos, eos;
  sequence_bounds(p, seq, bos, eos);
  const int row_stride = kVFirst ? kK : p.dim_v;
  const int64_t state_off = (seq * p.heads_v + hv) * int64_t(kK) * p.dim_v;
  float S[TileLayout<kK, kBV, kVFirst>::kRowsPerThread][4];
  if (p.h0 != nullptr) {
    load_tile<kK, kBV, kVFirst>(tile_base<kK, kBV, kVFirst>(const_cast<float*>(p.h0) + state_off, p.dim_v, v0),
                           row_stride, S);
  } else {
#pragma unroll
    for (int i = 0; i < TileLayout<kK, kBV, kVFirst>::kRowsPerThread; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) S[i][e] = 0.f;
  }
  for (int64_t t = bos; t < eos; ++t) {
    __syncthreads();
    if (tid < kBV) s.o[tid] = 0.f;
    load_vector_l2(static_cast<const T*>(p.q) + (t * p.heads_qk + h) * kK, kK, p.l2norm, p.scale, s.q, s.red);
    load_vector_l2(static_cast<const T*>(p.k) + (t * p.heads_qk + h) * kK, kK, p.l2norm, 1.f, s.k, s.red);
    if (tid < kBV) s.v[tid] = to_float(static_cast<const T*>(p.v)[(t * p.heads_v + hv) * p.dim_v + v0 + tid]);
    __syncthreads();
    step_tile<kK, kBV, kVFirst>(S, expf(p.g[t * p.heads_v + hv]), p.beta[t * p.heads_v + hv], 1.f, s);
    if (tid < kBV) static_cast<T*>(p.o)[(t * p.heads_v + hv) * p.dim_v + v0 + tid] = T(s.o[tid]);
  }
  if (p.ht != nullptr)
    store_tile<kK, kBV, kVFirst>(tile_base<kK, kBV, kVFirst>(p.ht + state_off, p.dim_v, v0), row_stride, S);
}

}  // namespace mom_ops
