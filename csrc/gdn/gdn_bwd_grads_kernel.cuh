// Backward of the chunked gated-delta scan, part 2 of 2: every chunk's gradients, all chunks in parallel. An item
// is a (chunk slot, value head); a CTA (8 warps) takes its items in turn (one CTA per SM, every gridDim.x-th item,
// so that the next item's loads run under the current one's end; or a CTA per item). For an item it reads the chunk's
// q, k, v, g, beta, dO, the saved S0, V_new and T (the forward's (I + A)^-1) and the chain kernel's dS1
// (gdn_bwd_chain_kernel.cuh), recomputes G, the l2norm factors, A and P, and walks V in blocks of kBV columns. The
// formulas are mom_ops/reference/gdn_backward.py's, regrouped so that
// every V-block adds into a few accumulators (Kn = diag(rk) K raw, Qn = diag(rq) Q raw; dO carries no scale):
//   kdS = K dS1, M = K S0                          (per V-block, raw K)
//   dVn = rk e^{G_L - G} kdS + scale P^T dO,  dVb = T^T dVn,  dv = beta dVb
//   Z   = beta (V - e^G rk M)                      (so that dT = dVn Vb^T + dW Kb^T = sum over V of dVn Z^T)
//   X1 += dO S0^T,  dKn += diag(e^{G_L - G}) Vn dS1^T - diag(beta e^G) dVb S0^T,  dP += dO Vn^T,  dT += dVn Z^T
//   row sums: c = rk e^{G_L - G} sum(kdS Vn), kdKb = -rk sum(dVb M), sum(V dVb); sum(S0 dS1)
// then, once per chunk: dQK = scale dP Γ (i >= j), dA = -(T^T dT T^T) (i > j), dKK = dA beta Γ,
//   dQn = scale e^G X1 + dQK Kn,  dKn += (dKK + dKK^T) Kn + dQK^T Qn,
//   dG = rowsum - colsum of (scale dP P + dA A) + beta e^G kdKb - c + scale e^G (Qn . X1) (+ the last row's
//   e^{G_L} sum(S0 dS1) + sum c),  dg = reverse cumsum(dG),  dbeta = sum(V dVb) + e^G kdKb + sum_j dA A / beta.
// The first chunk's S0 (= h0) and the last chunk's dS1 (= dht) are fp32 inputs: every product with them runs on
// hi + lo 16-bit tiles ("exact ends", see GdnGradsSmem; at K = 256 only in the instance launched where h0 or dht is
// given).
// Every sum has a fixed order (no atomics): two runs are bitwise equal.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/copy_rows.cuh"
#include "common/cp_async.cuh"
#include "common/mma.cuh"
#include "common/tile_layout.h"
#include "common/wgmma.cuh"
#include "common/wgmma_steps.cuh"
#include "gdn/chunk_prologue.cuh"
#include "gdn/gdn_bwd_params.h"
#include "gdn/gdn_fwd_kernel.cuh"
#include "gdn/split_items.cuh"

