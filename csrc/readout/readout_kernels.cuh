// memory_mix kernels. Work item = one (token, head); each warp keeps one head h and walks the tokens with a grid
// stride (no integer division in the loop: ncu showed 64-bit divisions dominating the instruction count), and each
// lane keeps kVecsPerLane 16-byte vectors of the head's V values, so every row is read once and written once.
//   fwd: o = sum_j w_j o_routed[row_j, h] + shared[n, h];  out = o * rstd * norm_w * silu(gate)
//   bwd: the same gather again, then the RMSNorm/gate backward, d_o_routed[row_j, h] = w_j do,
//        d_w partial [n, j, h] = <do, o_routed[row_j, h]> (summed over h by the caller),
//        d_norm_w partial sums per CTA (summed by the caller).
// Latency: the plan indices (dst_row, weights) of a warp's next item are loaded one item ahead, and with
// kPrefetch the next item's rows too (raw 16-byte vectors, converted when used), so a warp always has the next
// item's loads in flight while it reduces and stores the current one.
// Deterministic: no atomics on floats; every sum has a fixed order.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/vec.cuh"

namespace mom_ops {

struct MixParams {
  const void* o_routed;      // [R, H, V], R = N * k
  const int* dst_row;        // [N, k]
  const int* src_pair;       // [R]
  const float* weights;      // [N, k]
  const void* shared;        // [N, H, V] or nullptr
  const float* norm_weight;  // [V] fp32, or nullptr
  const void* gate;          // [N, H, V] or nullptr
  void* out;                 // fwd: [N, H, V]
  const void* grad_out;      // bwd: [N, H, V]
  void* grad_o_routed;       // bwd: [R, H, V]
  float* grad_w_partial;     // bwd: [N, k, H]
  void* grad_shared;         // bwd: [N, H, V] or nullptr
  void* grad_gate;           // bwd: [N, H, V] or nullptr
  float* grad_norm_partial;  // bwd: [gridDim.x, V] or nullptr
  int64_t num_tokens, num_rows;
  int topk, heads, dim_v;
  float eps;
};

constexpr int kMixWarps = 8;          // warps per CTA (each on its own items)
// CTAs per SM the register budget is sized for (__launch_bounds__): 3 x 8 warps at <= 80 registers for the fwd,
// 2 x 8 at <= 128 for the bwd, when a lane holds one vector per row (no spills; with the prefetch each warp keeps
// ~2 KB in flight, 32+ KB per SM); wider rows get the whole register file.
template <int kVecsPerLane>
constexpr int kMixFwdMinCtas = kVecsPerLane == 1 ? 3 : 1;
template <int kVecsPerLane>
constexpr int kMixBwdMinCtas = kVecsPerLane == 1 ? 2 : 1;
constexpr int kMixSlotsInFlight = 2;  // routed rows per item whose indices and loads are issued ahead
static_assert(kMixSlotsInFlight == 2, "memory_mix_bwd_kernel picks the in-register rows of slots 0 and 1 by name");

// One head-row slice of a lane: kVecsPerLane raw 16-byte vectors (zeros past V), unpacked when used. Loaded with
// the streaming hint (__ldcs): every byte is read once.
template <typename T, int kVec, int kVecsPerLane>
struct LaneRow {
  uint4 v[kVecsPerLane];

