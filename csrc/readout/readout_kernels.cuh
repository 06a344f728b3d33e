// memory_mix kernels. Work item = one (token, head); warps walk their items with a grid stride (no integer division
// in the loop: ncu showed 64-bit divisions dominating the instruction count): in the fwd a warp keeps one head, in
// the bwd it takes every head of its tokens in turn. Each lane keeps kVecsPerLane 16-byte vectors of the head's V
// values, so every row is read once and written once.
//   fwd: o = sum_j w_j o_routed[row_j, h] + shared[n, h];  out = o * rstd * norm_w * silu(gate)
//   bwd: the same gather again, then the RMSNorm/gate backward, d_o_routed[row_j, h] = w_j do,
//        d_w[n, j] = sum_h <do, o_routed[row_j, h]>, d_norm_w partial sums per CTA (summed by the caller).
// Latency: the plan indices (dst_row, weights) of a warp's items are loaded two items ahead, and with kPrefetch
// the next item's rows one item ahead (raw 16-byte vectors, converted when used), so a warp always has the next
// item's loads in flight while it reduces and stores the current one.
// Deterministic: no atomics on floats; every sum has a fixed order.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/fast_math.cuh"
#include "common/vec.cuh"

namespace mom_ops {

struct MixParams {
  const void* o_routed;      // [R, H, V], R = N * k
  const int* dst_row;        // [N, k]
  const int* src_pair;       // [R]
  const float* weights;      // [N, k]
  const void* shared;        // [N, H, V] or nullptr
  const float* norm_weight;  // [V] fp32, or nullptr
  const void* gate;          // [N, H, V] or nullptr; rows gate_row_stride elements apart (heads dense in a row)
  void* out;                 // fwd: [N, H, V]
  const void* grad_out;      // bwd: [N, H, V]
  void* grad_o_routed;       // bwd: [R, H, V]
  float* grad_weights;       // bwd: [N, k]
  void* grad_shared;         // bwd: [N, H, V] or nullptr
  void* grad_gate;           // bwd: [N, H, V] or nullptr
  float* grad_norm_partial;  // bwd: [gridDim.x, V] or nullptr
  int64_t num_tokens, num_rows;
  int64_t gate_row_stride;  // H * V, or more for a column slice of a wider tensor (the layer's token projections)
  int topk, heads, dim_v;
  float eps, inv_dim_v;  // 1 / dim_v
};

constexpr int kMixWarps = 8;          // warps per CTA (each on its own items)
// CTAs per SM the register budget is sized for (__launch_bounds__): 3 x 8 warps at <= 80 registers for the fwd,
// 2 x 8 at <= 128 for the bwd, when a lane holds one vector per row (no spills; with the prefetch each warp keeps
// ~2 KB in flight, 32+ KB per SM); wider rows get the whole register file.
template <int kVecsPerLane>
constexpr int kMixFwdMinCtas = kVecsPerLane == 1 ? 3 : 1;
template <int kVecsPerLane>
constexpr int kMixBwdMinCtas = kVecsPerLane == 1 ? 2 : 1;
// Routed rows per item whose indices and loads are issued ahead (the in-register slots): every slot of a fixed
// topk (kTopk > 0: 2, or 3 = MoMAttention's shared memory + top-2), the first two of any other (kTopk = 0: slots
// past them are loaded when used, a dependent load per item and slot).
template <int kTopk>
constexpr int kMixSlots = kTopk > 2 ? kTopk : 2;
constexpr int kMixMaxFixedTopk = 3;

template <int kTopk>
__device__ __forceinline__ int topk_of(const MixParams& p) {
  static_assert(kTopk <= kMixMaxFixedTopk, "a fixed topk must fit the in-register slots");
  return kTopk > 0 ? kTopk : p.topk;
}

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

// A work item: head h of token n.
struct MixItem {
  int64_t n;
  int h;
};

// The fwd's walk: a warp keeps head h and takes tokens n0, n0 + step, ... where step = (warps in the grid) / H, so
// the few warps past step * H get none (n0 = num_tokens); the grid has at least H warps. A lane's columns and head
// never change, so the items need no division.
struct HeadWalk {
  MixItem first;
  int64_t step;

