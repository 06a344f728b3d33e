// The split forward's outputs (step 3 of gdn_split_kernels.cuh) on wgmma, for V-blocks of 128 columns:
//   O = scale (rq e^G (Q S0) + QKm V_new),  QKm = (Q K^T) rq_i rk_j e^{G_i - G_j} (i >= j), G and rk from prep's g_rk.
// CTA per (chunk slot, value head, 128 value columns), two warpgroups: both form all of Q K^T (it is each one's A
// operand from registers, 64 x 64 x K, cheap), warpgroup w then does the 64 columns 64 w .. of Q S0 and QKm V_new.
// The tiles are unpadded (wgmma's 128-byte swizzle), so two CTAs fit on an SM at K = 256 (113 KB: S0's rows 128 ..
// go into k's region once Q K^T is formed) and one CTA's loads hide behind the other's products; the mma.sync
// kernel it replaces (gdn_output_kernel) held one CTA per SM there and waited for its loads.
// Same roundings as gdn_output_kernel (16-bit QKm; fp32 sums in k-steps of 16 in the same order).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/copy_rows.cuh"
#include "common/cp_async.cuh"
#include "common/env_flag.h"
#include "common/named_barrier.cuh"
#include "common/stmatrix.cuh"
#include "common/tile_layout.h"
#include "common/wgmma.cuh"
#include "common/wgmma_steps.cuh"
#include "gdn/chunk_prologue.cuh"
#include "gdn/gdn_split_kernels.cuh"

namespace mom_ops {

constexpr int kGdnOutputWgThreads = 256;

// Where the output V-block is 128 columns: this kernel, unless MOM_OPS_GDN_OUTPUT_WGMMA=0 (gdn_output_kernel).
inline bool gdn_output_on_wgmma() {
  return !env_is("MOM_OPS_GDN_OUTPUT_WGMMA", "0");
}

// Shared memory (byte offsets, every tile on a 1 KB boundary).
template <typename T, int kK>
struct GdnOutputWgSmem {
  static constexpr int C = kGdnChunk, kBV = 128;
  static constexpr int kS0Rows = kK > 128 ? 128 : kK;  // S0 rows per part (two parts at K = 256)
  static constexpr int kTileQK = C * kK * 2;            // q or k [64][kK] (Sw128Slabs<64>)
  static constexpr int kQ = 0;
  static constexpr int kKey = kQ + kTileQK;             // k | (K = 256) S0 rows 128 .. 255
  static constexpr int kS0 = kKey + kTileQK;            // S0 rows 0 .. kS0Rows - 1, [kS0Rows][128] (Sw128Slabs)
  static constexpr int kVn = kS0 + kS0Rows * kBV * 2;   // V_new [64][128] | the o tile
  static constexpr int kVec = kVn + C * kBV * 2;        // f32 [64] each: G, rk (prep's g_rk), rq
  static constexpr int kBytes = kVec + 3 * C * 4;
  static constexpr int kCtasPerSm = ctas_per_sm_by_smem(kBytes, 2);  // (2: <= 128 registers per thread)
  static_assert(kK <= 128 || kS0Rows * kBV * 2 <= kTileQK, "S0's second part fits k's region");
};

// The chain's shared memory that leaves room for one of these CTAs on its SM (gdn_chain_beside_output_kernel), and
// whether a chain of kBV columns fits in it (K <= 128 at 16 columns; K = 256 needs 161 KB for its two stages).
template <typename T, int kK>
constexpr int chain_budget_beside_output() {
  return kSmemPerSm - 2 * 1024 - GdnOutputWgSmem<T, kK>::kBytes;
}
template <typename T, int kK, int kBV>
constexpr bool chain_fits_beside_output() {
  return kBV == 16 && GdnChainFwdSmem<T, kK, kBV, chain_budget_beside_output<T, kK>()>::kBytes <=
                          chain_budget_beside_output<T, kK>();
}

template <typename T, int kK>
__device__ __forceinline__ void gdn_output_wgmma_item(const GdnSplitParams& p, int64_t item) {
  using L = GdnOutputWgSmem<T, kK>;
  constexpr int C = kGdnChunk, BV = L::kBV, kS0Rows = L::kS0Rows, kThreads = kGdnOutputWgThreads;
  using Sw = Sw128Slabs<C>;          // q, k, V_new, o
  using SwS0 = Sw128Slabs<kS0Rows>;  // each part of S0
  extern __shared__ __align__(1024) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem + L::kQ);
  T* sK = reinterpret_cast<T*>(smem + L::kKey);
  T* sS0 = reinterpret_cast<T*>(smem + L::kS0);
  T* sS0hi = sK;  // K = 256: S0 rows 128 ..
  T* sVn = reinterpret_cast<T*>(smem + L::kVn);
  float* sG = reinterpret_cast<float*>(smem + L::kVec);
  float *sRk = sG + C, *sRq = sRk + C;

