// segment_conv kernels: depthwise causal conv (+ SiLU) inside each segment of a packed stream.
//   fwd: pre[r] = sum_k w[:, k] in(r - (W-1) + k),  y[r] = silu(pre[r])   (in(j): x[j] inside r's segment, else
//        history[s, j - start + W - 1] or 0)
//   bwd: dpre = grad_y * silu'(pre);  grad_x[j] = sum_k w[:, k] dpre[j + W-1-k] (rows of j's segment),
//        grad_history = the same sums for the W-1 virtual rows before each segment,
//        grad_w[:, k] = sum_r dpre[r] in(r - (W-1) + k)  (per-CTA partials, summed by the caller).
// Meant to be bandwidth-bound; v2 was issue-bound instead (ncu: SM 53% busy, DRAM 21%), so a chunk of rows that
// lies inside one segment and the run takes a path without per-row checks. Each thread owns kVec = 4 channels (16
// bytes of fp32, 8 of bf16/fp16; kVec = 1 when C or the pointers do not allow vectors) and a run of run_rows
// consecutive rows: a warp is 32 consecutive vectors of one run (coalesced rows), a CTA kConvWarps runs of the same
// 32 vectors; the run length is a launch parameter (run_rows: conv_run_rows sizes runs so that the CTAs fill whole
// waves). (With 8 bf16 channels per thread the kernels needed 151 (fwd) and 205 (bwd) registers at W = 4: one
// CTA per SM.) The thread finds the segment of its first row by a binary search of cu_seqlens and walks its rows
// keeping the W-1 previous inputs in registers (a sliding window), reloading the window from the history when a
// segment starts inside its run. Rows are loaded a chunk at a time (independent loads in flight), the next chunk's
// while this one is walked. The bwd walks W-1 rows past its run (their dpre feed its last rows' grad_x) and keeps W
// pending gradient sums (the virtual rows r-W+1 .. r), emitting the oldest at each row and all of them at a
// segment's end.
// With a routing plan's src_pair the x rows are read through it (the conv of permute(x) without writing that copy:
// MoMAttention's q): each warp first puts its rows' x row indices in shared memory (one division per row and warp).
// Deterministic: no atomics; every sum has a fixed order.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/fast_math.cuh"
#include "common/vec.cuh"