  __device__ __forceinline__ MixItem after(const MixItem& it) const { return {it.n + step, it.h}; }
};

__device__ __forceinline__ HeadWalk head_walk(const MixParams& p) {
  const int warp_id = int(blockIdx.x) * kMixWarps + int(threadIdx.x) / 32;
  const int step = int(gridDim.x) * kMixWarps / p.heads;
  const int n0 = warp_id / p.heads;
  return {{n0 < step ? int64_t(n0) : p.num_tokens, warp_id % p.heads}, int64_t(step)};
}

// The bwd's walk: a warp takes whole tokens n0, n0 + step, ... (step = warps in the grid) and every head of each in
// turn, so it sums d_w over the heads itself (no [N, k, H] partials to add up afterwards).
struct TokenWalk {
  MixItem first;
  int64_t step;
  int heads;

  __device__ __forceinline__ MixItem after(const MixItem& it) const {
    return it.h + 1 < heads ? MixItem{it.n, it.h + 1} : MixItem{it.n + step, 0};
  }
};

__device__ __forceinline__ TokenWalk token_walk(const MixParams& p) {
  const int warp_id = int(blockIdx.x) * kMixWarps + int(threadIdx.x) / 32;
  return {{int64_t(warp_id), 0}, int64_t(gridDim.x) * kMixWarps, p.heads};
}

// Token n's first kS routed rows (-1: none) and their weights (0 where there is no row); for the
// backward also which of the token's own packed rows n*k + j hold no pair (their gradient is zeroed), so that no
// dependent load stalls the warp at the end of an item.
template <int kS>
struct SlotRefs {
  int row[kS];  // (dst_row is int32; 64-bit offsets are formed where a row is read or written)
  float w[kS];
  bool empty[kS];
};

__device__ __forceinline__ int64_t routed_row(const MixParams& p, int64_t n, int j) {
  const int r = p.dst_row[n * p.topk + j];  // only for the slots past the in-register ones (kTopk = 0)
  return r >= 0 && r < p.num_rows ? r : -1;
}

// Whether packed row src_pair value `src` holds no pair (negative, or past the rows: as routing reads it).
__device__ __forceinline__ bool holds_no_pair(const MixParams& p, int src) { return src < 0 || src >= p.num_rows; }

template <bool kBackward, int kTopk>
__device__ __forceinline__ SlotRefs<kMixSlots<kTopk>> load_slot_refs(const MixParams& p, int64_t n) {
  constexpr int kS = kMixSlots<kTopk>;
  const int topk = topk_of<kTopk>(p);
  SlotRefs<kS> s;
  int r[kS], src[kS];
  float w[kS];
#pragma unroll
  for (int j = 0; j < kS; ++j) {  // independent loads: issue all first
    const bool ok = n < p.num_tokens && j < topk;
    r[j] = ok ? p.dst_row[n * topk + j] : -1;
    w[j] = ok ? p.weights[n * topk + j] : 0.f;
    src[j] = kBackward && ok ? p.src_pair[n * topk + j] : 0;
  }
#pragma unroll
  for (int j = 0; j < kS; ++j) {
    const bool ok = r[j] >= 0 && r[j] < p.num_rows;
    s.row[j] = ok ? r[j] : -1;
    s.w[j] = ok ? w[j] : 0.f;
    s.empty[j] = holds_no_pair(p, src[j]);
  }
  return s;
}

// Everything one item reads before its reductions (raw vectors): shared, gate, grad_out and the first rows.
template <typename T, int kVec, int kVecsPerLane, int kS>
struct ItemLoads {
  SlotRefs<kS> refs;
  LaneRow<T, kVec, kVecsPerLane> shared, gate, dy, rows[kS];
};

// Issues the loads of item (n, h) with the plan indices in refs (dy only for the backward).
template <typename T, int kVec, int kVecsPerLane, bool kBackward, int kS>
__device__ __forceinline__ void issue_item_loads(const MixParams& p, int64_t n, int h, int lane,
                                                 const SlotRefs<kS>& refs, ItemLoads<T, kVec, kVecsPerLane, kS>& x) {
  const int64_t row_elems = int64_t(p.heads) * p.dim_v, col0 = int64_t(h) * p.dim_v;
  const int64_t base = n * row_elems + col0;
  x.refs = refs;
  if (n >= p.num_tokens) return;
  if (p.shared != nullptr) load_lane_row(static_cast<const T*>(p.shared) + base, p.dim_v, lane, x.shared);
  if (p.gate != nullptr) {
    load_lane_row(static_cast<const T*>(p.gate) + n * p.gate_row_stride + col0, p.dim_v, lane, x.gate);
  }
  if (kBackward) load_lane_row(static_cast<const T*>(p.grad_out) + base, p.dim_v, lane, x.dy);
#pragma unroll
  for (int j = 0; j < kS; ++j) {
    if (refs.row[j] >= 0) {
      load_lane_row(static_cast<const T*>(p.o_routed) + int64_t(refs.row[j]) * row_elems + col0, p.dim_v, lane,
                    x.rows[j]);
    } else {
      zero_lane_row(x.rows[j]);
    }
  }
}

// A warp's walk over its items with the loads issued ahead: the plan indices two items ahead and, with
// kPrefetch, the next item's rows one item ahead. start() before the loop; next_item(it) at the top of each
// iteration makes `cur` hold item it's loads.
template <typename T, int kVec, int kVecsPerLane, bool kBackward, bool kPrefetch, int kTopk, typename Walk>
struct ItemPipeline {
  static constexpr int kS = kMixSlots<kTopk>;
  ItemLoads<T, kVec, kVecsPerLane, kS> cur, next;
  SlotRefs<kS> refs;

