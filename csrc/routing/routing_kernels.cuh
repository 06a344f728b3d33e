// Routing kernels: the top-k router, the memory-major plan (a stable counting sort), permute / unpermute.
// Torch-free: each kernel takes a POD params struct filled by routing_cuda.cu.
//
// The plan needs no sort by (segment, time): tokens are ordered by sequence then time, so ordering pairs by
// (memory, token) is the memory-major / batch / time order of DESIGN.md §1. The row of pair (n, m) is
//   row = sum_{m' < m} total[m'] + #{tokens before n that chose m},
// an exclusive scan over tokens per memory, done in tiles: the router kernel counts each tile's pairs per
// memory, the plan kernel adds the counts of earlier tiles and ranks the tile's tokens with warp ballots.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/vec.cuh"

namespace mom_ops {

constexpr int kRouteTile = 512;  // tokens per CTA in the router and plan kernels (one per thread)

struct RouteParams {
  const void* logits;         // [N, M] bf16 / fp16 / fp32, contiguous
  const bool* mask;           // [N] or nullptr
  const void* cu_in;          // [B + 1] int32 / int64, or nullptr: sequences of seqlen tokens
  bool cu_in_is_int64;
  int num_tokens, num_memories, topk, batch, seqlen, chunk_size, num_tiles, max_chunks;
  float* weights;             // [N, k]
  int* memory_ids;            // [N, k]
  int* dst_row;               // [N, k]
  int* src_pair;              // [N * k]
  int* seg_cu;                // [M * B + 1]
  int* chunk_indices;         // [max_chunks, 2]
  int* tile_counts;           // workspace [num_tiles, M]
  int* chunk_offsets;         // workspace [M * B + 1]
};

__device__ __forceinline__ int64_t load_index(const void* p, bool is_int64, int64_t i) {
  return is_int64 ? static_cast<const int64_t*>(p)[i] : static_cast<const int*>(p)[i];
}

// First sequence b whose start is >= n (sequence starts: cu_in[b], or b * seqlen).
__device__ __forceinline__ int first_sequence_at_or_after(const RouteParams& p, int64_t n) {
  if (p.cu_in == nullptr) return p.seqlen > 0 ? int((n + p.seqlen - 1) / p.seqlen) : p.batch;
  int lo = 0, hi = p.batch;  // search cu_in[0, B)
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (load_index(p.cu_in, p.cu_in_is_int64, mid) < n) lo = mid + 1; else hi = mid;
  }
  return lo;
}

__device__ __forceinline__ int64_t sequence_start(const RouteParams& p, int b) {
  return p.cu_in == nullptr ? int64_t(b) * p.seqlen : load_index(p.cu_in, p.cu_in_is_int64, b);
}

// Router: the k largest logits (ties to the lower index); weights = softmax over them in fp64, rounded once to
// fp32 (equal to the full fp32-input softmax renormalised over the kept entries, to within 1 ulp). Infinite top
// logit: +inf shares the weight among the kept +inf entries, all -inf gives equal weights. A NaN anywhere in a
// row gives NaN weights. Counts the tile's pairs per memory.
template <typename T>
__global__ void __launch_bounds__(kRouteTile) router_kernel(RouteParams p) {
  __shared__ int s_count[64];
  const int tid = threadIdx.x;
  if (tid < p.num_memories) s_count[tid] = 0;
  // seg_cu = 0 before plan_kernel writes it: with no tokens, or a cu_seqlens out of order or not from 0 (which CUDA
  // cannot refuse without a sync), some entries are not written there, and they must not be uninitialised memory
  if (blockIdx.x == 0)
    for (int s = tid; s <= p.num_memories * p.batch; s += kRouteTile) p.seg_cu[s] = 0;
  __syncthreads();
  const int64_t n = int64_t(blockIdx.x) * kRouteTile + tid;
  const int M = p.num_memories, K = p.topk;
  if (n < p.num_tokens) {
    const T* row = static_cast<const T*>(p.logits) + n * M;
    if (p.mask != nullptr && !p.mask[n]) {
      for (int j = 0; j < K; ++j) {  // a masked token routes nowhere
        p.weights[n * K + j] = 0.f;
        p.memory_ids[n * K + j] = -1;
        p.dst_row[n * K + j] = -1;
      }
    } else {
      bool has_nan = false;
      uint64_t taken = 0;
      for (int j = 0; j < K; ++j) {
        int best = -1;
        float best_l = 0.f;
        for (int m = 0; m < M; ++m) {
          if ((taken >> m) & 1) continue;
          const float l = to_float(row[m]);
          has_nan |= isnan(l);
          if (best < 0 || l > best_l) {
            best = m;
            best_l = l;
          }
        }
        taken |= uint64_t(1) << best;
        p.memory_ids[n * K + j] = best;
        atomicAdd(&s_count[best], 1);
      }
      const double top = to_float(row[p.memory_ids[n * K]]);
      auto e_of = [&](int j) {  // exp(l_j - top), with the infinity rules
        const double l = to_float(row[p.memory_ids[n * K + j]]);
        if (isinf(top)) return top > 0 ? double(l == top) : 1.0;
        return exp(l - top);
      };
      double sum = 0;
      for (int j = 0; j < K; ++j) sum += e_of(j);
      for (int j = 0; j < K; ++j) p.weights[n * K + j] = has_nan ? NAN : float(e_of(j) / sum);
    }
  }
  __syncthreads();
  if (tid < M) p.tile_counts[int64_t(blockIdx.x) * M + tid] = s_count[tid];
}