  const int tid = threadIdx.x, wg = tid / 128, wr = (tid % 128) / 32, lane = tid % 32, g8 = lane / 4, t4 = lane % 4;
  OutputCta<T> cta;
  if (!output_cta(p, item, BV, kK, cta)) return;
  const int v0 = cta.v0, hv = cta.hv, h = cta.h, len = cta.len;
  const int64_t slot = cta.slot, c0 = cta.c0;

  // Commit groups: (0) q, k, G, rk; (1) S0 rows 0 ..; (2) V_new; at K = 256 (3) S0 rows 128 .. once k is free.
  load_chunk_qk<T, kK, Sw, kThreads>(sQ, sK, cta.q, cta.k, c0, len, p.heads_qk, h, tid);
  if (tid < 2 * C / 4) cp_async16(sG + 4 * tid, p.g_rk + (slot * p.heads_v + hv) * 2 * C + 4 * tid, true);
  cp_async_commit();
  wait_for_chunk(p, slot, hv);  // S0 and V_new come from the chain
  auto load_s0_rows = [&](T* dst, int row0) {
    copy_rows_async<kS0Rows, BV, SwS0, kThreads>(dst, cta.s0 + int64_t(row0) * p.dim_v, p.dim_v, kS0Rows, tid);
    cp_async_commit();
  };
  load_s0_rows(sS0, 0);
  copy_rows_async<C, BV, Sw, kThreads>(sVn, cta.vn + (c0 * p.heads_v + hv) * p.dim_v + v0,
                                       int64_t(p.heads_v) * p.dim_v, len, tid);
  cp_async_commit();
  cp_async_wait<2>();  // q, k, G, rk
  fence_async_smem();  // cp.async lands through the generic proxy; wgmma reads through the async one
  __syncthreads();
  chunk_q_norms<T, kK, Sw>(sQ, sRq, p.l2norm, tid);
  __syncthreads();