  __device__ __forceinline__ void start(const MixParams& p, const Walk& walk, int lane) {
    refs = load_slot_refs<kBackward, kTopk>(p, walk.first.n);
    if (kPrefetch) {
      issue_item_loads<T, kVec, kVecsPerLane, kBackward>(p, walk.first.n, walk.first.h, lane, refs, next);
      refs = load_slot_refs<kBackward, kTopk>(p, walk.after(walk.first).n);
    }
  }

  __device__ __forceinline__ void next_item(const MixParams& p, const Walk& walk, int lane, const MixItem& it) {
    const MixItem it1 = walk.after(it);
    if (kPrefetch) {  // this item's loads were issued one item ago; issue the next item's now
      cur = next;
      issue_item_loads<T, kVec, kVecsPerLane, kBackward>(p, it1.n, it1.h, lane, refs, next);
      refs = load_slot_refs<kBackward, kTopk>(p, walk.after(it1).n);
    } else {
      issue_item_loads<T, kVec, kVecsPerLane, kBackward>(p, it.n, it.h, lane, refs, cur);
      refs = load_slot_refs<kBackward, kTopk>(p, it1.n);
    }
  }
};

// o (fp32) of the item: shared + the weighted rows; slots past the in-register ones are loaded here.
template <typename T, int kVec, int kVecsPerLane, int kTopk>
__device__ __forceinline__ void mix_item(const MixParams& p, int64_t n, int h, int lane,
                                         const ItemLoads<T, kVec, kVecsPerLane, kMixSlots<kTopk>>& x,
                                         float (&o)[kVecsPerLane][kVec]) {
  constexpr int kS = kMixSlots<kTopk>;
#pragma unroll
  for (int i = 0; i < kVecsPerLane; ++i)
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      float acc = p.shared != nullptr ? x.shared.at(i, e) : 0.f;
#pragma unroll
      for (int j = 0; j < kS; ++j) acc += x.refs.w[j] * x.rows[j].at(i, e);
      o[i][e] = acc;
    }
  for (int j = kS; j < topk_of<kTopk>(p); ++j) {
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

// The norm weights of a lane's vector i, columns (lane + 32 i) * kVec + e, as 16-byte loads (V is a multiple of
// kVec and norm_weight is 16-byte aligned: the binding makes sure).
template <int kVec>
__device__ __forceinline__ void load_norm_weight(const MixParams& p, int lane, int i, float (&w)[kVec]) {
  const int c = (lane + 32 * i) * kVec;
#pragma unroll
  for (int q = 0; q < kVec / 4; ++q) {
    const float4 f = c < p.dim_v ? __ldg(reinterpret_cast<const float4*>(p.norm_weight + c) + q)
                                 : make_float4(0.f, 0.f, 0.f, 0.f);
    w[4 * q] = f.x, w[4 * q + 1] = f.y, w[4 * q + 2] = f.z, w[4 * q + 3] = f.w;
  }
}

// A lane's norm weights. With one vector per lane they stay in registers for the whole kernel (a warp's lane
// columns never change); wider rows load them where used (L1 hits), as registers are short there, and so does the
// bwd with three in-register slots (kHoist = false: held, they spilled 16 bytes at its 128 registers).
template <int kVec, int kVecsPerLane, bool kHoist = true>
struct LaneNormWeight {
  static constexpr bool kHoisted = kHoist && kVecsPerLane == 1;
  float held[kVec];

  __device__ __forceinline__ void init(const MixParams& p, int lane) {
    if (kHoisted && p.norm_weight != nullptr) load_norm_weight(p, lane, 0, held);
  }
  __device__ __forceinline__ void get(const MixParams& p, int lane, int i, float (&w)[kVec]) const {
    if (kHoisted) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) w[e] = held[e];
    } else {
      load_norm_weight(p, lane, i, w);
    }
  }
};