// Plan: rows of the tile's pairs, the segment starts of the sequences that begin in the tile, -1 in unused rows.
__global__ void __launch_bounds__(kRouteTile) plan_kernel(RouteParams p) {
  constexpr int kWarps = kRouteTile / 32;
  __shared__ int s_tile_base[64], s_total[64], s_mem_base[65], s_warp[kWarps];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, tile = blockIdx.x;
  const int M = p.num_memories, K = p.topk, B = p.batch;
  if (tid < M) s_tile_base[tid] = s_total[tid] = 0;
  __syncthreads();
  for (int i = tid; i < p.num_tiles * M; i += kRouteTile) {
    const int c = p.tile_counts[i];
    if (i / M < tile) atomicAdd(&s_tile_base[i % M], c);
    atomicAdd(&s_total[i % M], c);
  }
  __syncthreads();
  if (tid == 0) {
    s_mem_base[0] = 0;
    for (int m = 0; m < M; ++m) s_mem_base[m + 1] = s_mem_base[m] + s_total[m];
  }
  __syncthreads();

  const int64_t n = int64_t(tile) * kRouteTile + tid;
  const bool in_range = n < p.num_tokens;
  uint64_t chosen = 0;
  if (in_range) {
    for (int j = 0; j < K; ++j) {
      const int m = p.memory_ids[n * K + j];
      if (m >= 0) chosen |= uint64_t(1) << m;
    }
  }
  // Sequences [b_begin, b_end) start at token n (several when some are empty).
  int b_begin = 0, b_end = 0;
  if (in_range) {
    b_begin = first_sequence_at_or_after(p, n);
    b_end = b_begin;
    while (b_end < B && sequence_start(p, b_end) == n) ++b_end;
  }
  for (int m = 0; m < M; ++m) {
    const bool flag = (chosen >> m) & 1;
    const unsigned ballot = __ballot_sync(0xffffffffu, flag);
    if (lane == 0) s_warp[warp] = __popc(ballot);
    __syncthreads();
    int before = __popc(ballot & ((1u << lane) - 1u));
    for (int w = 0; w < warp; ++w) before += s_warp[w];
    const int row = s_mem_base[m] + s_tile_base[m] + before;  // = cu of segment (m, b) when n starts b
    if (flag) {
      int j = 0;
      while (p.memory_ids[n * K + j] != m) ++j;
      p.dst_row[n * K + j] = row;
      p.src_pair[row] = int(n * K + j);
    }
    for (int b = b_begin; b < b_end; ++b) p.seg_cu[m * B + b] = row;
    __syncthreads();  // s_warp is reused by the next memory
  }
  const int routed = s_mem_base[M];
  if (tile == 0) {
    // Sequences that start at N (empty ones at the end) and the closing entry.
    for (int b = first_sequence_at_or_after(p, p.num_tokens) + tid; b < B; b += kRouteTile)
      for (int m = 0; m < M; ++m) p.seg_cu[m * B + b] = s_mem_base[m + 1];
    if (tid == 0) p.seg_cu[M * B] = routed;
  }
  // Rows past the routed ones (masked tokens) hold no pair: this tile clears its share of them.
  const int64_t rows_lo = max(int64_t(tile) * kRouteTile * K, int64_t(routed));
  const int64_t rows_hi = min(int64_t(tile + 1) * kRouteTile * K, int64_t(p.num_tokens) * K);
  for (int64_t r = rows_lo + tid; r < rows_hi; r += kRouteTile) p.src_pair[r] = -1;
}