namespace mom_ops {

// Shared memory (byte offsets). The per-V-block tiles and, after the V loop, the chunk-end tiles share one region.
// 8 warps = 2 warpgroups, 64-column V-blocks at K <= 128, 32-column ones at K = 256; every 16-bit tile in wgmma's
// swizzled layouts: q, k and the [64][64] tiles in 128-byte-swizzled 64-column slabs (Sw128Slabs), the V-block tiles
// too at 64 columns, or in the 64-byte swizzle at 32 (Sw64Rows). (Until session 33 K = 256 ran on mma.sync with
// padded rows; 16 warps with 4 column groups measured no faster at K = 128 and spilled at K = 256.)
template <typename T, int kK, int kBV, bool kExactEnds = true>
struct GdnGradsSmem {
  static constexpr int C = kGdnChunk, kWarps = 8, kColGroups = kWarps / 4;
  static_assert((kK <= 128 && kBV == 64) || (kK == 256 && kBV == 32), "V-blocks of 64 columns, 32 at K = 256");
  static constexpr int kLdT = C + 1;
  // Element (r, c) of the q, k tiles (RowsK), the V-block tiles and S0, dS1 (RowsV), the [64][64] tiles (RowsC).
  using RowsK = Sw128Slabs<C>;
  using RowsV = std::conditional_t<kBV == 32, Sw64Rows, Sw128Slabs<C>>;
  using RowsC = Sw128Slabs<C>;
  // Bytes of a 16-bit tile of rows x cols.
  static constexpr int bytes16(int rows, int cols) { return rows * cols * 2; }
  static constexpr int align1k(int x) { return (x + 1023) / 1024 * 1024; }
  static constexpr int kQ = 0;                                  // q [64][kK] raw
  static constexpr int kKey = kQ + bytes16(C, kK);              // k [64][kK] raw
  static constexpr int kT16 = kKey + bytes16(C, kK);            // T [64][64] (saved by the forward)
  static constexpr int kP = kT16 + bytes16(C, C);               // P (no scale) [64][64]
  static constexpr int kRegion = kP + bytes16(C, C);
  // V-block tiles: the computed ones, dVn, Z, DvbS, VnD [64][kBV], then the loaded ones in two buffers (the next
  // V-block's loads run during the current one): dO, v, V_new [64][kBV], S0, dS1 [kK][kBV] (offsets in a buffer).
  static constexpr int kDvn = kRegion, kZ = kDvn + bytes16(C, kBV);
  static constexpr int kDvbS = kZ + bytes16(C, kBV), kVnD = kDvbS + bytes16(C, kBV);
  static constexpr int kLoad = kVnD + bytes16(C, kBV);
  static constexpr int kDo = 0, kV = kDo + bytes16(C, kBV), kVn = kV + bytes16(C, kBV);
  static constexpr int kS0 = kVn + bytes16(C, kBV), kDs1 = kS0 + bytes16(kK, kBV);
  static constexpr int kLoadBytes = kDs1 + bytes16(kK, kBV);
  // chunk-end tiles [64][64]: dT, Y = T^T dT, (dKK + dKK^T) diag(rk), dQK diag(rk), dQK rq_i
  static constexpr int kDt = kRegion, kY = kDt + bytes16(C, C), kSym = kY + bytes16(C, C);
  static constexpr int kDqkRk = kSym + bytes16(C, C), kDqkRq = kDqkRk + bytes16(C, C);
  static constexpr int kRegionEndC = kDqkRq + bytes16(C, C);
  // f32 tiles of the chunk-end phases: partial sums of rows [kRows][kColGroups][64] and columns [4 row tiles][64];
  // dKK [64][kLdT]. After the chunk-end tiles where that leaves load buffer 1 free (K <= 128), so that the next
  // item's first V-block loads there during the chunk end; at K = 256 after the vectors (without the lo tiles: room
  // there), or else (K = 256 with the lo tiles) after the chunk-end tiles, into buffer 1, and the next item's loads
  // wait for the item's end.
  static constexpr int kRows = 7;
  static constexpr int kScratchBytes = kRows * kColGroups * C * 4 + 4 * C * 4 + C * kLdT * 4;
  static constexpr int kBuf1 = kLoad + kLoadBytes;  // load buffer 1: each item's V-block 0
  static constexpr bool kScratchInRegion = kRegionEndC + kScratchBytes <= kBuf1;
  static constexpr bool kScratchAfterVec = !kScratchInRegion && !kExactEnds;
  static constexpr bool kPrefetchNext = kScratchInRegion || kScratchAfterVec;
  // "Exact ends": the first chunk's S0 is h0 and the last chunk's dS1 is dht, both fp32 inputs. Their products run
  // on hi + lo 16-bit pairs (S0lo, dS1lo [kK][kBV], after the f32 vectors), as rounding them to 16 bits alone gives
  // dg errors ~1e-2 under strong decay (NOTES.md). At K = 256 the kernel with them was 4-6% slower also where
  // neither input is given (1.02 -> 1.06-1.09 ms in the layer's T2K step), so there the launch takes the instance
  // without them (kExactEnds = false: no lo tiles, h0 / dht rounded) unless h0 or dht is given.
  // After the V-block region: f32 G, beta, rq, rk, e^{G_L - G} [64] each; dG, c [64]; per-warp sums [kWarps]; the
  // next item (GradsItem); then the lo tiles or the f32 scratch. (162 / 226 / 218 KB at K = 64 / 128 / 256; 207 KB
  // at K = 256 without the lo tiles.)
  static constexpr int kVec = max_int(kLoad + 2 * kLoadBytes, kRegionEndC + (kScratchInRegion ? kScratchBytes : 0));
  static constexpr int kNextItem = kVec + (5 * C + 2 * C + kWarps) * 4;
  static constexpr int kVecEnd = kNextItem + 48;  // (sizeof(GradsItem) <= 48: the kernel checks)
  static constexpr int kRowSums = kScratchAfterVec ? kVecEnd : kRegionEndC;
  static constexpr int kColSums = kRowSums + kRows * kColGroups * C * 4;
  static constexpr int kDkk = kColSums + 4 * C * 4;
  static_assert(kScratchAfterVec || kDkk + C * kLdT * 4 <= kLoad + 2 * kLoadBytes,
                "the chunk-end tiles fit in the V-block region");
  static constexpr int kLo = align1k(kVecEnd);
  static constexpr int kS0lo = kLo, kDs1lo = kLo + bytes16(kK, kBV);  // used only with kExactEnds
  static constexpr int kBytes =
      kExactEnds ? kLo + 2 * bytes16(kK, kBV) : kVecEnd + (kScratchAfterVec ? kScratchBytes : 0);
  // wgmma's swizzle repeats every 1 KB: every 16-bit tile starts on a 1 KB boundary.
  static_assert(kRegion % 1024 == 0 && kLoad % 1024 == 0 && kLoadBytes % 1024 == 0 && kVec % 1024 == 0,
                "1 KB-aligned tiles");
};

// Whether the launch takes the instance with exact ends (GdnGradsSmem): always at K <= 128, at K = 256 only where h0
// or dht is given. gdn_bwd_grads.cu and the CPU emulator's driver both choose by it.
inline bool gdn_grads_exact_ends(int dim_k, const GdnBwdParams& p) {
  return dim_k <= 128 || p.h0 != nullptr || p.dht != nullptr;
}

// One item of the grads kernel: (chunk slot, value head) number index = slot x HV + hv, the chunk at rows [c0, c0 +
// len) of sequence seq (ending at eos). slot < 0: no item.
struct GradsItem {
  int64_t index, slot, c0, eos;
  int hv, seq;
  bool first_chunk;
  __device__ __forceinline__ int len() const { return int(min(int64_t(kGdnChunk), eos - c0)); }
};

// The first item from `index` on, stepping by the grid, whose slot a chunk uses (a CTA's items: blockIdx.x, then
// every gridDim.x-th; one per CTA where the grid has one CTA per item). Warp-collective (slot_sequence).
__device__ __forceinline__ GradsItem grads_item_from(const GdnBwdParams& p, int64_t index) {
  const int64_t items = split_slots(p) * p.heads_v;
  for (; index < items; index += gridDim.x) {
    const int64_t slot = index / p.heads_v;
    const int seq = slot_sequence(p, slot);
    int64_t bos, eos;
    sequence_bounds(p, seq, bos, eos);
    const int64_t chunk = slot - chunk_slot(p, seq, bos);
    if (chunk >= 0 && bos + chunk * kGdnChunk < eos)
      return GradsItem{index, slot, bos + chunk * kGdnChunk, eos, int(index % p.heads_v), seq, chunk == 0};
  }
  return GradsItem{items, -1, 0, 0, 0, 0, false};
}

// Row partial sums, sRow[quantity][column group][row].
enum GradsRow { kRowE = 0, kRowBeta, kRowC, kRowDvbM, kRowQX1, kRowQdQ, kRowKdK };

// 8 warps = 4 row tiles of 16 rows x 2 column groups: warp w owns rows 16 (w % 4) .. of every [64, n] product and
// the column group w / 4 of its n columns. A column group is a warpgroup, whose m64 wgmma accumulators hold exactly
// those rows (in the mma.sync fragment layout).
template <typename T, int kK, int kBV, bool kExactEnds>
__global__ void __launch_bounds__(GdnGradsSmem<T, kK, kBV>::kWarps * 32, 1) gdn_bwd_grads_kernel(GdnBwdParams p) {
  using L = GdnGradsSmem<T, kK, kBV, kExactEnds>;
  using RowsK = typename L::RowsK;
  using RowsV = typename L::RowsV;
  using RowsC = typename L::RowsC;
  constexpr int C = kGdnChunk, kLdT = L::kLdT, kWarps = L::kWarps;
  constexpr int kThreads = kWarps * 32, kGroups = L::kColGroups;
  constexpr int kColsK = kK / kGroups, kNK = kColsK / 8;  // per-warp columns of the [64, K] accumulators
  constexpr int kColsV = kBV / kGroups, kNV = kColsV / 8;  // per-warp columns of the [64, kBV] products
  constexpr int kColsC = C / kGroups, kNC = kColsC / 8;    // per-warp columns of the [64, 64] products
  static_assert(kNV >= 1 && kNC >= 1, "column groups of at least 8 columns");
  constexpr bool kDqkEarly = kColsK <= 64;  // the dQK products overlap dA's epilogue (see there)
  extern __shared__ __align__(1024) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem + L::kQ);
  T* sK = reinterpret_cast<T*>(smem + L::kKey);
  float* sDkk = reinterpret_cast<float*>(smem + L::kDkk);
  T* sT16 = reinterpret_cast<T*>(smem + L::kT16);
  T* sP = reinterpret_cast<T*>(smem + L::kP);
  // the loaded V-block tile at offset `off` of buffer `buf`
  auto vtile = [&](int buf, int off) { return reinterpret_cast<T*>(smem + L::kLoad + buf * L::kLoadBytes + off); };
  T* sDvn = reinterpret_cast<T*>(smem + L::kDvn);
  T* sZ = reinterpret_cast<T*>(smem + L::kZ);
  T* sDvbS = reinterpret_cast<T*>(smem + L::kDvbS);
  T* sVnD = reinterpret_cast<T*>(smem + L::kVnD);
  T* sS0lo = reinterpret_cast<T*>(smem + L::kS0lo);
  T* sDs1lo = reinterpret_cast<T*>(smem + L::kDs1lo);
  T* sDt = reinterpret_cast<T*>(smem + L::kDt);
  T* sY = reinterpret_cast<T*>(smem + L::kY);
  T* sSym = reinterpret_cast<T*>(smem + L::kSym);
  T* sDqkRk = reinterpret_cast<T*>(smem + L::kDqkRk);
  T* sDqkRq = reinterpret_cast<T*>(smem + L::kDqkRq);
  float* sRow = reinterpret_cast<float*>(smem + L::kRowSums);  // [kRows][kGroups][64], chunk-end phases only
  float* sCol = reinterpret_cast<float*>(smem + L::kColSums);  // [4][64], chunk-end phases only
  float* sG = reinterpret_cast<float*>(smem + L::kVec);
  float *sBeta = sG + C, *sRq = sBeta + C, *sRk = sRq + C, *sDend = sRk + C;
  float *sDG = sDend + C, *sC = sDG + C, *sWarp = sC + C;

