// segment_conv kernels: depthwise causal conv (+ SiLU) inside each segment of a packed stream.
// A thread owns 4 channels (one 8- or 16-byte vector) of a tile of consecutive rows and slides a window of the last
// kW inputs down the tile in registers, so every input row is read about once (plus kW - 1 rows of overlap per tile).
// Widths W < kW run as kW taps whose oldest weights are zero (the binding pads weight to [C, kW]), so one kernel per
// kW in {4, 8} serves W = 1..8. Segment bounds come from cu_seqlens (clamped into [0, R]: bad values give wrong rows,
// never out-of-bounds reads); a tile finds its first segment by binary search and walks on from there.
//   fwd: y[r] = act(pre[r]), pre[r] = sum_i w[kW-1-i] x(r - i)
//   bwd (rows in reverse): dpre[r] = dy[r] act'(pre[r]); dx[r] = sum_i w[kW-1-i] dpre[r + i] (same segment);
//        d_history from the first rows of each segment; dw partials per CTA (fixed-order sums, no atomics).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace mom_ops {

constexpr int kConvChannels = 4;     // channels per thread
constexpr int kConvRows = 64;        // rows per tile
constexpr int kConvVecsX = 64;       // threads of a CTA along the channels
constexpr int kConvTilesY = 4;       // tiles of a CTA along the rows (the bwd adds their dw partials in shared memory)

struct ConvParams {
  const void* x;         // [R, C]
  const float* weight;   // [C, kW] fp32, zero-padded on the old side
  const int64_t* cu;     // [S+1]
  const void* history;   // [S, W-1, C] (x's dtype) or nullptr
  void* y;               // fwd: [R, C]
  const void* grad_y;    // bwd: [R, C]
  void* grad_x;          // bwd: [R, C]
  void* grad_history;    // bwd: [S, W-1, C] (x's dtype, zeroed by the caller) or nullptr
  float* grad_w_partial; // bwd: [gridDim.y, C, kW]
  int64_t rows, channels;
  int segments, width;   // width: the real W (history rows = W - 1)
  bool activation;
};

template <typename T>
__device__ __forceinline__ void load4(const T* p, float (&f)[kConvChannels]) {
  if constexpr (std::is_same_v<T, float>) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    f[0] = v.x, f[1] = v.y, f[2] = v.z, f[3] = v.w;
  } else {
    const uint2 v = *reinterpret_cast<const uint2*>(p);
    const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
    for (int i = 0; i < kConvChannels; ++i) f[i] = static_cast<float>(e[i]);
  }
}

template <typename T>
__device__ __forceinline__ void store4(T* p, const float (&f)[kConvChannels]) {
  if constexpr (std::is_same_v<T, float>) {
    *reinterpret_cast<float4*>(p) = make_float4(f[0], f[1], f[2], f[3]);
  } else {
    uint2 v;
    T* e = reinterpret_cast<T*>(&v);
#pragma unroll
    for (int i = 0; i < kConvChannels; ++i) e[i] = static_cast<T>(f[i]);
    *reinterpret_cast<uint2*>(p) = v;
  }
}

__device__ __forceinline__ float conv_sigmoid(float z) { return 1.f / (1.f + __expf(-z)); }

// Segment bounds, clamped into [0, rows].
struct ConvSegment {
  int s;
  int64_t start, end;
};

__device__ __forceinline__ int64_t conv_cu(const ConvParams& p, int i) {
  const int64_t v = p.cu[i];
  return v < 0 ? 0 : (v > p.rows ? p.rows : v);
}

__device__ __forceinline__ ConvSegment conv_segment(const ConvParams& p, int s) {
  return {s, conv_cu(p, s), conv_cu(p, s + 1)};
}

// The segment holding row r (< cu[S]): the last s with cu[s] <= r.
__device__ __forceinline__ ConvSegment find_segment(const ConvParams& p, int64_t r) {
  int lo = 0, hi = p.segments - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (conv_cu(p, mid) <= r) lo = mid; else hi = mid - 1;
  }
  return conv_segment(p, lo);
}

// x(src) for a row of segment seg: the row itself inside the segment, else a history row (or 0).
template <typename T>
__device__ __forceinline__ void load_source(const ConvParams& p, const ConvSegment& seg, int64_t src, int64_t c0,
                                            float (&f)[kConvChannels]) {
  const int64_t back = seg.start - src;  // > 0: before the segment start
  if (back <= 0) {
    load4(static_cast<const T*>(p.x) + src * p.channels + c0, f);
  } else if (p.history != nullptr && back <= p.width - 1) {
    const int64_t h = (int64_t(seg.s) * (p.width - 1) + (p.width - 1 - back)) * p.channels + c0;
    load4(static_cast<const T*>(p.history) + h, f);
  } else {
#pragma unroll
    for (int e = 0; e < kConvChannels; ++e) f[e] = 0.f;
  }
}