  __device__ __forceinline__ float at(int i, int e) const { return unpack_element<T>(v[i], e); }
};

template <typename T, int kVec, int kVecsPerLane>
__device__ __forceinline__ void load_lane_row(const T* row, int dim_v, int lane, LaneRow<T, kVec, kVecsPerLane>& x) {
#pragma unroll
  for (int i = 0; i < kVecsPerLane; ++i) {
    const int c = (lane + 32 * i) * kVec;
    x.v[i] = c < dim_v ? __ldcs(reinterpret_cast<const uint4*>(row + c)) : make_uint4(0u, 0u, 0u, 0u);
  }
}

template <typename T, int kVec, int kVecsPerLane>
__device__ __forceinline__ void zero_lane_row(LaneRow<T, kVec, kVecsPerLane>& x) {
#pragma unroll
  for (int i = 0; i < kVecsPerLane; ++i) x.v[i] = make_uint4(0u, 0u, 0u, 0u);
}

template <typename T, int kVec>
__device__ __forceinline__ void store_f32(T* dst, const float (&src)[kVec]) {
  __stcs(reinterpret_cast<uint4*>(dst), pack_elements<T, kVec>(src));  // streaming: written once, not re-read
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

__device__ __forceinline__ float sigmoidf(float z) { return __fdividef(1.f, 1.f + __expf(-z)); }

// A warp's items: head h of tokens n0, n0 + step, ... where step = (warps in the grid) / H, so the few warps past
// step * H get none (n0 = num_tokens); the grid has at least H warps.
struct WarpWalk {
  int h;
  int64_t n0, step;
};

__device__ __forceinline__ WarpWalk warp_walk(const MixParams& p) {
  const int warp_id = int(blockIdx.x) * kMixWarps + int(threadIdx.x) / 32;
  const int step = int(gridDim.x) * kMixWarps / p.heads;
  const int n0 = warp_id / p.heads;
  return {warp_id % p.heads, n0 < step ? int64_t(n0) : p.num_tokens, int64_t(step)};
}

// Token n's first kMixSlotsInFlight routed rows (-1: none) and their weights (0 where there is no row); for the
// backward also which of the token's own packed rows n*k + j hold no pair (their gradient is zeroed), so that no
// dependent load stalls the warp at the end of an item.
struct SlotRefs {
  int64_t row[kMixSlotsInFlight];
  float w[kMixSlotsInFlight];
  bool empty[kMixSlotsInFlight];
};

__device__ __forceinline__ int64_t routed_row(const MixParams& p, int64_t n, int j) {
  const int r = p.dst_row[n * p.topk + j];
  return r >= 0 && r < p.num_rows ? r : -1;
}

template <bool kBackward>
__device__ __forceinline__ SlotRefs load_slot_refs(const MixParams& p, int64_t n) {
  SlotRefs s;
  int r[kMixSlotsInFlight], src[kMixSlotsInFlight];
  float w[kMixSlotsInFlight];
#pragma unroll
  for (int j = 0; j < kMixSlotsInFlight; ++j) {  // independent loads: issue all first
    const bool ok = n < p.num_tokens && j < p.topk;
    r[j] = ok ? p.dst_row[n * p.topk + j] : -1;
    w[j] = ok ? p.weights[n * p.topk + j] : 0.f;
    src[j] = kBackward && ok ? p.src_pair[n * p.topk + j] : 0;
  }
#pragma unroll
  for (int j = 0; j < kMixSlotsInFlight; ++j) {
    const bool ok = r[j] >= 0 && r[j] < p.num_rows;
    s.row[j] = ok ? r[j] : -1;
    s.w[j] = ok ? w[j] : 0.f;
    s.empty[j] = src[j] < 0;
  }
  return s;
}

// Everything one item reads before its reductions (raw vectors): shared, gate, grad_out and the first rows.
template <typename T, int kVec, int kVecsPerLane>
struct ItemLoads {
  SlotRefs refs;
  LaneRow<T, kVec, kVecsPerLane> shared, gate, dy, rows[kMixSlotsInFlight];
};

// Issues the loads of item (n, h) with the plan indices in refs (dy only for the backward).
template <typename T, int kVec, int kVecsPerLane, bool kBackward>
__device__ __forceinline__ void issue_item_loads(const MixParams& p, int64_t n, int h, int lane, const SlotRefs& refs,
                                                 ItemLoads<T, kVec, kVecsPerLane>& x) {
  const int64_t row_elems = int64_t(p.heads) * p.dim_v, col0 = int64_t(h) * p.dim_v;
  const int64_t base = n * row_elems + col0;
  x.refs = refs;
  if (n >= p.num_tokens) return;
  if (p.shared != nullptr) load_lane_row(static_cast<const T*>(p.shared) + base, p.dim_v, lane, x.shared);
  if (p.gate != nullptr) load_lane_row(static_cast<const T*>(p.gate) + base, p.dim_v, lane, x.gate);
  if (kBackward) load_lane_row(static_cast<const T*>(p.grad_out) + base, p.dim_v, lane, x.dy);
#pragma unroll
  for (int j = 0; j < kMixSlotsInFlight; ++j) {
    if (refs.row[j] >= 0) {
      load_lane_row(static_cast<const T*>(p.o_routed) + refs.row[j] * row_elems + col0, p.dim_v, lane, x.rows[j]);
    } else {
      zero_lane_row(x.rows[j]);
    }
  }
}

// A warp's walk over its items with the loads issued ahead: the plan indices two items ahead and, with
// kPrefetch, the next item's rows one item ahead. start() before the loop; next_item(n) at the top of each
// iteration makes `cur` hold token n's loads.
template <typename T, int kVec, int kVecsPerLane, bool kBackward, bool kPrefetch>
struct ItemPipeline {
  ItemLoads<T, kVec, kVecsPerLane> cur, next;
  SlotRefs refs;

  __device__ __forceinline__ void start(const MixParams& p, const WarpWalk& walk, int lane) {
    refs = load_slot_refs<kBackward>(p, walk.n0);
    if (kPrefetch) {
      issue_item_loads<T, kVec, kVecsPerLane, kBackward>(p, walk.n0, walk.h, lane, refs, next);
      refs = load_slot_refs<kBackward>(p, walk.n0 + walk.step);
    }
  }

  __device__ __forceinline__ void next_item(const MixParams& p, const WarpWalk& walk, int lane, int64_t n) {
    if (kPrefetch) {  // this item's loads were issued one item ago; issue the next item's now
      cur = next;
      issue_item_loads<T, kVec, kVecsPerLane, kBackward>(p, n + walk.step, walk.h, lane, refs, next);
      refs = load_slot_refs<kBackward>(p, n + 2 * walk.step);
    } else {
      issue_item_loads<T, kVec, kVecsPerLane, kBackward>(p, n, walk.h, lane, refs, cur);
      refs = load_slot_refs<kBackward>(p, n + walk.step);
    }
  }
};

// o (fp32) of the item: shared + the weighted rows; slots past kMixSlotsInFlight are loaded here.
template <typename T, int kVec, int kVecsPerLane>
__device__ __forceinline__ void mix_item(const MixParams& p, int64_t n, int h, int lane,
                                         const ItemLoads<T, kVec, kVecsPerLane>& x, float (&o)[kVecsPerLane][kVec]) {
#pragma unroll
  for (int i = 0; i < kVecsPerLane; ++i)
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      float acc = p.shared != nullptr ? x.shared.at(i, e) : 0.f;
#pragma unroll
      for (int j = 0; j < kMixSlotsInFlight; ++j) acc += x.refs.w[j] * x.rows[j].at(i, e);
      o[i][e] = acc;
    }
  for (int j = kMixSlotsInFlight; j < p.topk; ++j) {
    const int64_t r = routed_row(p, n, j);
    if (r < 0) continue;
    const float w = p.weights[n * p.topk + j];
    LaneRow<T, kVec, kVecsPerLane> row;
    load_lane_row(static_cast<const T*>(p.o_routed) + (r * p.heads + h) * p.dim_v, p.dim_v, lane, row);
#pragma unroll
    for (int i = 0; i < kVecsPerLane; ++i)
#pragma unroll
      for (int e = 0; e < kVec; ++e) o[i][e] += w * row.at(i, e);
  }
}

// The norm weights of columns c .. c + kVec (read through L1 each item: registers are the scarce resource here).
template <int kVec>
__device__ __forceinline__ void load_norm_weight(const MixParams& p, int c, float (&nw)[kVec]) {
#pragma unroll
  for (int e = 0; e < kVec; ++e) nw[e] = c + e < p.dim_v ? __ldg(p.norm_weight + c + e) : 0.f;
}

template <typename T, int kVec, int kVecsPerLane, bool kPrefetch>
__global__ void __launch_bounds__(kMixWarps * 32, kMixFwdMinCtas<kVecsPerLane>) memory_mix_fwd_kernel(MixParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t row_elems = int64_t(p.heads) * p.dim_v;
  const WarpWalk walk = warp_walk(p);
  const int h = walk.h;
  ItemPipeline<T, kVec, kVecsPerLane, false, kPrefetch> pipe;
  pipe.start(p, walk, lane);
  for (int64_t n = walk.n0; n < p.num_tokens; n += walk.step) {
    pipe.next_item(p, walk, lane, n);
    const ItemLoads<T, kVec, kVecsPerLane>& cur = pipe.cur;
    float o[kVecsPerLane][kVec];
    mix_item(p, n, h, lane, cur, o);
    if (p.norm_weight != nullptr) {
      float ss = 0.f;
#pragma unroll
      for (int i = 0; i < kVecsPerLane; ++i)
#pragma unroll
        for (int e = 0; e < kVec; ++e) ss += o[i][e] * o[i][e];  // lanes past V hold zeros
      const float rstd = rsqrtf(warp_sum(ss) / p.dim_v + p.eps);
#pragma unroll
      for (int i = 0; i < kVecsPerLane; ++i) {
        float nw[kVec];
        load_norm_weight(p, (lane + 32 * i) * kVec, nw);
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          const float z = cur.gate.at(i, e);
          const float act = p.gate != nullptr ? z * sigmoidf(z) : 1.f;
          o[i][e] = o[i][e] * rstd * nw[e] * act;
        }
      }
    }
    T* out = static_cast<T*>(p.out) + n * row_elems + int64_t(h) * p.dim_v;
#pragma unroll
    for (int i = 0; i < kVecsPerLane; ++i) {
      const int c = (lane + 32 * i) * kVec;
      if (c < p.dim_v) store_f32<T, kVec>(out + c, o[i]);
    }
  }
}