  // The CTA's items in turn (grads_item_from). Each item's V-blocks alternate between the load buffers from buffer 1,
  // where the next item's first V-block and its T load during the item's chunk end, which uses neither; only q and k
  // (read until the item's end) then load at the next item's start. An instance without room for that
  // (!kPrefetchNext: K = 256 with the lo tiles) runs one item per CTA (gdn_grads_grid), without the loop.
  static_assert(sizeof(GradsItem) <= 48, "the next item's place in shared memory");
  GradsItem* sNextItem = reinterpret_cast<GradsItem*>(smem + L::kNextItem);
  GradsItem item = grads_item_from(p, blockIdx.x);
  bool prefetched = false;  // this item's T and first V-block are loaded or in flight
#pragma unroll 1
  while (item.slot >= 0) {
    // The thread's index as an opaque copy per item: otherwise the compiler hoists the many thread-dependent offsets
    // out of the item loop and keeps them in registers across it (ptxas: K = 256 spilled 420 bytes instead of 52,
    // K = 128 48 instead of 0). At K <= 128 its range is restored: without it the kernel had 17% more instructions
    // (bf16 K = 128 cubin 94.7 -> 111.1 KB; 94.7 -> 99.3 with it) and its grads 1.25 -> 1.41 ms at n32 D128 (H200).
    // At K = 256 the range costs spills (12 -> 36 bytes) and was no faster (layer T2K 0.97 / 0.99 ms).
    int tid = threadIdx.x;
    if constexpr (L::kPrefetchNext) asm volatile("" : "+r"(tid));
    if constexpr (kK <= 128) __builtin_assume(tid >= 0 && tid < kThreads);
    const int lane = tid % 32, g8 = lane / 4, t4 = lane % 4;
    // warp through a shuffle: the compiler then knows it is warp-uniform and keeps the wgmma descriptors that depend
    // on it (through cg) in uniform registers
    const int warp = __shfl_sync(0xffffffffu, tid / 32, 0);
    const int rt = warp % 4, cg = warp / 4, r0 = 16 * rt, i0 = r0 + g8, i1 = i0 + 8;
    // wgmma operands of a swizzled tile x (wgmma_k_steps): K-major from row `row`, MN-major from column `col`; of q, k
    // and the [64][64] tiles (128-byte swizzle), and of the V-block tiles (RowsV, kSwV: the 64-byte swizzle at 32
    // columns). The *_n64 forms give n64 piece j of a product wider than 64 (wgmma_k_steps_n64).
    using Sw = Sw128Slabs<C>;
    constexpr int kSwV = kSwizzleOf<RowsV>;
    auto kmajor = [](const T* x, int row) { return kmajor_steps<Sw>(x, row); };
    auto mnmajor = [](const T* x, int col) { return mnmajor_steps<Sw>(x, col); };
    auto mnmajor_n64 = [](const T* x, int col) { return [=](int j) { return mnmajor_steps<Sw>(x, col + 64 * j); }; };
    auto kmajor_v = [](const T* x, int row) { return kmajor_steps<RowsV>(x, row); };
    auto mnmajor_v = [](const T* x, int col) { return mnmajor_steps<RowsV>(x, col); };
    auto kmajor_v_n64 = [](const T* x, int row) { return [=](int j) { return kmajor_steps<RowsV>(x, row + 64 * j); }; };
    const T* q = static_cast<const T*>(p.q);
    const T* k = static_cast<const T*>(p.k);
    const T* v = static_cast<const T*>(p.v);
    const T* vn = static_cast<const T*>(p.vn);
    const T* dout = static_cast<const T*>(p.dout);
    const int64_t row_v_stride = int64_t(p.heads_v) * p.dim_v;
    // Whether item it's first S0 (= h0) or last dS1 (= dht) is an fp32 input, whose tiles are then hi + lo pairs
    // (block-uniform flags).
    auto first_of = [&](const GradsItem& it) { return kExactEnds && it.first_chunk && p.h0 != nullptr; };
    auto last_of = [&](const GradsItem& it) { return kExactEnds && it.c0 + C >= it.eos && p.dht != nullptr; };

    // cp.async of item it's T rows (zeros past its end) into sT16; the caller commits.
    auto load_t = [&](const GradsItem& it) {
      copy_rows_async<C, C, RowsC, kThreads>(sT16, static_cast<const T*>(p.t) + (it.c0 * p.heads_v + it.hv) * C,
                                             int64_t(p.heads_v) * C, it.len(), tid);
    };
    // cp.async (one commit group) of item it's V-block tiles at column v0 into load buffer buf: dO, v, V_new rows
    // (zeros past the chunk's end), S0 and dS1 of the slot (except an S0 = h0 or dS1 = dht, which split_state writes).
    auto load_vblock = [&](const GradsItem& it, int v0, int buf) {
      const int len = it.len();
      const int64_t row_v0 = (it.c0 * p.heads_v + it.hv) * p.dim_v;
      const int64_t state_base = (it.slot * p.heads_v + it.hv) * int64_t(kK) * p.dim_v;
      copy_rows_async<C, kBV, RowsV, kThreads>(vtile(buf, L::kDo), dout + row_v0 + v0, row_v_stride, len, tid);
      copy_rows_async<C, kBV, RowsV, kThreads>(vtile(buf, L::kV), v + row_v0 + v0, row_v_stride, len, tid);
      copy_rows_async<C, kBV, RowsV, kThreads>(vtile(buf, L::kVn), vn + row_v0 + v0, row_v_stride, len, tid);
      if (!first_of(it))
        copy_rows_async<kK, kBV, RowsV, kThreads>(vtile(buf, L::kS0), static_cast<const T*>(p.s0) + state_base + v0,
                                                  p.dim_v, kK, tid);
      if (!last_of(it))
        copy_rows_async<kK, kBV, RowsV, kThreads>(vtile(buf, L::kDs1), static_cast<const T*>(p.ds1) + state_base + v0,
                                                  p.dim_v, kK, tid);
      cp_async_commit();
    };

    const int hv = item.hv, h = hv / (p.heads_v / p.heads_qk);
    const int64_t c0 = item.c0;
    const int len = item.len();
    const bool first = first_of(item), last = last_of(item);
    const int64_t input_state_base = (int64_t(item.seq) * p.heads_v + hv) * int64_t(kK) * p.dim_v;  // h0, dht

    // hi, lo [kK][kBV] tiles of the fp32 state src (h0 or dht) at columns v0.. (plain stores, read after a barrier).
    auto split_state = [&](T* hi, T* lo_part, const float* src, int v0) {
      for (int idx = tid; idx < kK * (kBV / 2); idx += kThreads) {
        const int r = idx / (kBV / 2), c = (idx % (kBV / 2)) * 2;
        float x[2], x_hi[2];
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          x[u] = src[input_state_base + state_elem(p.v_first, kK, p.dim_v, r, v0, c + u)];
          x_hi[u] = to_f32<T>(from_f32<T>(x[u]));
        }
        store2<T>(hi + RowsV::at(r, c), x_hi[0], x_hi[1]);
        store2<T>(lo_part + RowsV::at(r, c), x[0] - x_hi[0], x[1] - x_hi[1]);
      }
    };