template <int kW>
__device__ __forceinline__ void load_weights(const ConvParams& p, int64_t c0, float (&w)[kW][kConvChannels]) {
#pragma unroll
  for (int e = 0; e < kConvChannels; ++e)
#pragma unroll
    for (int j = 0; j < kW; ++j) w[j][e] = p.weight[(c0 + e) * kW + j];
}

// Grid: (ceil(C / 4 / kConvVecsX), ceil(R / kConvRows / kConvTilesY)), block (kConvVecsX, kConvTilesY).
template <typename T, int kW>
__global__ void __launch_bounds__(kConvVecsX * kConvTilesY) segment_conv_fwd_kernel(ConvParams p) {
  const int64_t c0 = (int64_t(blockIdx.x) * kConvVecsX + threadIdx.x) * kConvChannels;
  const int64_t r0 = (int64_t(blockIdx.y) * kConvTilesY + threadIdx.y) * kConvRows;
  if (c0 >= p.channels || r0 >= p.rows) return;
  const int64_t r_end = min(r0 + kConvRows, p.rows), total = conv_cu(p, p.segments);
  T* y = static_cast<T*>(p.y);
  float w[kW][kConvChannels], win[kW][kConvChannels];  // win[i] = x(r - i)
  load_weights<kW>(p, c0, w);
  ConvSegment seg{};
  if (r0 < total) {
    seg = find_segment(p, r0);
#pragma unroll
    for (int i = 1; i < kW; ++i) load_source<T>(p, seg, r0 - i, c0, win[i]);
  }
  for (int64_t r = r0; r < r_end; ++r) {
    float out[kConvChannels] = {};
    if (r < total) {
      if (r >= seg.end) {  // the next non-empty segment starts at r: its window comes from its history
        while (r >= seg.end && seg.s + 1 < p.segments) seg = conv_segment(p, seg.s + 1);
#pragma unroll
        for (int i = 1; i < kW; ++i) load_source<T>(p, seg, r - i, c0, win[i]);
      }
      load4(static_cast<const T*>(p.x) + r * p.channels + c0, win[0]);
#pragma unroll
      for (int e = 0; e < kConvChannels; ++e) {
        float acc = 0.f;
#pragma unroll
        for (int i = 0; i < kW; ++i) acc += w[kW - 1 - i][e] * win[i][e];
        out[e] = p.activation ? acc * conv_sigmoid(acc) : acc;
      }
#pragma unroll
      for (int i = kW - 1; i > 0; --i)
#pragma unroll
        for (int e = 0; e < kConvChannels; ++e) win[i][e] = win[i - 1][e];
    }
    store4(y + r * p.channels + c0, out);
  }
}

// dpre of row rr of segment seg (0 past the segment end): recomputes pre[rr] from x.
template <typename T, int kW>
__device__ __forceinline__ void conv_dpre_at(const ConvParams& p, const ConvSegment& seg, int64_t rr, int64_t c0,
                                             const float (&w)[kW][kConvChannels], float (&d)[kConvChannels]) {
#pragma unroll
  for (int e = 0; e < kConvChannels; ++e) d[e] = 0.f;
  if (rr >= seg.end) return;
  float pre[kConvChannels] = {}, dy[kConvChannels], xs[kConvChannels];
#pragma unroll
  for (int i = 0; i < kW; ++i) {
    load_source<T>(p, seg, rr - i, c0, xs);
#pragma unroll
    for (int e = 0; e < kConvChannels; ++e) pre[e] += w[kW - 1 - i][e] * xs[e];
  }
  load4(static_cast<const T*>(p.grad_y) + rr * p.channels + c0, dy);
#pragma unroll
  for (int e = 0; e < kConvChannels; ++e) {
    const float s = conv_sigmoid(pre[e]);
    d[e] = p.activation ? dy[e] * s * (1.f + pre[e] * (1.f - s)) : dy[e];
  }
}