namespace mom_ops {

struct ConvParams {
  const void* x;            // [R, C], rows x_row_stride elements apart
  const void* weight;       // [C, W] contiguous, fp32 (weight_f32) or x's dtype (read as is: no cast launch)
  const float* history;     // [S, W-1, C] fp32, or nullptr (zeros)
  const void* cu_seqlens;   // [S+1] int32 / int64
  void* y;                  // fwd: [R, C] contiguous
  const void* grad_y;       // bwd: [R, C], rows grad_y_row_stride elements apart
  void* grad_x;             // bwd: [R, C], rows grad_x_row_stride elements apart (a column slice of a wider
                            // gradient, say)
  float* grad_history;      // bwd: [S, W-1, C] fp32 zero-filled by the caller (empty segments keep 0), or nullptr
  float* grad_w_partial;    // bwd: [run blocks, C, W]
  // nullptr, or [rows] int32: the conv reads x's rows through the plan's map (the conv of permute(x), without
  // materialising it): stream row r's input is x[src_pair[r] / topk], zeros where src_pair[r] is outside
  // [0, src_pairs) (mom_ops.permute's rule)
  const int* src_pair;
  int64_t src_pairs;  // x's rows times topk
  int topk;
  int64_t rows, x_row_stride, grad_y_row_stride, grad_x_row_stride;  // rows: the stream's (src_pair's when given)
  int run_rows;  // rows per run (one warp's), 1 .. kConvMaxRunRows (conv_run_rows)
  int channels, segments;
  bool cu_int64, activation, weight_f32;
  bool tiles_first;  // the grid's axes (conv_grid_of)
};

// This CTA's block of runs and channel tile.
__device__ __forceinline__ int64_t conv_run_block(const ConvParams& p) {
  return p.tiles_first ? blockIdx.y : blockIdx.x;
}
__device__ __forceinline__ int64_t conv_tile(const ConvParams& p) { return p.tiles_first ? blockIdx.x : blockIdx.y; }

// The MOM_OPS_CONV_* macros exist for scripts/conv_variants.cu (timing other shapes); the build uses the defaults.
#ifndef MOM_OPS_CONV_VEC
#define MOM_OPS_CONV_VEC 4
#endif
#ifndef MOM_OPS_CONV_WARPS
#define MOM_OPS_CONV_WARPS 8
#endif
#ifndef MOM_OPS_CONV_MAX_RUN_ROWS
#define MOM_OPS_CONV_MAX_RUN_ROWS 256
#endif
#ifndef MOM_OPS_CONV_FWD_CHUNK
#define MOM_OPS_CONV_FWD_CHUNK 8
#endif
#ifndef MOM_OPS_CONV_BWD_CHUNK
#define MOM_OPS_CONV_BWD_CHUNK 3
#endif
#ifndef MOM_OPS_CONV_TILES_FIRST
#define MOM_OPS_CONV_TILES_FIRST 1
#endif
constexpr int kConvVec = MOM_OPS_CONV_VEC;      // channels per thread on the vector path
constexpr int kConvWarps = MOM_OPS_CONV_WARPS;  // runs per CTA (one per warp)
constexpr int kConvMaxRunRows = MOM_OPS_CONV_MAX_RUN_ROWS;  // the longest run (the warps' row tables' size)
constexpr int kConvMinRunRows = 32;  // conv_run_rows' shortest: a run re-reads W-1 rows past its end (bwd)
constexpr int kConvThreads = kConvWarps * 32;
constexpr int kConvFwdChunk = MOM_OPS_CONV_FWD_CHUNK;  // rows whose loads are issued together
// bwd: x and grad_y rows, this chunk's and the next one's in registers (4 rows spilled 32 B at bf16's 128 registers
// and ncu put 35% of the bwd's samples on the spill stores; 3 rows fit; fp32 rows are twice the registers: 2).
constexpr int kConvBwdChunk = MOM_OPS_CONV_BWD_CHUNK;
template <typename T>
constexpr int kConvBwdChunkOf = sizeof(T) >= 4 && kConvBwdChunk > 2 ? 2 : kConvBwdChunk;
// Grid axes: channel tiles (32 kVec channels) along x and blocks of kConvWarps runs along y (tiles_first, the
// default kConvTilesFirst), so that the CTAs the scheduler starts together read whole rows, or the other way round.
// Measured on the H200 in the layer's T2K step (session 34): fwd 61.7 -> 59.2 us, bwd 126.2 -> 123.9 us per call.
constexpr bool kConvTilesFirst = MOM_OPS_CONV_TILES_FIRST;

// Blocks of kConvWarps runs of run_rows rows that cover `rows` rows (one CTA each per channel tile).
__host__ __device__ constexpr int64_t conv_run_blocks(int64_t rows, int run_rows) {
  return (rows + int64_t(run_rows) * kConvWarps - 1) / (int64_t(run_rows) * kConvWarps);
}

// Rows per run for `rows` rows in `tiles` channel tiles on `slots` resident CTAs (SMs x CTAs per SM): the fewest
// whole waves of CTAs with runs of at most kConvMaxRunRows rows (a multiple of 8, at least kConvMinRunRows). A
// partly filled last wave costs more than longer runs: H200, bwd at R = 32768 (8 tiles, 264 slots) took 73 us in
// 64-row runs (1.9 waves) and 65 us in 128-row runs (one wave); csrc/conv/NOTES.md.
inline int conv_run_rows(int64_t rows, int64_t tiles, int64_t slots) {
  const int64_t runs_per_wave = (slots / tiles > 1 ? slots / tiles : 1) * kConvWarps;
  const int64_t waves = (rows + runs_per_wave * kConvMaxRunRows - 1) / (runs_per_wave * kConvMaxRunRows);
  int64_t run = (rows + waves * runs_per_wave - 1) / (waves * runs_per_wave);
  run = (run + 7) / 8 * 8;
  return int(run < kConvMinRunRows ? kConvMinRunRows : (run > kConvMaxRunRows ? kConvMaxRunRows : run));
}
__host__ __device__ inline dim3 conv_grid_of(unsigned run_blocks, unsigned tiles, bool tiles_first) {
  return tiles_first ? dim3(tiles, run_blocks) : dim3(run_blocks, tiles);
}

// kVec elements of T as loaded: kVec * sizeof(T) bytes (16 for fp32, 8 for bf16/fp16 with kVec = 4), or one
// element on the scalar path. Unpacked to fp32 by the common 16-byte helpers (unused words are zeros).
template <typename T, int kVec>
struct ConvPacket {
  static constexpr int kBytes = kVec * int(sizeof(T));
  static_assert(kVec == 1 || kBytes == 8 || kBytes == 16, "ConvPacket: one element, 8 or 16 bytes");
  using Storage = std::conditional_t<kVec == 1, T, std::conditional_t<kBytes == 16, uint4, uint2>>;
  Storage v;