    // (a) q, k, T -> shared memory (T rows past len: zeros, which acts as the identity rows there since every dVn,
    // dT row past len is 0), g, beta (the first V-block's tiles load meanwhile, until (c), unless the previous item
    // loaded them and T); l2norm factors, G, e^{G_L - G}. The last warp finds the CTA's next item meanwhile.
    load_chunk_qk<T, kK, RowsK, kThreads>(sQ, sK, q, k, c0, len, p.heads_qk, h, tid);
    if (!prefetched) load_t(item);
    cp_async_commit();
    if (!prefetched) load_vblock(item, 0, 1);
    if (tid < C) {
      sG[tid] = tid < len ? gdn_floor_g(p.g[(c0 + tid) * p.heads_v + hv]) : 0.f;
      sBeta[tid] = tid < len ? p.beta[(c0 + tid) * p.heads_v + hv] : 0.f;
    }
    if (L::kPrefetchNext && warp == kWarps - 1) {  // (read after the barriers below; rewritten after the item's last)
      const GradsItem next = grads_item_from(p, item.index + gridDim.x);
      if (lane == 0) *sNextItem = next;
    }
    if (prefetched) cp_async_wait<0>();  // (q, k are the newest copies)
    else cp_async_wait<1>();             // (the first V-block's are newer)
    fence_async_smem();  // cp.async lands through the generic proxy; wgmma reads through the async one
    __syncthreads();
    if (tid < kGdnThreads)  // (its 256 threads)
      chunk_norms_and_cumsum<T, kK, RowsK>(sQ, sK, sG, sRq, sRk, p.l2norm, tid);
    __syncthreads();
    const float G_last = sG[C - 1];
    if (tid < C) sDend[tid] = __expf(G_last - sG[tid]);