template <typename T, int kVec, int kVecsPerLane, bool kPrefetch, int kTopk>
__global__ void __launch_bounds__(kMixWarps * 32, kMixFwdMinCtas<kVecsPerLane>) memory_mix_fwd_kernel(MixParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t row_elems = int64_t(p.heads) * p.dim_v;
  const HeadWalk walk = head_walk(p);
  const int h = walk.first.h;
  LaneNormWeight<kVec, kVecsPerLane> norm_w;
  norm_w.init(p, lane);
  ItemPipeline<T, kVec, kVecsPerLane, false, kPrefetch, kTopk, HeadWalk> pipe;
  pipe.start(p, walk, lane);
  for (MixItem it = walk.first; it.n < p.num_tokens; it = walk.after(it)) {
    const int64_t n = it.n;
    pipe.next_item(p, walk, lane, it);
    const auto& cur = pipe.cur;
    float o[kVecsPerLane][kVec];
    mix_item<T, kVec, kVecsPerLane, kTopk>(p, n, h, lane, cur, o);
    if (p.norm_weight != nullptr) {
      float ss = 0.f;
#pragma unroll
      for (int i = 0; i < kVecsPerLane; ++i)
#pragma unroll
        for (int e = 0; e < kVec; ++e) ss += o[i][e] * o[i][e];  // lanes past V hold zeros
      const float rstd = rsqrtf(warp_sum(ss) * p.inv_dim_v + p.eps);
#pragma unroll
      for (int i = 0; i < kVecsPerLane; ++i) {
        float nw[kVec];
        norm_w.get(p, lane, i, nw);
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          const float z = cur.gate.at(i, e);
          const float act = p.gate != nullptr ? z * fast_sigmoid(z) : 1.f;
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

// Sums each of the N values over the warp. The N butterflies are independent, so their shuffles overlap: one
// reduction's latency instead of N in a row.
template <int N>
__device__ __forceinline__ void warp_sum_all(float (&x)[N]) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2)
#pragma unroll
    for (int i = 0; i < N; ++i) x[i] += __shfl_xor_sync(0xffffffffu, x[i], off);
}

// Per-warp running d_norm_w sums in shared memory, element (i, e) of a lane at [(i * kVec + e) * 32 + lane]: a
// lane's kVec columns are adjacent in V, so indexing by column would put 32 / kVec lanes on one bank.
template <int kVec, int kVecsPerLane>
constexpr int kMixNormSlotsPerWarp = kVecsPerLane * kVec * 32;

// Backward of one item with norm: with g = dy * norm_w * act (the gradient of xhat = o * rstd), RMSNorm's backward
// is do = rstd * g - rstd^2 * mean(g * xhat) * o, so <do, row_j> = rstd <g, row_j> - b <o, row_j>. All dot
// products (<o, o>, <g, o>, <g, row_j>, <o, row_j> for the in-register slots) come from one pass over the item
// and one batched warp reduction: one reduction latency per item instead of four dependent ones.
// d_w[n, j] = sum over heads of <do, row_j>: lane 0 of the warp that owns token n adds the heads up in order in a
// per-warp shared-memory slot (the token walk gives a warp every head of its tokens).
// Dynamic shared memory: kMixWarps * (kMixNormSlotsPerWarp (when norm_weight is given) + topk) floats.
template <typename T, int kVec, int kVecsPerLane, bool kPrefetch, int kTopk>
__global__ void __launch_bounds__(kMixWarps * 32, kMixBwdMinCtas<kVecsPerLane>) memory_mix_bwd_kernel(MixParams p) {
  constexpr int kSlots = kMixNormSlotsPerWarp<kVec, kVecsPerLane>;
  constexpr int kS = kMixSlots<kTopk>;  // in-register routed slots
  extern __shared__ float s_bwd[];  // [kMixWarps, kSlots] d_norm_w sums (with norm), then [kMixWarps, topk] d_w sums
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t row_elems = int64_t(p.heads) * p.dim_v;
  const bool norm = p.norm_weight != nullptr, gated = p.gate != nullptr;
  const int topk = topk_of<kTopk>(p);
  float* s_dnw = s_bwd;
  float* my_dnw = s_dnw + warp * kSlots + lane;  // element (i, e) at my_dnw[(i * kVec + e) * 32]
  float* my_dw = s_bwd + (norm ? kMixWarps * kSlots : 0) + warp * topk;  // [topk], lane 0 only
  if (norm) {
#pragma unroll
    for (int s = 0; s < kVecsPerLane * kVec; ++s) my_dnw[s * 32] = 0.f;
  }
  const TokenWalk walk = token_walk(p);
  LaneNormWeight<kVec, kVecsPerLane, (kS <= 2)> norm_w;
  norm_w.init(p, lane);
  ItemPipeline<T, kVec, kVecsPerLane, true, kPrefetch, kTopk, TokenWalk> pipe;
  pipe.start(p, walk, lane);
  for (MixItem it = walk.first; it.n < p.num_tokens; it = walk.after(it)) {
    const int64_t n = it.n;
    const int h = it.h;
    pipe.next_item(p, walk, lane, it);
    const auto& cur = pipe.cur;
    const int64_t base = n * row_elems + int64_t(h) * p.dim_v;
    float o[kVecsPerLane][kVec], g[kVecsPerLane][kVec];
    mix_item<T, kVec, kVecsPerLane, kTopk>(p, n, h, lane, cur, o);
    // Pass 1: g and the partial dot products [<o,o>, <g,o>, <g,row_0>, <o,row_0>, <g,row_1>, <o,row_1>, ...].
    float dots[2 + 2 * kS] = {};
#pragma unroll
    for (int i = 0; i < kVecsPerLane; ++i) {
      float nw[kVec];
      if (norm) norm_w.get(p, lane, i, nw);
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        const float z = cur.gate.at(i, e), act = norm && gated ? z * fast_sigmoid(z) : 1.f;
        g[i][e] = norm ? cur.dy.at(i, e) * nw[e] * act : cur.dy.at(i, e);
        dots[0] += o[i][e] * o[i][e];
        dots[1] += g[i][e] * o[i][e];
#pragma unroll
        for (int j = 0; j < kS; ++j) {
          dots[2 + 2 * j] += g[i][e] * cur.rows[j].at(i, e);
          dots[3 + 2 * j] += o[i][e] * cur.rows[j].at(i, e);
        }
      }
    }
    warp_sum_all(dots);
    // do = a g - b o (a = 1, b = 0 without norm)
    const float rstd = norm ? rsqrtf(dots[0] * p.inv_dim_v + p.eps) : 1.f;
    const float a = rstd, b = norm ? rstd * rstd * rstd * dots[1] * p.inv_dim_v : 0.f;
    // Pass 2: d_gate, d_norm_w, do (kept in g), d_shared.
#pragma unroll
    for (int i = 0; i < kVecsPerLane; ++i) {
      const int c = (lane + 32 * i) * kVec;
      if (norm) {
        float dz[kVec], nw[kVec];
        norm_w.get(p, lane, i, nw);
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          const float z = cur.gate.at(i, e), dy = cur.dy.at(i, e), xhat = o[i][e] * rstd;
          const float s = gated ? fast_sigmoid(z) : 1.f, act = gated ? z * s : 1.f;
          dz[e] = dy * xhat * nw[e] * s * (1.f + z * (1.f - s));
          my_dnw[(i * kVec + e) * 32] += dy * xhat * act;  // zero past V: dy is zero there
        }
        if (gated && c < p.dim_v) store_f32<T, kVec>(static_cast<T*>(p.grad_gate) + base + c, dz);
      }
#pragma unroll
      for (int e = 0; e < kVec; ++e) g[i][e] = a * g[i][e] - b * o[i][e];
      if (c < p.dim_v && p.grad_shared != nullptr) store_f32<T, kVec>(static_cast<T*>(p.grad_shared) + base + c, g[i]);
    }
    // d_o_routed rows (w_j do) and d_w partials: the in-register slots (unrolled: their registers are indexed by
    // constants), then any further slot (kTopk = 0), which loads its row and indices here.
    // d_w: lane 0 adds the heads 0 .. H-1 in order (a fixed summation order).
    auto add_dw = [&](int j, float dot) {
      if (lane == 0) {
        const float sum = h == 0 ? dot : my_dw[j] + dot;
        if (h + 1 == p.heads) {
          p.grad_weights[n * topk + j] = sum;
        } else {
          my_dw[j] = sum;
        }
      }
    };
    auto store_row = [&](int64_t r, float w) {  // d_o_routed[r, h] = w do
      const int64_t rbase = r * row_elems + int64_t(h) * p.dim_v;
#pragma unroll
      for (int i = 0; i < kVecsPerLane; ++i) {
        const int c = (lane + 32 * i) * kVec;
        float gr[kVec];
#pragma unroll
        for (int e = 0; e < kVec; ++e) gr[e] = w * g[i][e];
        if (c < p.dim_v) store_f32<T, kVec>(static_cast<T*>(p.grad_o_routed) + rbase + c, gr);
      }
    };
    auto zero_row = [&](int64_t r) {  // a packed row n*k + j that holds no pair
      float zero[kVec] = {};
#pragma unroll
      for (int i = 0; i < kVecsPerLane; ++i) {
        const int c = (lane + 32 * i) * kVec;
        if (c < p.dim_v) store_f32<T, kVec>(static_cast<T*>(p.grad_o_routed) + r * row_elems + int64_t(h) * p.dim_v + c, zero);
      }
    };
#pragma unroll
    for (int j = 0; j < kS; ++j) {
      if (j >= topk) break;
      if (cur.refs.row[j] >= 0) store_row(cur.refs.row[j], cur.refs.w[j]);
      add_dw(j, a * dots[2 + 2 * j] - b * dots[3 + 2 * j]);
    }
    for (int j = kS; j < topk; ++j) {
      const int64_t r = routed_row(p, n, j);
      float dot = 0.f;
      if (r >= 0) {
        LaneRow<T, kVec, kVecsPerLane> extra;
        load_lane_row(static_cast<const T*>(p.o_routed) + r * row_elems + int64_t(h) * p.dim_v, p.dim_v, lane, extra);
#pragma unroll
        for (int i = 0; i < kVecsPerLane; ++i)
#pragma unroll
          for (int e = 0; e < kVec; ++e) dot += g[i][e] * extra.at(i, e);
        store_row(r, p.weights[n * p.topk + j]);
      }
      add_dw(j, warp_sum(dot));
    }
    // Rows n*k .. n*k+k-1 that hold no pair get a zero gradient (R = N * k: each row is owned by one token).
#pragma unroll
    for (int j = 0; j < kS; ++j) {
      if (j >= topk) break;
      if (cur.refs.empty[j]) zero_row(n * topk + j);
    }
    for (int j = kS; j < topk; ++j) {
      if (holds_no_pair(p, p.src_pair[n * topk + j])) zero_row(n * topk + j);
    }
  }
  if (norm) {
    __syncthreads();
    for (int s = threadIdx.x; s < kSlots; s += blockDim.x) {  // s = (i * kVec + e) * 32 + lane
      const int ln = s % 32, e = (s / 32) % kVec, i = s / (32 * kVec), c = (ln + 32 * i) * kVec + e;
      if (c >= p.dim_v) continue;
      float sum = 0.f;
      for (int w = 0; w < kMixWarps; ++w) sum += s_dnw[w * kSlots + s];
      p.grad_norm_partial[int64_t(blockIdx.x) * p.dim_v + c] = sum;
    }
  }
}

}  // namespace mom_ops