// Chunk table: (segment, chunk) for every chunk of every segment in order, -1 padding. One CTA.
template <int kThreads>
__global__ void __launch_bounds__(kThreads) chunk_table_kernel(RouteParams p) {
  __shared__ int s_scan[kThreads];
  __shared__ int s_carry;
  const int tid = threadIdx.x, S = p.num_memories * p.batch, C = p.chunk_size;
  if (tid == 0) s_carry = 0;
  __syncthreads();
  // chunk_offsets[s] = chunks of segments before s (block-wide inclusive scan, kThreads segments at a time).
  for (int base = 0; base < S; base += kThreads) {
    const int s = base + tid;
    // (max 0: a cu_seqlens out of order, which CUDA cannot refuse without a sync, gives decreasing entries)
    const int64_t len = s < S ? int64_t(p.seg_cu[s + 1]) - p.seg_cu[s] : 0;  // (+ C - 1 in int wraps past 2^30 rows)
    const int chunks = int(max(int64_t(0), (len + C - 1) / C));
    s_scan[tid] = chunks;
    __syncthreads();
    for (int off = 1; off < kThreads; off *= 2) {
      const int add = tid >= off ? s_scan[tid - off] : 0;
      __syncthreads();
      s_scan[tid] += add;
      __syncthreads();
    }
    if (s < S) p.chunk_offsets[s + 1] = s_carry + s_scan[tid];
    __syncthreads();
    if (tid == kThreads - 1) s_carry += s_scan[tid];
    __syncthreads();
  }
  if (tid == 0) p.chunk_offsets[0] = 0;
  __syncthreads();  // makes the global chunk_offsets visible to the block
  const int total = p.chunk_offsets[S];
  for (int c = tid; c < p.max_chunks; c += kThreads) {
    int seg = -1, idx = -1;
    if (c < total) {
      int lo = 0, hi = S - 1;  // last segment whose first chunk is <= c
      while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (p.chunk_offsets[mid] <= c) lo = mid; else hi = mid - 1;
      }
      seg = lo;
      idx = c - p.chunk_offsets[lo];
    }
    p.chunk_indices[2 * c] = seg;
    p.chunk_indices[2 * c + 1] = idx;
  }
}

// ---------------------------------------------------------------- permute / unpermute

struct PermuteParams {
  const void* in;        // permute: x [N, D]; unpermute: y [R, D]; unpermute_bwd: grad_x [N, D]
  const void* other;     // unpermute_bwd: y [R, D]
  void* out;             // permute: y [R, D]; unpermute: x [N, D]; unpermute_bwd: grad_y [R, D]
  const int* dst_row;    // [N, k]
  const int* src_pair;   // [R]
  const float* weights;  // [N, k] or nullptr
  float* grad_weights;   // [N, k] or nullptr (unpermute_bwd)
  int64_t num_tokens, num_rows, dim;  // dim in elements
  int64_t in_row_stride;              // permute: elements between x's rows (a column slice of a wider x: more than dim)
  int topk;
};

// Zeroes one row of `vecs` kVec-vectors with the lanes of a warp.
template <typename T, int kVec>
__device__ __forceinline__ void zero_row(T* row, int64_t vecs, int lane) {
  Vec<T, kVec> zero;
#pragma unroll
  for (int e = 0; e < kVec; ++e) zero.v[e] = T(0.f);
  for (int64_t i = lane; i < vecs; i += 32) reinterpret_cast<Vec<T, kVec>*>(row)[i] = zero;
}

// y[dst_row[n, j]] = x[n]: warp w reads token w's row once and writes its k copies (so x is read once), and
// zeroes row w when that row holds no pair. Launch max(N, R) warps.
template <typename T, int kVec>
__global__ void permute_kernel(PermuteParams p) {
  using V = Vec<T, kVec>;
  const int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const int64_t vecs = p.dim / kVec;
  if (w < p.num_tokens) {
    const V* in = reinterpret_cast<const V*>(static_cast<const T*>(p.in) + w * p.in_row_stride);
    V* out = static_cast<V*>(p.out);
#pragma unroll 2
    for (int64_t i = lane; i < vecs; i += 32) {
      const V val = in[i];
      for (int j = 0; j < p.topk; ++j) {
        const int r = p.dst_row[w * p.topk + j];
        if (r >= 0 && r < p.num_rows) out[int64_t(r) * vecs + i] = val;
      }
    }
  }
  if (w < p.num_rows) {
    const int pair = p.src_pair[w];
    if (pair < 0 || pair >= p.num_tokens * p.topk) zero_row<T, kVec>(static_cast<T*>(p.out) + w * p.dim, vecs, lane);
  }
}