  // Q K^T, masked and scaled as gdn_output_kernel does, into 16-bit A fragments (rows 16 wr + g8 (+ 8)).
  auto kmajor = [](const T* x) { return kmajor_steps<Sw>(x, 0); };
  uint32_t qk[C / 16][4];
  {
    float acc[8][4];
    wgmma_fence();
    wgmma_k_steps<T, 64, false, false, kK / 16>(acc, kmajor(sQ), kmajor(sK), false);
    wgmma_commit();
    wgmma_wait<0>();
    if constexpr (kK > 128) {
      __syncthreads();  // both warpgroups are done with k: S0's second part goes into its region
      load_s0_rows(sS0hi, 128);
    }
    const int i0 = 16 * wr + g8, i1 = i0 + 8;
    const float G0 = sG[i0], G1 = sG[i1], f0 = sRq[i0], f1 = sRq[i1];
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = e < 2 ? i0 : i1, j = 8 * n + 2 * t4 + (e & 1);
        acc[n][e] = i >= j ? (e < 2 ? f0 : f1) * sRk[j] * __expf((e < 2 ? G0 : G1) - sG[j]) * acc[n][e] : 0.f;
      }
#pragma unroll
    for (int ks = 0; ks < C / 16; ++ks) acc_to_a<T>(qk[ks], acc, ks, t4, [](int) { return 1.f; });
  }

  // O = rq e^G (Q S0) + QKm V_new, this warpgroup's columns 64 wg .. (B operands MN-major: S0 [k][v], V_new [j][v]).
  cp_async_wait<(kK > 128 ? 1 : 0)>();  // S0 rows 0 .., V_new
  fence_async_smem();
  __syncthreads();
  auto s0_part = [&](const T* part) { return [=](int s) { return part + SwS0::at(16 * s, 64 * wg); }; };
  float acc[8][4];
  wgmma_fence();
  wgmma_k_steps<T, 64, false, true, kS0Rows / 16>(acc, kmajor(sQ), s0_part(sS0), false);
  wgmma_commit();
  if constexpr (kK > 128) {
    cp_async_wait<0>();  // S0 rows 128 ..
    fence_async_smem();
    __syncthreads();
    wgmma_fence();
    wgmma_k_steps<T, 64, false, true, kS0Rows / 16>(acc, [&](int s) { return sQ + Sw::at(0, 128 + 16 * s); },
                                                    s0_part(sS0hi), true);
    wgmma_commit();
  }
  wgmma_wait<0>();
  {
    const int i0 = 16 * wr + g8, i1 = i0 + 8;
    const float e0 = sRq[i0] * __expf(sG[i0]), e1 = sRq[i1] * __expf(sG[i1]);
#pragma unroll
    for (int n = 0; n < 8; ++n) acc[n][0] *= e0, acc[n][1] *= e0, acc[n][2] *= e1, acc[n][3] *= e1;
  }
  wgmma_fence();
  wgmma_rs_k_steps<T, true, C / 16>(acc, qk, [&](int s) { return sVn + Sw::at(16 * s, 64 * wg); }, true);
  wgmma_commit();
  wgmma_wait<0>();
  // Each warp's wait covers its own rows only: another warp of the warpgroup may still be reading V_new's slab.
  named_bar_sync(1 + wg, 128);

  // o = scale O -> V_new's slab wg (only this warpgroup read it) by stmatrix, then 16-byte rows < len to global.
  {
    const int mat = lane / 8, mrow = lane % 8;  // lane 8 m + r: row r of matrix m (tile 2 j + m / 2, rows 8 (m % 2))
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      uint32_t x[4];
      acc_to_a<T>(x, acc, j, t4, [&](int) { return p.scale; });
      store_matrix_x4(x, sVn + Sw::at(16 * wr + 8 * (mat % 2) + mrow, 64 * wg + 16 * j + 8 * (mat / 2)));
    }
  }
  named_bar_sync(1 + wg, 128);
  for (int idx = tid % 128; idx < C * 8; idx += 128) {  // 64 rows x 8 chunks of 16 bytes (columns 64 wg ..)
    const int r = idx / 8, col = 64 * wg + (idx % 8) * 8;
    if (r < len)
      *reinterpret_cast<uint4*>(cta.o + ((c0 + r) * p.heads_v + hv) * p.dim_v + v0 + col) =
          *reinterpret_cast<const uint4*>(sVn + Sw::at(r, col));
  }
}

// A CTA per item.
template <typename T, int kK>
__global__ void __launch_bounds__(kGdnOutputWgThreads, GdnOutputWgSmem<T, kK>::kCtasPerSm)
    gdn_output_wgmma_kernel(GdnSplitParams p) {
  output_items<false>(p, GdnOutputWgSmem<T, kK>::kBV, [&](int64_t item) { gdn_output_wgmma_item<T, kK>(p, item); });
}

// Items claimed from the plan's counter (split_items.cuh; K = 128), within 96 registers so that a CTA fits beside a
// chain CTA (gdn_chain_beside_output_kernel: 384 x 104 + 256 x 96 registers). Under __launch_bounds__(256, 2) the
// loop took 128, and beside the chain the outputs ran on the four SMs without a chain CTA (H200 n1, nothing cut: the
// output kernel ended 200 us after the chain). The item is called out of line: inlined into the loop it spilled 200
// bytes at 96 registers (the invariants hoisted out of the loop); out of line none. Its parameters are
// __grid_constant__, so that the item's reference to them is to the parameter space (without, every thread copied
// the 264-byte struct to local memory).
template <typename T, int kK>
__device__ __noinline__ void gdn_output_wgmma_item_call(const GdnSplitParams& p, int64_t item) {
  gdn_output_wgmma_item<T, kK>(p, item);
}
template <typename T, int kK>
__global__ void __maxnreg__(96) gdn_output_wgmma_items_kernel(const __grid_constant__ GdnSplitParams p) {
  output_items<true>(p, GdnOutputWgSmem<T, kK>::kBV, [&](int64_t item) { gdn_output_wgmma_item_call<T, kK>(p, item); });
}

}  // namespace mom_ops