    // (b) P rows r0.., columns cc0.. -> sP (16-bit, no scale). (A / beta = K K^T is recomputed into registers where
    // the chunk end needs it, which leaves shared memory for the second load buffer.)
    const int vc0 = cg * kColsV, kc0 = cg * kColsK, cc0 = cg * kColsC;  // this warp's first V, K and chunk column
    // The V-block products that read a state tile (S0, dS1 or their lo parts), on wgmma: acc (+)= K S (columns vc0..),
    // and acc += A S^T (A a [64][kBV] V-block tile; rows kc0.. of S: the [64][kK] accumulators X1, dKn).
    auto k_times_state = [&](float (&acc)[kNV][4], const T* state, bool accumulate) {
      wgmma_k_steps<T, kColsV, false, true, kK / 16, 128, kSwV>(acc, kmajor(sK, 0), mnmajor_v(state, vc0), accumulate);
    };
    auto add_times_state_t = [&](float (&acc)[kNK][4], const T* a, const T* state) {
      wgmma_k_steps_n64<T, kColsK, false, false, kBV / 16, kSwV, kSwV>(acc, kmajor_v(a, 0), kmajor_v_n64(state, kc0),
                                                                       true);
    };
    {
      float acc[kNC][4] = {};
      wgmma_fence();
      wgmma_k_steps<T, kColsC, false, false, kK / 16>(acc, kmajor(sQ, 0), kmajor(sK, cc0), false);
      wgmma_commit();
      wgmma_wait<0>();
#pragma unroll
      for (int nt = 0; nt < kNC; ++nt)
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
          const int i = e < 2 ? i0 : i1, j = cc0 + nt * 8 + 2 * t4;
          const float f = sRq[i], Gi = sG[i];
          const float x0 = i >= j ? f * sRk[j] * __expf(Gi - sG[j]) * acc[nt][e] : 0.f;
          const float x1 = i >= j + 1 ? f * sRk[j + 1] * __expf(Gi - sG[j + 1]) * acc[nt][e + 1] : 0.f;
          store2<T>(sP + RowsC::at(i, j), x0, x1);
        }
    }
    fence_async_smem();
    __syncthreads();

    // (c) The V-blocks (the first in buffer 1); the next one's tiles load into the other buffer during the current
    // one.
    float X1[kNK][4] = {}, dKn[kNK][4] = {}, dP[kNC][4] = {}, dT[kNC][4] = {};
    float part_c[2] = {}, part_vdvb[2] = {}, part_dvbm[2] = {}, sum_sds = 0.f;
    for (int v0 = 0, buf = 1; v0 < p.dim_v; v0 += kBV, buf ^= 1) {
      const bool prefetch = v0 + kBV < p.dim_v;
      T* sDo = vtile(buf, L::kDo);
      T* sV = vtile(buf, L::kV);
      T* sVn = vtile(buf, L::kVn);
      T* sS0 = vtile(buf, L::kS0);
      T* sDs1 = vtile(buf, L::kDs1);
      if (first) split_state(sS0, sS0lo, p.h0, v0);
      if (last) split_state(sDs1, sDs1lo, p.dht, v0);
      cp_async_wait<0>();  // this V-block's tiles: the only copies in flight
      fence_async_smem();
      __syncthreads();
      // Every warp is past the previous V-block, the last reader of the other buffer and of the computed tiles (so
      // the V-block's end needs no barrier of its own).
      if (prefetch) load_vblock(item, v0 + kBV, buf ^ 1);

      // kdS, M, P^T dO on rows r0.., columns vc0..; then dVn, Z, d_end Vn -> shared memory. (wgmma: dP += dO Vn^T
      // and X1 += dO S0^T, which need only the loaded tiles, run meanwhile as a second group.)
      float kds[kNV][4] = {}, m[kNV][4] = {}, pt[kNV][4] = {};
      wgmma_fence();
      k_times_state(kds, sDs1, false);
      if (last) k_times_state(kds, sDs1lo, true);
      k_times_state(m, sS0, false);
      if (first) k_times_state(m, sS0lo, true);
      // P^T dO
      wgmma_k_steps<T, kColsV, true, true, C / 16, 128, kSwV>(pt, mnmajor(sP, 0), mnmajor_v(sDo, vc0), false);
      wgmma_commit();
      wgmma_k_steps<T, kColsC, false, false, kBV / 16, kSwV, kSwV>(dP, kmajor_v(sDo, 0), kmajor_v(sVn, cc0), true);
      add_times_state_t(X1, sDo, sS0);
      if (first) add_times_state_t(X1, sDo, sS0lo);
      wgmma_commit();
      wgmma_wait<1>();
#pragma unroll
      for (int nt = 0; nt < kNV; ++nt)
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
          const int i = e < 2 ? i0 : i1, r = e / 2, c = vc0 + nt * 8 + 2 * t4;
          const float de = sDend[i] * sRk[i], eGrk = __expf(sG[i]) * sRk[i], b = sBeta[i];
          float dvn[2], z[2], vnd[2];
          const float2 vn2 = load2<T>(sVn + RowsV::at(i, c)), v2 = load2<T>(sV + RowsV::at(i, c));
#pragma unroll
          for (int u = 0; u < 2; ++u) {
            const float vn_f = u == 0 ? vn2.x : vn2.y, v_f = u == 0 ? v2.x : v2.y;
            dvn[u] = de * kds[nt][e + u] + p.scale * pt[nt][e + u];
            part_c[r] += kds[nt][e + u] * vn_f;
            z[u] = b * (v_f - eGrk * m[nt][e + u]);
            vnd[u] = sDend[i] * vn_f;
          }
          store2<T>(sDvn + RowsV::at(i, c), dvn[0], dvn[1]);
          store2<T>(sZ + RowsV::at(i, c), z[0], z[1]);
          store2<T>(sVnD + RowsV::at(i, c), vnd[0], vnd[1]);
        }
      fence_async_smem();
      __syncthreads();

      // dVb = T^T dVn -> dv, row sums, -beta e^G dVb -> sDvbS; the accumulators that need only the tiles above.
      {
        float dvb[kNV][4] = {};
        // T^T dVn, then dT += dVn Z^T and dKn += VnD dS1^T as a second group, waited for after the epilogue
        wgmma_fence();
        wgmma_k_steps<T, kColsV, true, true, C / 16, 128, kSwV>(dvb, mnmajor(sT16, 0), mnmajor_v(sDvn, vc0),
                                                                false);  // T^T dVn
        wgmma_commit();
        wgmma_k_steps<T, kColsC, false, false, kBV / 16, kSwV, kSwV>(dT, kmajor_v(sDvn, 0), kmajor_v(sZ, cc0), true);
        add_times_state_t(dKn, sVnD, sDs1);
        if (last) add_times_state_t(dKn, sVnD, sDs1lo);
        wgmma_commit();
        wgmma_wait<1>();
        T* dv = static_cast<T*>(p.dv);
#pragma unroll
        for (int nt = 0; nt < kNV; ++nt)
#pragma unroll
          for (int e = 0; e < 4; e += 2) {
            const int i = e < 2 ? i0 : i1, r = e / 2, c = vc0 + nt * 8 + 2 * t4;
            const float b = sBeta[i], f = -b * __expf(sG[i]);
            const float2 v2 = load2<T>(sV + RowsV::at(i, c));
#pragma unroll
            for (int u = 0; u < 2; ++u) {
              part_vdvb[r] += (u == 0 ? v2.x : v2.y) * dvb[nt][e + u];
              part_dvbm[r] += dvb[nt][e + u] * m[nt][e + u];
            }
            if (i < len)
              store2<T>(dv + ((c0 + i) * p.heads_v + hv) * p.dim_v + v0 + c, b * dvb[nt][e], b * dvb[nt][e + 1]);
            store2<T>(sDvbS + RowsV::at(i, c), f * dvb[nt][e], f * dvb[nt][e + 1]);
          }
      }
      wgmma_wait<0>();
      fence_async_smem();  // sDvbS
      __syncthreads();
      wgmma_fence();  // dKn += DvbS S0^T, overlapping sum(S0 dS1) below
      add_times_state_t(dKn, sDvbS, sS0);
      if (first) add_times_state_t(dKn, sDvbS, sS0lo);
      wgmma_commit();
      for (int idx = tid; idx < kK * kBV / 8; idx += kThreads) {  // 8 elements (16 bytes) at a time
        const int e0 = RowsV::at(idx / (kBV / 8), (idx % (kBV / 8)) * 8);
        float s0[8], ds1[8], lo[8];
        load8<T>(sS0 + e0, s0);
        load8<T>(sDs1 + e0, ds1);
        if (first) {
          load8<T>(sS0lo + e0, lo);
#pragma unroll
          for (int e = 0; e < 8; ++e) s0[e] += lo[e];
        }
        if (last) {
          load8<T>(sDs1lo + e0, lo);
#pragma unroll
          for (int e = 0; e < 8; ++e) ds1[e] += lo[e];
        }
#pragma unroll
        for (int e = 0; e < 8; ++e) sum_sds += s0[e] * ds1[e];
      }
      wgmma_wait<0>();
      // split_state's lo tiles (rewritten at the next V-block's top) and the chunk end's tiles (over this region) need
      // a barrier here.
      if (!prefetch || first || last) __syncthreads();
    }

    // The next item's first V-block -> load buffer 1 (the V-blocks are done: the barrier above).
    if constexpr (L::kPrefetchNext) {
      const GradsItem next = *sNextItem;
      if (next.slot >= 0) load_vblock(next, 0, 1);
    }

    // (d) dP -> dQK (16-bit tiles), E = scale dP P; dT -> 16 bits.
    float part_e[2] = {}, col_e[kNC][2] = {};