// x[n] = sum_j w[n, j] y[dst_row[n, j]] in fp32: one warp per token.
template <typename T, int kVec>
__global__ void unpermute_kernel(PermuteParams p) {
  using V = Vec<T, kVec>;
  const int64_t n = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (n >= p.num_tokens) return;
  const int64_t vecs = p.dim / kVec;
  const T* y = static_cast<const T*>(p.in);
  V* out = reinterpret_cast<V*>(static_cast<T*>(p.out) + n * p.dim);
#pragma unroll 2
  for (int64_t i = lane; i < vecs; i += 32) {
    float acc[kVec] = {};
    for (int j = 0; j < p.topk; ++j) {
      const int r = p.dst_row[n * p.topk + j];
      if (r < 0 || r >= p.num_rows) continue;
      const float w = p.weights != nullptr ? p.weights[n * p.topk + j] : 1.f;
      const V val = reinterpret_cast<const V*>(y + int64_t(r) * p.dim)[i];
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[e] += w * to_float(val.v[e]);
    }
    V res;
#pragma unroll
    for (int e = 0; e < kVec; ++e) res.v[e] = T(acc[e]);
    out[i] = res;
  }
}

// grad_y[r] = w[p] grad_x[p // k]; grad_weights[p] = <grad_x[p // k], y[r]>: one warp per row.
template <typename T, int kVec>
__global__ void unpermute_backward_kernel(PermuteParams p) {
  using V = Vec<T, kVec>;
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= p.num_rows) return;
  const int pair = p.src_pair[r];
  const int64_t vecs = p.dim / kVec;
  V* grad_y = reinterpret_cast<V*>(static_cast<T*>(p.out) + r * p.dim);
  if (pair < 0 || pair >= p.num_tokens * p.topk) {
    zero_row<T, kVec>(static_cast<T*>(p.out) + r * p.dim, vecs, lane);
    return;
  }
  const float w = p.weights != nullptr ? p.weights[pair] : 1.f;
  const V* gx = reinterpret_cast<const V*>(static_cast<const T*>(p.in) + int64_t(pair / p.topk) * p.dim);
  const V* y = reinterpret_cast<const V*>(static_cast<const T*>(p.other) + r * p.dim);
  float dot = 0.f;
#pragma unroll 2
  for (int64_t i = lane; i < vecs; i += 32) {
    const V g = gx[i];
    V res;
#pragma unroll
    for (int e = 0; e < kVec; ++e) res.v[e] = T(w * to_float(g.v[e]));
    grad_y[i] = res;
    if (p.grad_weights != nullptr) {
      const V yv = y[i];
#pragma unroll
      for (int e = 0; e < kVec; ++e) dot += to_float(g.v[e]) * to_float(yv.v[e]);
    }
  }
  if (p.grad_weights != nullptr) {
#pragma unroll
    for (int off = 16; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
    if (lane == 0) p.grad_weights[pair] = dot;
  }
}

// route's backward, one thread per token: dot = sum_j w_j g_j, then each of the token's num_memories outputs is
// w_j (g_j - dot) for the kept slot j with memory_ids[n, j] = m, else 0 (masked tokens: all 0).
template <typename T>
__global__ void route_backward_kernel(const float* __restrict__ grad_weights, int64_t grad_row_stride,
                                      const float* __restrict__ weights, const int* __restrict__ memory_ids,
                                      int64_t num_tokens, int topk, int num_memories, T* __restrict__ grad_logits) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= num_tokens) return;
  const float* w = weights + n * topk;
  const float* g = grad_weights + n * grad_row_stride;
  const int* ids = memory_ids + n * topk;
  float dot = 0.f;
  for (int j = 0; j < topk; ++j) dot += w[j] * g[j];
  for (int m = 0; m < num_memories; ++m) {
    float v = 0.f;
    for (int j = 0; j < topk; ++j) {
      if (ids[j] == m) v = w[j] * (g[j] - dot);
    }
    grad_logits[n * num_memories + m] = static_cast<T>(v);
  }
}

}  // namespace mom_ops