// Dynamic shared memory: kMixWarps * V floats, each warp's running d_norm_w sums (a lane owns its columns; summed in
// warp order at the end).
template <typename T, int kVec, int kVecsPerLane, bool kPrefetch>
__global__ void __launch_bounds__(kMixWarps * 32, kMixBwdMinCtas<kVecsPerLane>) memory_mix_bwd_kernel(MixParams p) {
  extern __shared__ float s_dnw[];  // [kMixWarps, V]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t row_elems = int64_t(p.heads) * p.dim_v;
  const bool norm = p.norm_weight != nullptr, gated = p.gate != nullptr;
  float* my_dnw = s_dnw + warp * p.dim_v;
  if (norm) {
    for (int c = lane; c < p.dim_v; c += 32) my_dnw[c] = 0.f;
    __syncwarp();
  }
  const WarpWalk walk = warp_walk(p);
  const int h = walk.h;
  ItemPipeline<T, kVec, kVecsPerLane, true, kPrefetch> pipe;
  pipe.start(p, walk, lane);
  for (int64_t n = walk.n0; n < p.num_tokens; n += walk.step) {
    pipe.next_item(p, walk, lane, n);
    const ItemLoads<T, kVec, kVecsPerLane>& cur = pipe.cur;
    const int64_t base = n * row_elems + int64_t(h) * p.dim_v;
    float o[kVecsPerLane][kVec], d[kVecsPerLane][kVec];
    mix_item(p, n, h, lane, cur, o);
#pragma unroll
    for (int i = 0; i < kVecsPerLane; ++i)
#pragma unroll
      for (int e = 0; e < kVec; ++e) d[i][e] = cur.dy.at(i, e);
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
        float dz[kVec], nw[kVec];
        load_norm_weight(p, c, nw);
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          const float z = cur.gate.at(i, e), xhat = o[i][e] * rstd;
          const float s = gated ? sigmoidf(z) : 1.f, act = gated ? z * s : 1.f;
          dz[e] = d[i][e] * xhat * nw[e] * s * (1.f + z * (1.f - s));
          if (c + e < p.dim_v) my_dnw[c + e] += d[i][e] * xhat * act;
          d[i][e] = d[i][e] * nw[e] * act;  // dxhat
          dot += d[i][e] * xhat;
          o[i][e] = xhat;
        }
        if (gated && c < p.dim_v) store_f32<T, kVec>(static_cast<T*>(p.grad_gate) + base + c, dz);
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
      // slots 0 and 1 by name: a runtime index into the register arrays would put them on the stack
      const int64_t r = j == 0 ? cur.refs.row[0] : j == 1 ? cur.refs.row[1] : routed_row(p, n, j);
      float dot = 0.f;
      if (r >= 0) {
        const float w = j == 0 ? cur.refs.w[0] : j == 1 ? cur.refs.w[1] : p.weights[n * p.topk + j];
        const int64_t rbase = r * row_elems + int64_t(h) * p.dim_v;
        LaneRow<T, kVec, kVecsPerLane> extra;
        if (j >= kMixSlotsInFlight) load_lane_row(static_cast<const T*>(p.o_routed) + rbase, p.dim_v, lane, extra);
#pragma unroll
        for (int i = 0; i < kVecsPerLane; ++i) {
          const int c = (lane + 32 * i) * kVec;
          float g[kVec];
#pragma unroll
          for (int e = 0; e < kVec; ++e) {
            // rows of the first slots are still in registers from the gather
            const float x = j == 0 ? cur.rows[0].at(i, e) : j == 1 ? cur.rows[1].at(i, e) : extra.at(i, e);
            dot += d[i][e] * x;
            g[e] = w * d[i][e];
          }
          if (c < p.dim_v) store_f32<T, kVec>(static_cast<T*>(p.grad_o_routed) + rbase + c, g);
        }
      }
      dot = warp_sum(dot);
      if (lane == 0) p.grad_w_partial[(n * p.topk + j) * p.heads + h] = dot;
    }
    // Rows n*k .. n*k+k-1 that hold no pair get a zero gradient (R = N * k: each row is owned by one token).
    for (int j = 0; j < p.topk; ++j) {
      const int64_t r = n * p.topk + j;
      const bool empty = j == 0 ? cur.refs.empty[0] : j == 1 ? cur.refs.empty[1] : p.src_pair[r] < 0;
      if (empty) {
        float zero[kVec] = {};
#pragma unroll
        for (int i = 0; i < kVecsPerLane; ++i) {
          const int c = (lane + 32 * i) * kVec;
          if (c < p.dim_v) store_f32<T, kVec>(static_cast<T*>(p.grad_o_routed) + r * row_elems + int64_t(h) * p.dim_v + c, zero);
        }
      }
    }
  }
  if (norm) {
    __syncthreads();
    for (int c = threadIdx.x; c < p.dim_v; c += blockDim.x) {
      float sum = 0.f;
      for (int w = 0; w < kMixWarps; ++w) sum += s_dnw[w * p.dim_v + c];
      p.grad_norm_partial[int64_t(blockIdx.x) * p.dim_v + c] = sum;
    }
  }
}

}  // namespace mom_ops