  __device__ __forceinline__ void load(const T* p) { v = *reinterpret_cast<const Storage*>(p); }
  __device__ __forceinline__ void zero() {
    if constexpr (kVec == 1) {
      v = T(0.f);
    } else {
      v = Storage{};
    }
  }
  __device__ __forceinline__ float at(int e) const {
    if constexpr (kVec == 1) {
      return to_float(v);
    } else if constexpr (kBytes == 16) {
      return unpack_element<T>(v, e);
    } else {
      return unpack_element<T>(make_uint4(v.x, v.y, 0u, 0u), e);
    }
  }
};

template <typename T, int kVec>
__device__ __forceinline__ void conv_store(T* p, const float (&v)[kVec]) {
  constexpr int kBytes = kVec * int(sizeof(T));
  if constexpr (kVec == 1) {
    *p = T(v[0]);
  } else if constexpr (kBytes == 16) {
    __stcs(reinterpret_cast<uint4*>(p), pack_elements<T, kVec>(v));  // streaming: written once
  } else {
    float padded[2 * kVec] = {};  // the first 8 bytes of a 16-byte pack
#pragma unroll
    for (int e = 0; e < kVec; ++e) padded[e] = v[e];
    const uint4 u = pack_elements<T, 2 * kVec>(padded);
    __stcs(reinterpret_cast<uint2*>(p), make_uint2(u.x, u.y));
  }
}

// cu_seqlens[i] clamped to [0, R]: bad values never lead out of bounds.
__device__ __forceinline__ int64_t conv_cu(const ConvParams& p, int i) {
  const int64_t v = p.cu_int64 ? static_cast<const int64_t*>(p.cu_seqlens)[i]
                               : int64_t(static_cast<const int*>(p.cu_seqlens)[i]);
  return v < 0 ? 0 : (v > p.rows ? p.rows : v);
}

// The segment s of a row: rows [a, b). s == S (segments) for rows past cu_seqlens[-1]; then b never ends.
struct ConvSegment {
  int s;
  int64_t a, b;
};

constexpr int64_t kConvNoEnd = INT64_MAX;

// The segment holding row r: the last s with cu[s] <= r (skips empty segments), by binary search.
__device__ __forceinline__ ConvSegment conv_find_segment(const ConvParams& p, int64_t r) {
  int lo = 0, hi = p.segments + 1;  // cu[lo] <= r (cu[0] = 0) and (hi == S + 1 or cu[hi] > r)
  while (hi - lo > 1) {
    const int mid = lo + (hi - lo) / 2;  // (lo + hi wraps past 2^30 segments)
    if (conv_cu(p, mid) <= r) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  if (lo >= p.segments) return {p.segments, r, kConvNoEnd};
  const int64_t a = conv_cu(p, lo);
  return {lo, a < r ? a : r, conv_cu(p, lo + 1)};
}

// The segment after `seg` that holds row r (>= seg.b): skips the segments that end at or before r.
__device__ __forceinline__ ConvSegment conv_next_segment(const ConvParams& p, const ConvSegment& seg, int64_t r) {
  int s = seg.s + 1;
  while (s < p.segments && conv_cu(p, s + 1) <= r) ++s;
  if (s >= p.segments) return {p.segments, r, kConvNoEnd};
  const int64_t a = conv_cu(p, s);
  return {s, a < r ? a : r, conv_cu(p, s + 1)};
}

// x's row behind stream row j: j, or through src_pair its token (-1: a zero row).
__device__ __forceinline__ int64_t conv_x_row(const ConvParams& p, int64_t j) {
  if (p.src_pair == nullptr) return j;
  const int pair = p.src_pair[j];
  return pair >= 0 && pair < p.src_pairs ? pair / p.topk : -1;
}

// With src_pair, a warp's x rows for its run (and the bwd's W-1 rows past it: n rows in all) in shared memory: row
// r0 + i of the stream reads x row xrow[i] (one division per row and warp, not per thread and load). Built by all 32
// lanes (before any lane leaves); nullptr without src_pair.
template <int kRows>
__device__ __forceinline__ const int* conv_x_row_table(const ConvParams& p, int (&table)[kRows], int n, int64_t r0,
                                                       int lane) {
  if (p.src_pair == nullptr) return nullptr;
  for (int i = lane; i < n; i += 32) table[i] = r0 + i < p.rows ? int(conv_x_row(p, r0 + i)) : -1;
  __syncwarp();
  return table;
}

// The window of row r: win[k] = in(r - (W-1) + k) for k < W-1 (x rows of the segment, else history or 0).
template <typename T, int kVec, int kW>
__device__ __forceinline__ void conv_fill_window(const ConvParams& p, const T* x, int64_t c0, const ConvSegment& seg,
                                                 int64_t r, float (&win)[kW > 1 ? kW - 1 : 1][kVec]) {
#pragma unroll
  for (int k = 0; k < kW - 1; ++k) {
    const int64_t j = r - (kW - 1) + k;
    if (j >= seg.a) {
      ConvPacket<T, kVec> v;
      const int64_t xr = conv_x_row(p, j);  // j may lie before the run: not in the warp's row table
      if (xr >= 0) {
        v.load(x + xr * p.x_row_stride);
      } else {
        v.zero();
      }
#pragma unroll
      for (int e = 0; e < kVec; ++e) win[k][e] = v.at(e);
    } else if (p.history != nullptr) {
      const float* h = p.history + (int64_t(seg.s) * (kW - 1) + (j - seg.a + kW - 1)) * p.channels + c0;
#pragma unroll
      for (int e = 0; e < kVec; ++e) win[k][e] = h[e];
    } else {
#pragma unroll
      for (int e = 0; e < kVec; ++e) win[k][e] = 0.f;
    }
  }
}

// Rows base .. base + kChunk - 1 of a [R, C] tensor (zeros at and past `end`): independent loads, all in flight.
template <typename T, int kVec, int kChunk>
__device__ __forceinline__ void conv_load_chunk(const T* src, int64_t row_stride, int64_t base, int64_t end,
                                                ConvPacket<T, kVec> (&in)[kChunk]) {
#pragma unroll
  for (int i = 0; i < kChunk; ++i) {
    if (base + i < end) {
      in[i].load(src + (base + i) * row_stride);
    } else {
      in[i].zero();
    }
  }
}

// x's rows for stream rows base .. base + kChunk - 1: conv_load_chunk, or through the warp's row table (xrow[i]: the
// x row of stream row r0 + i, -1 for zeros) where the conv reads permute(x).
template <typename T, int kVec, int kChunk>
__device__ __forceinline__ void conv_load_x_chunk(const T* x, int64_t row_stride, const int* xrow, int64_t r0,
                                                  int64_t base, int64_t end, ConvPacket<T, kVec> (&in)[kChunk]) {
  if (xrow == nullptr) {
    conv_load_chunk(x, row_stride, base, end, in);
    return;
  }
#pragma unroll
  for (int i = 0; i < kChunk; ++i) {
    const int t = base + i < end ? xrow[base + i - r0] : -1;
    if (t >= 0) {
      in[i].load(x + t * row_stride);
    } else {
      in[i].zero();
    }
  }
}

// dst = src, packet by packet (the double-buffered walks hand the next chunk over; register moves).
template <typename T, int kVec, int kChunk>
__device__ __forceinline__ void conv_copy_chunk(const ConvPacket<T, kVec> (&src)[kChunk],
                                                ConvPacket<T, kVec> (&dst)[kChunk]) {
#pragma unroll
  for (int i = 0; i < kChunk; ++i) dst[i] = src[i];
}

// The thread's kVec channels of weight [C, W] in fp32 (stored in fp32 or in x's dtype T).
template <typename T, int kVec, int kW>
__device__ __forceinline__ void conv_load_weight(const ConvParams& p, int64_t c0, float (&w)[kW][kVec]) {
  const float* w32 = static_cast<const float*>(p.weight);
  const T* wt = static_cast<const T*>(p.weight);
#pragma unroll
  for (int e = 0; e < kVec; ++e)
#pragma unroll
    for (int k = 0; k < kW; ++k) {
      const int64_t i = (c0 + e) * kW + k;
      w[k][e] = p.weight_f32 ? __ldg(w32 + i) : to_float(wt[i]);
    }
}

// pre = sum_k w[k] in(r - (W-1) + k), oldest input first (the CPU kernel sums newest first: rounding only).
template <int kVec, int kW>
__device__ __forceinline__ float conv_pre(const float (&w)[kW][kVec], const float (&win)[kW > 1 ? kW - 1 : 1][kVec],
                                          float xr, int e) {
  float acc = 0.f;
#pragma unroll
  for (int k = 0; k < kW - 1; ++k) acc = fmaf(w[k][e], win[k][e], acc);
  return fmaf(w[kW - 1][e], xr, acc);
}

template <int kVec, int kW>
__device__ __forceinline__ void conv_shift_window(float (&win)[kW > 1 ? kW - 1 : 1][kVec], const float (&xr)[kVec]) {
  if constexpr (kW > 1) {
#pragma unroll
    for (int k = 0; k < kW - 2; ++k)
#pragma unroll
      for (int e = 0; e < kVec; ++e) win[k][e] = win[k + 1][e];
#pragma unroll
    for (int e = 0; e < kVec; ++e) win[kW - 2][e] = xr[e];
  }
}

// sigmoid on the approximate ex2 and rcp, denormals flushed (common/fast_math.cuh): an IEEE division is a
// ~10-instruction call, and __expf / __fdividef add range checks (16 FSETP and 32 predicated multiplies per 4 rows of
// the bwd's check-free chunk: 436 -> 376 instructions; the fwd's 8-row chunk 450 -> 350). 1 + e^-z = inf (z < -88)
// gives 0, as it should.
__device__ __forceinline__ float conv_sigmoid(float z) { return fast_sigmoid(z); }

// One row of the forward walk inside a segment: y = silu(pre) (or pre), then the window moves on by xr.
template <typename T, int kVec, int kW, bool kActivation>
__device__ __forceinline__ void conv_fwd_row(const float (&w)[kW][kVec], float (&win)[kW > 1 ? kW - 1 : 1][kVec],
                                             const ConvPacket<T, kVec>& in, T* y_row) {
  float out[kVec], xr[kVec];
#pragma unroll
  for (int e = 0; e < kVec; ++e) {
    xr[e] = in.at(e);
    const float pre = conv_pre<kVec, kW>(w, win, xr[e], e);
    out[e] = kActivation ? pre * conv_sigmoid(pre) : pre;
  }
  conv_shift_window<kVec, kW>(win, xr);
  conv_store<T, kVec>(y_row, out);
}

// The rows of a chunk that lies inside one segment and the run: no per-row checks (the common case).
template <typename T, int kVec, int kW, int kChunk, bool kActivation>
__device__ __forceinline__ void conv_fwd_chunk(const float (&w)[kW][kVec], float (&win)[kW > 1 ? kW - 1 : 1][kVec],
                                               const ConvPacket<T, kVec> (&in)[kChunk], T* y_row, int64_t row_stride) {
#pragma unroll
  for (int i = 0; i < kChunk; ++i) conv_fwd_row<T, kVec, kW, kActivation>(w, win, in[i], y_row + i * row_stride);
}

template <typename T, int kVec, int kW>
__global__ void __launch_bounds__(kConvThreads) segment_conv_fwd_kernel(ConvParams p) {
  __shared__ int s_xrow[kConvWarps][kConvMaxRunRows];  // with src_pair: the warp's x rows
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t c0 = (conv_tile(p) * 32 + lane) * kVec;
  const int64_t r0 = (conv_run_block(p) * kConvWarps + warp) * p.run_rows;
  const int* xrow = conv_x_row_table(p, s_xrow[warp], p.run_rows, r0, lane);
  if (c0 >= p.channels || r0 >= p.rows) return;
  const int64_t r1 = r0 + p.run_rows < p.rows ? r0 + p.run_rows : p.rows;
  const T* x = static_cast<const T*>(p.x) + c0;
  T* y = static_cast<T*>(p.y) + c0;
  float w[kW][kVec], win[kW > 1 ? kW - 1 : 1][kVec];
  conv_load_weight<T, kVec, kW>(p, c0, w);
  // Two chunks of rows in registers: the next chunk's loads are in flight while this one is walked.
  ConvPacket<T, kVec> in[kConvFwdChunk], next[kConvFwdChunk];
  conv_load_x_chunk(x, p.x_row_stride, xrow, r0, r0, r1, in);  // the first rows' loads overlap the search's
  ConvSegment seg = conv_find_segment(p, r0);
  if (seg.s < p.segments) conv_fill_window<T, kVec, kW>(p, x, c0, seg, r0, win);
  for (int64_t base = r0; base < r1; base += kConvFwdChunk) {
    if (base > r0) conv_copy_chunk(next, in);
    if (base + kConvFwdChunk < r1) conv_load_x_chunk(x, p.x_row_stride, xrow, r0, base + kConvFwdChunk, r1, next);
    if (seg.s < p.segments && base + kConvFwdChunk <= seg.b && base + kConvFwdChunk <= r1) {
      if (p.activation) {
        conv_fwd_chunk<T, kVec, kW, kConvFwdChunk, true>(w, win, in, y + base * p.channels, p.channels);
      } else {
        conv_fwd_chunk<T, kVec, kW, kConvFwdChunk, false>(w, win, in, y + base * p.channels, p.channels);
      }
      continue;
    }
#pragma unroll
    for (int i = 0; i < kConvFwdChunk; ++i) {  // a chunk with a segment start, the run's end or cu_seqlens[-1]
      const int64_t r = base + i;
      if (r >= r1) break;
      if (r >= seg.b) {  // a new segment starts at r: its window comes from the history
        seg = conv_next_segment(p, seg, r);
        if (seg.s < p.segments) conv_fill_window<T, kVec, kW>(p, x, c0, seg, r, win);
      }
      if (seg.s >= p.segments) {  // past cu_seqlens[-1]
        float zero[kVec];
#pragma unroll
        for (int e = 0; e < kVec; ++e) zero[e] = 0.f;
        conv_store<T, kVec>(y + r * p.channels, zero);
      } else if (p.activation) {
        conv_fwd_row<T, kVec, kW, true>(w, win, in[i], y + r * p.channels);
      } else {
        conv_fwd_row<T, kVec, kW, false>(w, win, in[i], y + r * p.channels);
      }
    }
  }
}

// One row of the backward walk inside a segment: dpre = grad_y * silu'(pre) goes into the pending sums acc and, for
// a row the thread owns, the grad_w sums; the window moves on. acc[0] is then complete: the caller emits it and
// shifts acc (conv_shift_acc).
template <typename T, int kVec, int kW, bool kActivation>
__device__ __forceinline__ void conv_bwd_row(const float (&w)[kW][kVec], float (&win)[kW > 1 ? kW - 1 : 1][kVec],
                                             float (&acc)[kW][kVec], float (&gw)[kW][kVec],
                                             const ConvPacket<T, kVec>& in, const ConvPacket<T, kVec>& din,
                                             bool owned) {
  float xr[kVec];
#pragma unroll
  for (int e = 0; e < kVec; ++e) {
    xr[e] = in.at(e);
    const float pre = conv_pre<kVec, kW>(w, win, xr[e], e);
    float dp = din.at(e);
    if constexpr (kActivation) {
      const float sig = conv_sigmoid(pre);
      dp *= sig * (1.f + pre * (1.f - sig));
    }
    if (owned) {  // grad_w counts each row once: in the run that owns it
#pragma unroll
      for (int k = 0; k < kW - 1; ++k) gw[k][e] = fmaf(dp, win[k][e], gw[k][e]);
      gw[kW - 1][e] = fmaf(dp, xr[e], gw[kW - 1][e]);
    }
#pragma unroll
    for (int k = 0; k < kW; ++k) acc[k][e] = fmaf(w[k][e], dp, acc[k][e]);
  }
  conv_shift_window<kVec, kW>(win, xr);
}

template <int kVec, int kW>
__device__ __forceinline__ void conv_shift_acc(float (&acc)[kW][kVec]) {
#pragma unroll
  for (int k = 0; k < kW - 1; ++k)
#pragma unroll
    for (int e = 0; e < kVec; ++e) acc[k][e] = acc[k + 1][e];
#pragma unroll
  for (int e = 0; e < kVec; ++e) acc[kW - 1][e] = 0.f;
}

// The rows of a chunk inside one segment, all owned, whose finished rows r - (W-1) are all the thread's grad_x rows
// of that segment: no per-row checks (the common case). gx_row: grad_x's row base - (W-1) at the thread's channels.
template <typename T, int kVec, int kW, int kChunk, bool kActivation>
__device__ __forceinline__ void conv_bwd_chunk(const float (&w)[kW][kVec], float (&win)[kW > 1 ? kW - 1 : 1][kVec],
                                               float (&acc)[kW][kVec], float (&gw)[kW][kVec],
                                               const ConvPacket<T, kVec> (&in)[kChunk],
                                               const ConvPacket<T, kVec> (&din)[kChunk], T* gx_row,
                                               int64_t row_stride) {
#pragma unroll
  for (int i = 0; i < kChunk; ++i) {
    conv_bwd_row<T, kVec, kW, kActivation>(w, win, acc, gw, in[i], din[i], true);
    conv_store<T, kVec>(gx_row + i * row_stride, acc[0]);
    conv_shift_acc<kVec, kW>(acc);
  }
}

// The rows a bwd thread writes: grad_x of rows [r0, r1), grad_history of the segments that start in [r0, r1).
struct ConvOwned {
  int64_t r0, r1;
};

// Emits the finished gradient g of virtual row j of segment seg: grad_x[j] (j >= seg.a) or grad_history[s, t].
template <typename T, int kVec, int kW>
__device__ __forceinline__ void conv_emit(const ConvParams& p, const ConvOwned& own, const ConvSegment& seg, int64_t c0,
                                          int64_t j, const float (&g)[kVec]) {
  if (j >= seg.a) {
    if (j >= own.r0 && j < own.r1) conv_store<T, kVec>(static_cast<T*>(p.grad_x) + j * p.grad_x_row_stride + c0, g);
  } else if (p.grad_history != nullptr && seg.a >= own.r0 && seg.a < own.r1) {
    float* h = p.grad_history + (int64_t(seg.s) * (kW - 1) + (j - seg.a + kW - 1)) * p.channels + c0;
#pragma unroll
    for (int e = 0; e < kVec; ++e) h[e] = g[e];
  }
}

// At the end b of a segment the pending sums acc[k] (virtual rows b - (W-1) + k, k < W-1) are complete.
template <typename T, int kVec, int kW>
__device__ __forceinline__ void conv_flush(const ConvParams& p, const ConvOwned& own, const ConvSegment& seg,
                                           int64_t c0, const float (&acc)[kW][kVec]) {
#pragma unroll
  for (int k = 0; k < kW - 1; ++k) conv_emit<T, kVec, kW>(p, own, seg, c0, seg.b - (kW - 1) + k, acc[k]);
}

template <typename T, int kVec, int kW>
__global__ void __launch_bounds__(kConvThreads, kW <= 4 ? 2 : 1) segment_conv_bwd_kernel(ConvParams p) {
  __shared__ float s_gw[32][kW * kVec + 1];  // the CTA's grad_w sums per lane (+1: no bank conflicts)
  __shared__ int s_xrow[kConvWarps][kConvMaxRunRows + kW - 1];  // with src_pair: the warp's x rows (+ W-1 past)
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t c0 = (conv_tile(p) * 32 + lane) * kVec;
  const int64_t r0 = (conv_run_block(p) * kConvWarps + warp) * p.run_rows;
  const int* xrow = conv_x_row_table(p, s_xrow[warp], p.run_rows + kW - 1, r0, lane);
  float gw[kW][kVec];  // this thread's grad_w sums over its rows
#pragma unroll
  for (int k = 0; k < kW; ++k)
#pragma unroll
    for (int e = 0; e < kVec; ++e) gw[k][e] = 0.f;

  if (c0 < p.channels && r0 < p.rows) {  // no early return: the CTA meets at barriers below
    constexpr int kChunk = kConvBwdChunkOf<T>;
    const ConvOwned own{r0, r0 + p.run_rows < p.rows ? r0 + p.run_rows : p.rows};
    // dpre of the W-1 rows past the run feed the run's last grad_x rows.
    const int64_t walk_end = own.r1 + (kW - 1) < p.rows ? own.r1 + (kW - 1) : p.rows;
    const T* x = static_cast<const T*>(p.x) + c0;
    const T* gy = static_cast<const T*>(p.grad_y) + c0;
    float w[kW][kVec], win[kW > 1 ? kW - 1 : 1][kVec];
    float acc[kW][kVec];  // acc[k]: pending grad of virtual row r - (W-1) + k; acc[W-1] (row r's) starts at 0
#pragma unroll
    for (int k = 0; k < kW; ++k)
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[k][e] = 0.f;
    conv_load_weight<T, kVec, kW>(p, c0, w);
    // Two chunks of x and grad_y rows in registers: the next chunk's loads fly while this one is walked.
    ConvPacket<T, kVec> in[kChunk], din[kChunk], next_in[kChunk], next_din[kChunk];
    conv_load_x_chunk(x, p.x_row_stride, xrow, r0, r0, walk_end, in);  // the first loads overlap the search's
    conv_load_chunk(gy, p.grad_y_row_stride, r0, walk_end, din);
    ConvSegment seg = conv_find_segment(p, r0);
    if (seg.s < p.segments) conv_fill_window<T, kVec, kW>(p, x, c0, seg, r0, win);
    bool live = true;
    for (int64_t base = r0; base < walk_end && live; base += kChunk) {
      if (base > r0) {
        conv_copy_chunk(next_in, in);
        conv_copy_chunk(next_din, din);
      }
      if (base + kChunk < walk_end) {
        conv_load_x_chunk(x, p.x_row_stride, xrow, r0, base + kChunk, walk_end, next_in);
        conv_load_chunk(gy, p.grad_y_row_stride, base + kChunk, walk_end, next_din);
      }
      if (seg.s < p.segments && base + kChunk <= seg.b && base + kChunk <= own.r1 &&
          base - (kW - 1) >= seg.a && base - (kW - 1) >= own.r0) {
        T* gx_row = static_cast<T*>(p.grad_x) + (base - (kW - 1)) * p.grad_x_row_stride + c0;
        if (p.activation) {
          conv_bwd_chunk<T, kVec, kW, kChunk, true>(w, win, acc, gw, in, din, gx_row, p.grad_x_row_stride);
        } else {
          conv_bwd_chunk<T, kVec, kW, kChunk, false>(w, win, acc, gw, in, din, gx_row, p.grad_x_row_stride);
        }
        continue;
      }
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {  // a chunk with a segment boundary or the run's first / last rows
        const int64_t r = base + i;
        if (r >= walk_end || !live) break;
        if (r >= seg.b) {  // seg ended at seg.b <= r: its pending sums are complete
          if (seg.s < p.segments) conv_flush<T, kVec, kW>(p, own, seg, c0, acc);
          if (r >= own.r1) {  // past the run: nothing more of ours
            live = false;
            break;
          }
          seg = conv_next_segment(p, seg, r);
          if (seg.s < p.segments) conv_fill_window<T, kVec, kW>(p, x, c0, seg, r, win);
#pragma unroll
          for (int k = 0; k < kW; ++k)
#pragma unroll
            for (int e = 0; e < kVec; ++e) acc[k][e] = 0.f;  // the history rows' sums start here
        }
        if (seg.s >= p.segments) {  // past cu_seqlens[-1]: zero grad, and no later row is in a segment
          if (r >= own.r1) {
            live = false;
            break;
          }
          float zero[kVec];
#pragma unroll
          for (int e = 0; e < kVec; ++e) zero[e] = 0.f;
          conv_store<T, kVec>(static_cast<T*>(p.grad_x) + r * p.grad_x_row_stride + c0, zero);
          continue;
        }
        if (p.activation) {
          conv_bwd_row<T, kVec, kW, true>(w, win, acc, gw, in[i], din[i], r < own.r1);
        } else {
          conv_bwd_row<T, kVec, kW, false>(w, win, acc, gw, in[i], din[i], r < own.r1);
        }
        conv_emit<T, kVec, kW>(p, own, seg, c0, r - (kW - 1), acc[0]);  // its last term was row r's
        conv_shift_acc<kVec, kW>(acc);
      }
    }
    // The walk stopped at walk_end: a segment ending exactly there still has its pending sums.
    if (live && seg.s < p.segments && seg.b <= walk_end) conv_flush<T, kVec, kW>(p, own, seg, c0, acc);
  }

  // grad_w partial of this CTA: the warps' sums added in warp order (fixed order: deterministic).
  for (int wi = 0; wi < kConvWarps; ++wi) {
    if (warp == wi) {
#pragma unroll
      for (int k = 0; k < kW; ++k)
#pragma unroll
        for (int e = 0; e < kVec; ++e) s_gw[lane][k * kVec + e] = (wi == 0 ? 0.f : s_gw[lane][k * kVec + e]) + gw[k][e];
    }
    __syncthreads();
  }
  // partial [run blocks, C, W]: the tile's 32 * kVec channels are consecutive, so i walks memory in order.
  const int64_t tile_c0 = conv_tile(p) * 32 * kVec;
  float* out = p.grad_w_partial + (conv_run_block(p) * p.channels + tile_c0) * kW;
  for (int i = threadIdx.x; i < 32 * kVec * kW; i += kConvThreads) {
    const int l = i / (kVec * kW), e = i / kW % kVec, k = i % kW;
    if (tile_c0 + l * kVec + e < p.channels) out[i] = s_gw[l][k * kVec + e];
  }
}

}  // namespace mom_ops