#pragma unroll
    for (int nt = 0; nt < kNC; ++nt)
#pragma unroll
      for (int e = 0; e < 4; e += 2) {
        const int i = e < 2 ? i0 : i1, r = e / 2, j = cc0 + nt * 8 + 2 * t4;
        float rk_[2], rq_[2];
        const float2 p2 = load2<T>(sP + RowsC::at(i, j));
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          const bool lower = i >= j + u;  // Γ overflows above the diagonal under strong decay: never touch it there
          const float dp = lower ? p.scale * dP[nt][e + u] : 0.f;
          const float dqk = lower ? dp * __expf(sG[i] - sG[j + u]) : 0.f;
          const float ee = dp * (u == 0 ? p2.x : p2.y);
          part_e[r] += ee;
          col_e[nt][u] += ee;
          rk_[u] = dqk * sRk[j + u];
          rq_[u] = dqk * sRq[i];
        }
        store2<T>(sDqkRk + RowsC::at(i, j), rk_[0], rk_[1]);
        store2<T>(sDqkRq + RowsC::at(i, j), rq_[0], rq_[1]);
        store2<T>(sDt + RowsC::at(i, j), dT[nt][e], dT[nt][e + 1]);
      }
    // Qn . X1 per row (before X1 gets the dQK term), then X1 <- scale e^G X1.
    float part_qx[2] = {};
    {
#pragma unroll
      for (int nt = 0; nt < kNK; ++nt)
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
          const int i = e < 2 ? i0 : i1, c = kc0 + nt * 8 + 2 * t4;
          const float2 q2 = load2<T>(sQ + RowsK::at(i, c));
          part_qx[e / 2] += q2.x * X1[nt][e] + q2.y * X1[nt][e + 1];
        }
      const float f0 = p.scale * __expf(sG[i0]), f1 = p.scale * __expf(sG[i1]);