// Same grid and block as the fwd. Dynamic shared memory: none; static: the tiles' dw partials.
template <typename T, int kW>
__global__ void __launch_bounds__(kConvVecsX * kConvTilesY) segment_conv_bwd_kernel(ConvParams p) {
  __shared__ float s_dw[kConvTilesY][kConvVecsX][kW * kConvChannels + 1];
  const int64_t c0 = (int64_t(blockIdx.x) * kConvVecsX + threadIdx.x) * kConvChannels;
  const int64_t r0 = (int64_t(blockIdx.y) * kConvTilesY + threadIdx.y) * kConvRows;
  const bool active = c0 < p.channels;
  float dw[kW][kConvChannels] = {};
  if (active && r0 < p.rows) {
    const int64_t r_last = min(r0 + kConvRows, p.rows) - 1, total = conv_cu(p, p.segments);
    T* gx = static_cast<T*>(p.grad_x);
    const float zero[kConvChannels] = {};
    for (int64_t r = max(r0, total); r <= r_last; ++r) store4(gx + r * p.channels + c0, zero);  // no segment: 0
    const int64_t r_hi = min(r_last, total - 1);
    if (r_hi >= r0) {
      float w[kW][kConvChannels], xwin[kW][kConvChannels], dwin[kW][kConvChannels];  // x(r - i), dpre(r + i)
      load_weights<kW>(p, c0, w);
      ConvSegment seg = find_segment(p, r_hi);
#pragma unroll
      for (int i = 0; i < kW; ++i) load_source<T>(p, seg, r_hi - i, c0, xwin[i]);
#pragma unroll
      for (int j = 1; j < kW; ++j) conv_dpre_at<T, kW>(p, seg, r_hi + j, c0, w, dwin[j]);
      for (int64_t r = r_hi; r >= r0; --r) {
        if (r < seg.start) {  // into the previous non-empty segment, at its last row
          while (r < seg.start && seg.s > 0) seg = conv_segment(p, seg.s - 1);
#pragma unroll
          for (int i = 0; i < kW; ++i) load_source<T>(p, seg, r - i, c0, xwin[i]);
#pragma unroll
          for (int j = 1; j < kW; ++j)
#pragma unroll
            for (int e = 0; e < kConvChannels; ++e) dwin[j][e] = 0.f;
        }
        float dy[kConvChannels], gxr[kConvChannels];
        load4(static_cast<const T*>(p.grad_y) + r * p.channels + c0, dy);
#pragma unroll
        for (int e = 0; e < kConvChannels; ++e) {
          float pre = 0.f;
#pragma unroll
          for (int i = 0; i < kW; ++i) pre += w[kW - 1 - i][e] * xwin[i][e];
          const float s = conv_sigmoid(pre);
          dwin[0][e] = p.activation ? dy[e] * s * (1.f + pre * (1.f - s)) : dy[e];
          float g = 0.f;
#pragma unroll
          for (int i = 0; i < kW; ++i) {
            dw[kW - 1 - i][e] += dwin[0][e] * xwin[i][e];
            g += w[kW - 1 - i][e] * dwin[i][e];
          }
          gxr[e] = g;
        }
        store4(gx + r * p.channels + c0, gxr);
        if (r == seg.start && p.grad_history != nullptr) {
          // history row h is source start - (W-1) + h: it feeds rows start + j through tap i = j + W-1-h
          for (int h = 0; h < p.width - 1; ++h) {
            float gh[kConvChannels] = {};
#pragma unroll
            for (int j = 0; j < kW; ++j) {
              const int i = j + p.width - 1 - h;
              if (i < kW) {
#pragma unroll
                for (int e = 0; e < kConvChannels; ++e) gh[e] += w[kW - 1 - i][e] * dwin[j][e];
              }
            }
            store4(static_cast<T*>(p.grad_history) + (int64_t(seg.s) * (p.width - 1) + h) * p.channels + c0, gh);
          }
        }
        // slide to row r - 1
#pragma unroll
        for (int i = kW - 1; i > 0; --i)
#pragma unroll
          for (int e = 0; e < kConvChannels; ++e) dwin[i][e] = dwin[i - 1][e];
#pragma unroll
        for (int i = 0; i + 1 < kW; ++i)
#pragma unroll
          for (int e = 0; e < kConvChannels; ++e) xwin[i][e] = xwin[i + 1][e];
        if (r - 1 >= r0) load_source<T>(p, seg, r - 1 - (kW - 1), c0, xwin[kW - 1]);
      }
    }
  }
  // dw: the CTA's tiles in order, then one partial row per CTA column block.
#pragma unroll
  for (int j = 0; j < kW; ++j)
#pragma unroll
    for (int e = 0; e < kConvChannels; ++e) s_dw[threadIdx.y][threadIdx.x][j * kConvChannels + e] = dw[j][e];
  __syncthreads();
  if (threadIdx.y == 0 && active) {
    for (int j = 0; j < kW; ++j)
      for (int e = 0; e < kConvChannels; ++e) {
        float sum = 0.f;
        for (int t = 0; t < kConvTilesY; ++t) sum += s_dw[t][threadIdx.x][j * kConvChannels + e];
        p.grad_w_partial[(int64_t(blockIdx.y) * p.channels + c0 + e) * kW + j] = sum;
      }
  }
}

}  // namespace mom_ops