#pragma unroll
      for (int nt = 0; nt < kNK; ++nt) X1[nt][0] *= f0, X1[nt][1] *= f0, X1[nt][2] *= f1, X1[nt][3] *= f1;
    }
    fence_async_smem();
    __syncthreads();
    // Y = T^T dT -> sY
    {
      float acc[kNC][4] = {};
      wgmma_fence();
      wgmma_k_steps<T, kColsC, true, true, C / 16>(acc, mnmajor(sT16, 0), mnmajor(sDt, cc0), false);
      wgmma_commit();
      wgmma_wait<0>();
#pragma unroll
      for (int nt = 0; nt < kNC; ++nt) {
        const int j = cc0 + nt * 8 + 2 * t4;
        store2<T>(sY + RowsC::at(i0, j), acc[nt][0], acc[nt][1]);
        store2<T>(sY + RowsC::at(i1, j), acc[nt][2], acc[nt][3]);
      }
    }
    fence_async_smem();
    __syncthreads();
    // dA = -(Y T^T) on i > j: dbeta and dG terms with A / beta = rk_i rk_j Γ (k_i . k_j), dKK = dA beta Γ -> sDkk
    // (fp32).
    float part_da[2] = {};
    {
      float acc[kNC][4] = {}, kkt[kNC][4] = {};  // Y T^T, K K^T on rows r0.., columns cc0..
      wgmma_fence();
      wgmma_k_steps<T, kColsC, false, false, C / 16>(acc, kmajor(sY, 0), kmajor(sT16, cc0), false);
      wgmma_k_steps<T, kColsC, false, false, kK / 16>(kkt, kmajor(sK, 0), kmajor(sK, cc0), false);
      wgmma_commit();
      // dQn += dQK Kn and dKn += dQK^T Qn need only (d)'s tiles: a second group, running until (e). (At K = 256
      // they wait for (e): in flight here they made ptxas spill ~270 bytes more.)
      if constexpr (kDqkEarly) {
        wgmma_k_steps_n64<T, kColsK, false, true, C / 16>(X1, kmajor(sDqkRk, 0), mnmajor_n64(sK, kc0), true);
        wgmma_k_steps_n64<T, kColsK, true, true, C / 16>(dKn, mnmajor(sDqkRq, 0), mnmajor_n64(sQ, kc0), true);
      }
      wgmma_commit();
      wgmma_wait<1>();
#pragma unroll
      for (int nt = 0; nt < kNC; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = e < 2 ? i0 : i1, r = e / 2, j = cc0 + nt * 8 + 2 * t4 + (e & 1);
          const float gamma = i > j ? __expf(sG[i] - sG[j]) : 0.f;  // (Γ overflows above the diagonal)
          const float da = i > j ? -acc[nt][e] : 0.f, araw = sRk[i] * sRk[j] * gamma * kkt[nt][e];
          part_da[r] += da * araw;
          const float e2 = da * sBeta[i] * araw;
          part_e[r] += e2;
          col_e[nt][e & 1] += e2;
          sDkk[i * kLdT + j] = da * sBeta[i] * gamma;
        }
    }
    // Row partials: over the 4 lanes of a row (fixed order), then per column group in sRow.
    auto row_partial = [&](int quantity, const float (&part)[2]) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float x = part[r];
        x += __shfl_xor_sync(0xffffffffu, x, 1);
        x += __shfl_xor_sync(0xffffffffu, x, 2);
        if (t4 == 0) sRow[(quantity * kGroups + cg) * C + (r == 0 ? i0 : i1)] = x;
      }
    };
    auto row_sum = [&](int quantity, int i) {  // over the column groups, in order
      float x = 0.f;
#pragma unroll
      for (int group = 0; group < kGroups; ++group) x += sRow[(quantity * kGroups + group) * C + i];
      return x;
    };
    {
      const float beta_part[2] = {part_vdvb[0] + part_da[0], part_vdvb[1] + part_da[1]};
      row_partial(kRowE, part_e);
      row_partial(kRowBeta, beta_part);
      row_partial(kRowC, part_c);
      row_partial(kRowDvbM, part_dvbm);
      row_partial(kRowQX1, part_qx);
    }
    // Column sums of E: over the 8 row groups of the warp, then per row tile in sCol.
#pragma unroll
    for (int nt = 0; nt < kNC; ++nt)
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        float x = col_e[nt][u];
        x += __shfl_xor_sync(0xffffffffu, x, 4);
        x += __shfl_xor_sync(0xffffffffu, x, 8);
        x += __shfl_xor_sync(0xffffffffu, x, 16);
        if (g8 == 0) sCol[rt * C + cc0 + nt * 8 + 2 * t4 + u] = x;
      }
    {
      float x = sum_sds;
#pragma unroll
      for (int off = 16; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
      if (lane == 0) sWarp[warp] = x;
    }
    __syncthreads();
    // Every warp has waited for dA's products, the last reader of T: the next item's T -> sT16.
    if constexpr (L::kPrefetchNext) {
      const GradsItem next = *sNextItem;
      if (next.slot >= 0) {
        load_t(next);
        cp_async_commit();
      }
    }
    // (dKK + dKK^T) diag(rk) -> sSym
    for (int idx = tid; idx < C * C / 2; idx += kThreads) {
      const int i = idx / (C / 2), j = (idx % (C / 2)) * 2;
      store2<T>(sSym + RowsC::at(i, j), (sDkk[i * kLdT + j] + sDkk[j * kLdT + i]) * sRk[j],
                (sDkk[i * kLdT + j + 1] + sDkk[(j + 1) * kLdT + i]) * sRk[j + 1]);
    }
    // dG and dbeta of row tid (before the cumsum); c -> sC.
    if (tid < C) {
      const int i = tid;
      auto row = [&](int quantity) { return row_sum(quantity, i); };
      const float eG = __expf(sG[i]);
      const float kdkb = -sRk[i] * row(kRowDvbM);
      const float c = sDend[i] * sRk[i] * row(kRowC);
      const float col = (sCol[i] + sCol[C + i]) + (sCol[2 * C + i] + sCol[3 * C + i]);
      sDG[i] = row(kRowE) - col + sBeta[i] * eG * kdkb - c + p.scale * eG * sRq[i] * row(kRowQX1);
      sC[i] = c;
      if (i < len) p.dbeta[(c0 + i) * p.heads_v + hv] = row(kRowBeta) + eG * kdkb;
    }
    fence_async_smem();  // sSym
    __syncthreads();

    // (e) dg = reverse cumsum of dG, the last row adding e^{G_L} sum(S0 dS1) + sum(c) (warp 0);
    // dQn = scale e^G X1 + dQK Kn,  dKn += (dKK + dKK^T) Kn + dQK^T Qn.
    if (warp == 0) {
      float cs = sC[2 * lane] + sC[2 * lane + 1];
#pragma unroll
      for (int off = 16; off > 0; off /= 2) cs += __shfl_xor_sync(0xffffffffu, cs, off);
      float sds = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) sds += sWarp[w];
      const float a = sDG[2 * lane], b = sDG[2 * lane + 1] + (lane == 31 ? __expf(G_last) * sds + cs : 0.f);
      const float pair = a + b;
      float incl = pair;  // sum of the pairs lane.. 31
#pragma unroll
      for (int off = 1; off < 32; off *= 2) {
        const float down = __shfl_down_sync(0xffffffffu, incl, off);
        if (lane + off < 32) incl += down;
      }
      const auto floored = [&](int r) { return p.g[(c0 + r) * p.heads_v + hv] < kGdnGFloor; };
      if (2 * lane < len) p.dg[(c0 + 2 * lane) * p.heads_v + hv] = floored(2 * lane) ? 0.f : incl;
      if (2 * lane + 1 < len) p.dg[(c0 + 2 * lane + 1) * p.heads_v + hv] = floored(2 * lane + 1) ? 0.f : incl - a;
    }
    // (the dQK terms went out with dA's products where kDqkEarly)
    wgmma_fence();
    if constexpr (!kDqkEarly) {
      wgmma_k_steps_n64<T, kColsK, false, true, C / 16>(X1, kmajor(sDqkRk, 0), mnmajor_n64(sK, kc0), true);
      wgmma_k_steps_n64<T, kColsK, true, true, C / 16>(dKn, mnmajor(sDqkRq, 0), mnmajor_n64(sQ, kc0), true);
    }
    wgmma_k_steps_n64<T, kColsK, false, true, C / 16>(dKn, kmajor(sSym, 0), mnmajor_n64(sK, kc0), true);
    wgmma_commit();
    wgmma_wait<0>();

    // (f) dq, dk rows: the l2norm backward dx = r dy - r^3 x (x . dy) (x raw) in the input dtype, or fp32 per value
    // head for the host to sum over the group.
    if (p.dqk_per_value_head) {
#pragma unroll
      for (int nt = 0; nt < kNK; ++nt)
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
          const int i = e < 2 ? i0 : i1, c = kc0 + nt * 8 + 2 * t4;
          if (i >= len) continue;
          const int64_t off = ((c0 + i) * p.heads_v + hv) * kK + c;
          *reinterpret_cast<float2*>(static_cast<float*>(p.dq) + off) = make_float2(X1[nt][e], X1[nt][e + 1]);
          *reinterpret_cast<float2*>(static_cast<float*>(p.dk) + off) = make_float2(dKn[nt][e], dKn[nt][e + 1]);
        }
    } else {
      if (p.l2norm) {
        float part_q[2] = {}, part_k[2] = {};
#pragma unroll
        for (int nt = 0; nt < kNK; ++nt)
#pragma unroll
          for (int e = 0; e < 4; e += 2) {
            const int i = e < 2 ? i0 : i1, c = kc0 + nt * 8 + 2 * t4;
            const float2 q2 = load2<T>(sQ + RowsK::at(i, c)), k2 = load2<T>(sK + RowsK::at(i, c));
            part_q[e / 2] += q2.x * X1[nt][e] + q2.y * X1[nt][e + 1];
            part_k[e / 2] += k2.x * dKn[nt][e] + k2.y * dKn[nt][e + 1];
          }
        row_partial(kRowQdQ, part_q);
        row_partial(kRowKdK, part_k);
      }
      __syncthreads();
      // dq, dk rows into sQ, sK in place (each element replaces the q or k element it reads; no other thread reads it),
      // then to global memory in 16-byte chunks (the fragments' own stores would be 4 bytes each).
#pragma unroll
      for (int e = 0; e < 4; e += 2) {
        const int i = e < 2 ? i0 : i1;
        float aq = 1.f, bq = 0.f, ak = 1.f, bk = 0.f;  // dx = a dy - b x
        if (p.l2norm) {
          const float rq = sRq[i], rk = sRk[i];
          aq = rq, bq = rq * rq * rq * row_sum(kRowQdQ, i);
          ak = rk, bk = rk * rk * rk * row_sum(kRowKdK, i);
        }
#pragma unroll
        for (int nt = 0; nt < kNK; ++nt) {
          const int at = RowsK::at(i, kc0 + nt * 8 + 2 * t4);
          const float2 q2 = load2<T>(sQ + at), k2 = load2<T>(sK + at);
          store2<T>(sQ + at, aq * X1[nt][e] - bq * q2.x, aq * X1[nt][e + 1] - bq * q2.y);
          store2<T>(sK + at, ak * dKn[nt][e] - bk * k2.x, ak * dKn[nt][e + 1] - bk * k2.y);
        }
      }
      __syncthreads();
      T* dq = static_cast<T*>(p.dq);
      T* dk = static_cast<T*>(p.dk);
      for (int idx = tid; idx < len * (kK / 8); idx += kThreads) {
        const int r = idx / (kK / 8), c = (idx % (kK / 8)) * 8;
        const int64_t off = ((c0 + r) * p.heads_qk + h) * kK + c;
        *reinterpret_cast<uint4*>(dq + off) = *reinterpret_cast<const uint4*>(sQ + RowsK::at(r, c));
        *reinterpret_cast<uint4*>(dk + off) = *reinterpret_cast<const uint4*>(sK + RowsK::at(r, c));
      }
    }  // (not dqk_per_value_head)
    if constexpr (!L::kPrefetchNext) break;
    // The next item writes sQ, sK (read by the stores above) and sNextItem (read here): a barrier first.
    item = *sNextItem;
    prefetched = true;  // (its first V-block and T: loaded during this item's chunk end)
    __syncthreads();
  }  // items
}

}  // namespace mom_ops
