// Split state-gradient chain of the gated-delta backward, for few long sequences (the forward's split, for the
// backward; gdn_bwd_chain_kernel.cuh is the one-kernel chain). Of the chain's per-chunk work only two products read
// dS; the rest is chunk-local and runs for all chunks at once first:
//   1. gdn_bwd_prep_kernel, CTA per (chunk slot, value head): G, rk -> g_rk, and for every 64 value columns
//        P^T dO -> pdo (fp32),  diag(scale rq e^G) dO -> doq (16-bit),
//      P = scale rq_i rk_j e^{G_i - G_j} (q_i . k_j) (i >= j), as in the chain kernel.
//   2. gdn_bwd_chain_split_kernel, CTA per (sequence, value head, 64, 32 or 16 value columns), dS [K, BV] fp32 in the
//      registers of 8 compute warps, chunks in reverse, load warps bringing the next ones' q, k, W, doq, pdo, G,
//      rk while this one computes (chain_stages.cuh):
//        dS -> ds1 (16-bit), dVn = rk_i e^{G_L - G_i} (K dS)_i + pdo_i,  dS <- e^{G_L} dS + Q^T doq - W^T dVn.
// ds1 and dh0 are what the chain kernel writes, so the grads kernel runs unchanged after it. Roundings: the chain
// kernel's 16-bit P, dO, doq, dS, dVn operands; dVn's two terms are summed in fp32 in another order (not bitwise
// equal to the chain kernel). At K = 256 two stages of q, k and W do not fit in shared memory: q, which only the
// chunk's last product reads, has one buffer outside the stages there, filled by the compute warps while they form dVn.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/copy_rows.cuh"
#include "common/cp_async.cuh"
#include "common/mma.cuh"
#include "common/opaque.cuh"
#include "common/tile_layout.h"
#include "common/tma.cuh"
#include "gdn/chain_stages.cuh"
#include "gdn/chunk_prologue.cuh"
#include "gdn/gdn_bwd_params.h"
#include "gdn/gdn_fwd_kernel.cuh"
#include "gdn/wg_state_tile.cuh"
#include "gdn/gdn_split_kernels.cuh"
#include "gdn/state_tile.cuh"

namespace mom_ops {

// ---------------------------------------------------------------- 1. chunk-local terms

template <typename T, int kK>
struct GdnBwdPrepSmem {
  static constexpr int C = kGdnChunk;
  static constexpr int kLdK = kK + 8, kLdV = kSplitBV + 8, kLdC = C + 8;
  static constexpr int bytes16(int rows, int ld) { return rows * ld * 2; }
  static constexpr int kQ = 0;                           // q [64][kLdK] raw
  static constexpr int kKey = kQ + bytes16(C, kLdK);     // k [64][kLdK] raw
  static constexpr int kDo = kKey + bytes16(C, kLdK);    // dO [64][kLdV], one 64-column block at a time
  static constexpr int kP = kDo + bytes16(C, kLdV);      // P [64][kLdC]
  static constexpr int kVec = kP + bytes16(C, kLdC);     // f32 [64] each: G, rq, rk
  static constexpr int kBytes = kVec + 3 * C * 4;
};

// A CTA per (chunk slot, value head), also with pieces (as the forward's prep: gdn_split_kernels.cuh).
template <typename T, int kK>
__global__ void __launch_bounds__(kGdnThreads) gdn_bwd_prep_kernel(GdnBwdSplitParams p) {
  using L = GdnBwdPrepSmem<T, kK>;
  constexpr int C = kGdnChunk, BV = kSplitBV, kLdK = L::kLdK, kLdV = L::kLdV, kLdC = L::kLdC;
  constexpr int kNTo = BV / 2 / 8;  // per-warp output column tiles of a 64-column block
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem + L::kQ);
  T* sK = reinterpret_cast<T*>(smem + L::kKey);
  T* sDo = reinterpret_cast<T*>(smem + L::kDo);
  T* sP = reinterpret_cast<T*>(smem + L::kP);
  float* sG = reinterpret_cast<float*>(smem + L::kVec);
  float *sRq = sG + C, *sRk = sRq + C;

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g8 = lane / 4, t4 = lane % 4;
  const int rt = warp % 4, ch = warp / 4, r0 = 16 * rt, i0 = r0 + g8, i1 = i0 + 8;
  const int64_t item = blockIdx.x;
  const int hv = int(item % p.heads_v), h = hv / (p.heads_v / p.heads_qk);
  int seq, len;
  int64_t bos, eos, c0;
  if (!split_slot_chunk(p, p.pieces, hv, item / p.heads_v, seq, bos, eos, c0, len)) return;  // (cut: the ws chain's)
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* dout = static_cast<const T*>(p.dout);
  T* doq = static_cast<T*>(p.doq);

  auto load_do = [&](int v0) {  // dO rows (zeros past len), columns v0 .. v0 + 63
    copy_rows_async<C, BV, PaddedRows<kLdV>, kGdnThreads>(sDo, dout + (c0 * p.heads_v + hv) * p.dim_v + v0,
                                                          int64_t(p.heads_v) * p.dim_v, len, tid);
    cp_async_commit();
  };
  load_chunk_qk<T, kK, PaddedRows<kLdK>, kGdnThreads>(sQ, sK, q, k, c0, len, p.heads_qk, h, tid);
  cp_async_commit();
  load_do(0);
  if (tid < C) sG[tid] = tid < len ? gdn_floor_g(p.g[(c0 + tid) * p.heads_v + hv]) : 0.f;
  cp_async_wait<1>();  // q, k
  __syncthreads();
  chunk_norms_and_cumsum<T, kK, PaddedRows<kLdK>>(sQ, sK, sG, sRq, sRk, p.l2norm, tid);
  __syncthreads();
  // G and rk for the chain (all 64 rows: past len, G stays G[len - 1] and the zero rows' rk is finite).
  if (tid < 2 * C) p.g_rk[(item * 2 + tid / C) * C + tid % C] = tid < C ? sG[tid] : sRk[tid - C];

  causal_p_rows<T, kK, kLdK, kLdC>(sQ, sK, sG, sRq, sRk, p.scale, sP, r0, ch, lane);

  // Per 64 value columns: doq rows -> global; P^T dO rows r0.., columns of half ch -> global fp32.
  const float f0 = p.scale * sRq[i0] * __expf(sG[i0]), f1 = p.scale * sRq[i1] * __expf(sG[i1]);
  for (int v0 = 0; v0 < p.dim_v; v0 += BV) {
    if (v0 > 0) {
      __syncthreads();  // every warp is done with the previous block's dO
      load_do(v0);
    }
    cp_async_wait<0>();
    __syncthreads();  // dO (and, the first time, sP)
    const int vc0 = ch * (BV / 2);
    float acc[kNTo][4] = {};
    mma_rows_at<T, C / 16, kNTo>(acc, sP + r0, kLdC, sDo + vc0, kLdV, lane);  // P^T dO
#pragma unroll
    for (int nt = 0; nt < kNTo; ++nt) {
      const int c = vc0 + nt * 8 + 2 * t4;
      const int64_t o0 = ((c0 + i0) * p.heads_v + hv) * p.dim_v + v0 + c, o1 = ((c0 + i1) * p.heads_v + hv) * p.dim_v + v0 + c;
      if (i0 < len) {
        *reinterpret_cast<float2*>(p.pdo + o0) = make_float2(acc[nt][0], acc[nt][1]);
        store2<T>(doq + o0, f0 * to_f32<T>(sDo[i0 * kLdV + c]), f0 * to_f32<T>(sDo[i0 * kLdV + c + 1]));
      }
      if (i1 < len) {
        *reinterpret_cast<float2*>(p.pdo + o1) = make_float2(acc[nt][2], acc[nt][3]);
        store2<T>(doq + o1, f1 * to_f32<T>(sDo[i1 * kLdV + c]), f1 * to_f32<T>(sDo[i1 * kLdV + c + 1]));
      }
    }
  }
}

// ---------------------------------------------------------------- 2. the state-gradient chain

// kWgmma: the layout of the wgmma chain (WgStateTile): sS, sDvn and the stages' doq unpadded in wgmma's swizzle,
// every tile on a 1 KB boundary.
template <typename T, int kK, int kBV, bool kWgmma = false>
struct GdnBwdChainSplitSmem {
  static constexpr int C = kGdnChunk;
  static constexpr int kLdV = kWgmma ? kBV : kBV + 8, kLdU = kBV + 4;
  static constexpr int bytes16(int rows, int ld) { return rows * ld * 2; }
  // sS [kK][kLdV], sDvn and doq [64][kLdV]: padded rows (ldmatrix), or wgmma's layout.
  using SRows = std::conditional_t<kWgmma, WgColumnRows<kBV, kK>, PaddedRows<kLdV>>;
  using VRows = std::conditional_t<kWgmma, WgColumnRows<kBV, C>, PaddedRows<kLdV>>;
  // q in the stages at K <= 128; at K = 256 (two stages of q, k, W and the rest would need 252 KB) in a buffer of
  // its own, as only the dS update reads it: chunk c's q loads while chunk c's dVn is formed.
  static constexpr bool kQInStage = kK <= 128;
  // q, k, W [64][kK] in 64-column slabs of the 128-byte swizzle, as the forward chain's W and K (GdnChainFwdSmem).
  using KRows = Sw128Slabs<C>;
  static constexpr int kTileK = bytes16(C, kK);
  // kStages stages (chunks c, c - 1, ...) of: (q,) k, W, doq [64][kLdV] 16-bit, pdo [64][kLdU] fp32, G and rk [64].
  static constexpr int kStageQ = 0, kStageK = kQInStage ? kTileK : 0, kStageW = kStageK + kTileK;
  static constexpr int kStageDoq = kStageW + kTileK;
  static constexpr int kStagePdo = kStageDoq + bytes16(C, kLdV);
  static constexpr int kStageG = kStagePdo + C * kLdU * 4;
  static constexpr int kStage = (kStageG + 2 * C * 4 + 1023) / 1024 * 1024;  // (the TMA boxes' 1 KB alignment)
  static constexpr int kQBytes = kQInStage ? 0 : kTileK;
  static constexpr int kMbarBytes = 8 * ChainStages::kMaxStages;  // the stages' TMA mbarriers
  static constexpr int kOther = kQBytes + bytes16(kK, kLdV) + bytes16(C, kLdV) + kMbarBytes;  // sQ, sS, sDvn, bars
  static constexpr int kStages = chain_stage_count(kStage, kOther);
  static constexpr int kQ = kStages * kStage;             // q (KRows) where not in the stages (K = 256; 1 KB aligned)
  static constexpr int kS = kQ + kQBytes;                 // dS [kK][kLdV] in 16 bits: K dS's B operand and ds1
  static constexpr int kDvn = kS + bytes16(kK, kLdV);     // -dVn [64][kLdV]
  static constexpr int kMbar = kDvn + bytes16(C, kLdV);   // uint64_t [kStages]
  static constexpr int kBytes = kMbar + kMbarBytes;
};

// Per chunk (in reverse), as the forward's split chain: (1) = full (ChainStages): this chunk's stage has landed and
// dS is in sS. (2) = compute_sync: -dVn is in sDvn and ds1 has been copied out; then the dS update, after which the
// stage goes back to the load warps. kBV: 64, or 32 or 16 for few chains (split_chain_value_block). kWgmma: both
// products on wgmma, dS in WgStateTile's accumulators (as the forward's chain, gdn_split_kernels.cuh).
// Kernels: gdn_bwd_chain_split_kernel and gdn_bwd_chain_split_wgmma_kernel below.
template <typename T, int kK, int kBV, bool kWgmma>
__device__ __forceinline__ void gdn_bwd_chain_split(const GdnBwdSplitParams& p) {
  using L = GdnBwdChainSplitSmem<T, kK, kBV, kWgmma>;
  static_assert(L::kBytes <= kSmemPerCta, "two stages (and q) fit in shared memory");
  constexpr int C = kGdnChunk, BV = kBV, kLdV = L::kLdV, kLdU = L::kLdU;
  using KRows = typename L::KRows;
  using SRows = typename L::SRows;
  using VRows = typename L::VRows;
  using ST = std::conditional_t<kWgmma, WgStateTile<kK, BV>, StateTile<kK, BV>>;  // dS's register tiles
  constexpr int kMT = ST::kMT, kNT = ST::kNT, kNTo = BV / 2 / 8;
  extern __shared__ __align__(1024) unsigned char smem[];
  T* sS = reinterpret_cast<T*>(smem + L::kS);
  T* sDvn = reinterpret_cast<T*>(smem + L::kDvn);
  T* sQ_own = reinterpret_cast<T*>(smem + L::kQ);  // used where q is not in the stages
  auto stage16 = [&](int s, int off) { return reinterpret_cast<T*>(smem + s * L::kStage + off); };
  auto stage_pdo = [&](int s) { return reinterpret_cast<float*>(smem + s * L::kStage + L::kStagePdo); };
  auto stage_g = [&](int s) { return reinterpret_cast<float*>(smem + s * L::kStage + L::kStageG); };  // G, rk

  // On wgmma, warp through a shuffle (warp-uniform to the compiler; else ptxas serialises the wgmma, C7520).
  const int tid = threadIdx.x, lane = tid % 32, warp = kWgmma ? __shfl_sync(0xffffffffu, tid / 32, 0) : tid / 32;
  const int g8 = lane / 4, t4 = lane % 4;
  const ChainCta cta = chain_cta(p, p.seq_order, p.dim_v / BV, BV, kK);
  const int seq = cta.seq, hv = cta.hv, h = cta.h, v0 = cta.v0;
  if (piece_is_cut(p.pieces, seq, hv, p.heads_v)) return;  // the ws chain's, in pieces
  const int64_t bos = cta.bos, eos = cta.eos, slot0 = chunk_slot(p, seq, bos);
  const int64_t num_chunks = (eos - bos + C - 1) / C;

  // Step i walks chunk c = num_chunks - 1 - i (the last one first).
  if (ChainStages::is_load_warp(kWgmma ? 32 * warp : tid)) {  // q, k, W, doq, pdo (zero rows past the end), G, rk
    const int ltid = tid - ChainStages::kComputeThreads;
    const int64_t qk_ld = int64_t(p.heads_qk) * kK, w_ld = int64_t(p.heads_v) * kK, v_ld = int64_t(p.heads_v) * p.dim_v;
    const T* q = static_cast<const T*>(p.q) + h * kK;
    const T* k = static_cast<const T*>(p.k) + h * kK;
    const T* w = static_cast<const T*>(p.w) + hv * kK;
    const T* doq = static_cast<const T*>(p.doq) + (hv * p.dim_v + v0);
    const float* pdo = p.pdo + (hv * p.dim_v + v0);
    // chunk c's doq, pdo, G and rk (rows from c0, len of them) into stage s by cp.async, whichever way the rest comes
    auto load_rest = [&](int s, int64_t c, int64_t c0, int len) {
      if constexpr (kWgmma) {
        copy_rows_async<C, BV, VRows, ChainStages::kLoadThreads>(stage16(s, L::kStageDoq), doq + c0 * v_ld, v_ld, len,
                                                                 ltid);
      } else {
        load_rows<BV * sizeof(T)>(stage16(s, L::kStageDoq), kLdV, doq + c0 * v_ld, v_ld, len, ltid);
      }
      load_rows<BV * 4>(stage_pdo(s), kLdU, pdo + c0 * v_ld, v_ld, len, ltid);
      const float* g_rk = p.g_rk + ((slot0 + c) * p.heads_v + hv) * 2 * C;
      if (ltid < 2 * C / 4) cp_async16(stage_g(s) + 4 * ltid, g_rk + 4 * ltid, true);  // 2 C floats
    };
    if (p.chain_tma) {  // (q,) k and W as 64 x 64 boxes on the stage's mbarrier; the rest by cp.async as below
      uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L::kMbar);
      if (ltid == 0) {
        for (int s = 0; s < L::kStages; ++s) mbarrier_init(bars + s, 1);
        fence_mbarrier_init();
      }
      named_bar_sync(ChainStages::kLoads, ChainStages::kLoadThreads);
      constexpr int kTiles = L::kQInStage ? 3 : 2;
      constexpr uint32_t kTileBytes = kTiles * C * kK * 2;  // whole boxes (rows past the tensor count too)
      ChainStages::produce<L::kStages, kWgmma>(
          num_chunks,
          [&](int s, int64_t i) {
            const int64_t c = num_chunks - 1 - i, c0 = bos + c * C;
            if (ltid == 0) {
              mbarrier_expect_tx(bars + s, kTileBytes);
#pragma unroll
              for (int col = 0; col < kK; col += 64) {
                const int at = KRows::at(0, col);
                if constexpr (L::kQInStage) tma_load_3d(stage16(s, L::kStageQ) + at, &p.q_map, col, h, int(c0), bars + s);
                tma_load_3d(stage16(s, L::kStageK) + at, &p.k_map, col, h, int(c0), bars + s);
                tma_load_3d(stage16(s, L::kStageW) + at, &p.w_map, col, hv, int(c0), bars + s);
              }
            }
            load_rest(s, c, c0, int(min(int64_t(C), eos - c0)));
          },
          [&](int s, int64_t j) {  // chunk j's boxes have landed; rows past the sequence (the next one's) -> 0
            mbarrier_wait(bars + s, uint32_t(j / L::kStages) % 2);
            const int len = int(min(int64_t(C), eos - (bos + (num_chunks - 1 - j) * C)));
            if (len < C) {
              zero_stage_rows<kK, L::kQInStage ? 3 : 2>(stage16(s, L::kStageK), stage16(s, L::kStageW),
                                                        stage16(s, L::kStageQ), len, ltid);
              // ordered before the stage's next TMA refill, which writes the same bytes through the async proxy (the
              // wgmma chain's hand-over fences every chunk anyway: its readers are async too)
              if constexpr (!kWgmma) fence_async_smem();
            }
          });
      return;
    }
    ChainStages::produce<L::kStages, kWgmma>(num_chunks, [&](int s, int64_t i) {
      const int64_t c = num_chunks - 1 - i, c0 = bos + c * C;
      const int len = int(min(int64_t(C), eos - c0));
      constexpr int kCols = kK < 128 ? kK : 128, kThreads = ChainStages::kLoadThreads;
#pragma unroll
      for (int col = 0; col < kK; col += kCols) {  // (at most 128 columns at a time: passes of 8 or more rows)
        const int at = KRows::at(0, col);
        if constexpr (L::kQInStage) {
          copy_rows_async<C, kCols, KRows, kThreads>(stage16(s, L::kStageQ) + at, q + c0 * qk_ld + col, qk_ld, len,
                                                     ltid);
        }
        copy_rows_async<C, kCols, KRows, kThreads>(stage16(s, L::kStageK) + at, k + c0 * qk_ld + col, qk_ld, len, ltid);
        copy_rows_async<C, kCols, KRows, kThreads>(stage16(s, L::kStageW) + at, w + c0 * w_ld + col, w_ld, len, ltid);
      }
      load_rest(s, c, c0, len);
    });
    return;
  }

  const int rt = warp % 4, ch = warp / 4, r0 = 16 * rt, i0 = r0 + g8, i1 = i0 + 8;
  // This CTA's columns of dS at the end of chunk slot0 + c: ds1 + c * slot_stride, rows of p.dim_v.
  T* ds1 = static_cast<T*>(p.ds1) + (slot0 * p.heads_v + hv) * int64_t(kK) * p.dim_v + v0;
  const int64_t slot_stride = int64_t(p.heads_v) * kK * p.dim_v;

  float dS[kMT][kNT][4];
  auto state_index = [&](int kk, int vv) { return cta.state_index(p.v_first, kK, p.dim_v, kk, vv); };
  ST::for_each(dS, warp, lane, [&](float& x, int kk, int vv) {
    x = p.dht != nullptr ? p.dht[state_index(kk, vv)] : 0.f;
  });

  for (int64_t i = 0; i < num_chunks; ++i) {
    const int64_t c = num_chunks - 1 - i;
    const int stage = int(i % L::kStages);
    if constexpr (kWgmma) {
      ST::store(sS, dS, warp, lane);  // dS at this chunk's end in 16 bits (ds1's rounding)
      fence_async_smem();             // (read by wgmma after (1))
    } else {
      ST::store(sS, kLdV, dS, warp, lane);
    }
    ChainStages::wait_full<L::kStages>(i);  // (1)
    const T *sK = stage16(stage, L::kStageK), *sW = stage16(stage, L::kStageW);
    const T* sQ = L::kQInStage ? stage16(stage, L::kStageQ) : sQ_own;
    if constexpr (!L::kQInStage) {  // every compute warp is past the previous chunk's update, q's last reader
      const int64_t c0 = bos + c * C;
      copy_rows_async<C, kK, KRows, ChainStages::kComputeThreads>(
          sQ_own, static_cast<const T*>(p.q) + (c0 * p.heads_qk + h) * kK, int64_t(p.heads_qk) * kK,
          int(min(int64_t(C), eos - c0)), tid);
      cp_async_commit();
    }
    const T* sDoq = stage16(stage, L::kStageDoq);
    const float* sPdo = stage_pdo(stage);
    const float *sG = stage_g(stage), *sRk = sG + C;
    const float G_last = sG[C - 1], decay = __expf(G_last);

    // dVn rows r0.., columns of half ch: rk e^{G_L - G} (K dS) + P^T dO -> -dVn in sDvn.
    {
      const int vc0 = ch * (BV / 2);
      float acc[kNTo][4] = {};
      if constexpr (kWgmma) {  // this warpgroup's m64 x (BV / 2) of K dS; ds1's copy-out under it
        wgmma_fence();
        // (sS through opaque: formed per chunk. Hoisted out of the loop, the 16 k-steps' descriptors held 32
        // registers at K = 256, and the kernel spilled 56 B with 14 reloads per chunk.)
        const T* sS_now = sS + opaque(0);
        wgmma_k_steps<T, BV / 2, false, true, kK / 16, 128, ST::kSwizzle>(
            acc, kmajor_steps<KRows>(sK, 0), mnmajor_steps<SRows>(sS_now, vc0), false);
        wgmma_commit();
        store_state_tile<kK, BV, SRows>(ds1 + c * slot_stride, p.dim_v, sS, tid);  // dS at this chunk's end -> ds1
        wgmma_wait<0>();
        wgmma_fence_acc(acc);
      } else {
        mma_rows_sw128<T, kK / 16, kNTo, C>(acc, sK, r0, sS + vc0, kLdV, lane);  // B[kk][v] = dS[kk][v]
      }
      const float d0 = sRk[i0] * __expf(G_last - sG[i0]), d1 = sRk[i1] * __expf(G_last - sG[i1]);
#pragma unroll
      for (int nt = 0; nt < kNTo; ++nt) {
        const int col = vc0 + nt * 8 + 2 * t4;
        const float2 x0 = *reinterpret_cast<const float2*>(sPdo + i0 * kLdU + col);
        const float2 x1 = *reinterpret_cast<const float2*>(sPdo + i1 * kLdU + col);
        store2<T>(sDvn + VRows::at(i0, col), -(d0 * acc[nt][0] + x0.x), -(d0 * acc[nt][1] + x0.y));
        store2<T>(sDvn + VRows::at(i1, col), -(d1 * acc[nt][2] + x1.x), -(d1 * acc[nt][3] + x1.y));
      }
    }
    if constexpr (!kWgmma) {
      store_state_tile<kK, BV, SRows>(ds1 + c * slot_stride, p.dim_v, sS, tid);  // dS at this chunk's end -> ds1
    }
    if constexpr (!L::kQInStage) cp_async_wait<0>();  // this thread's share of q (the barrier shows all of it)
    if constexpr (kWgmma) fence_async_smem();         // sDvn (and q), read by wgmma after (2)
    ChainStages::compute_sync();  // (2)

    // dS = e^{G_L} dS + Q^T doq + W^T (-dVn) on this warp's tiles; then the stage is free.
    if constexpr (kWgmma) {
      ST::template decay_add_atb<T, 2>(dS, decay, {sQ, sW}, {sDoq, sDvn}, warp);
    } else {
      ST::decay_add_atb2_sw128(dS, decay, sQ, sW, sDoq, sDvn, kLdV, warp, lane);
    }
    ChainStages::release<L::kStages>(i, num_chunks);
  }
  if (p.dh0 != nullptr) ST::for_each(dS, warp, lane, [&](float& x, int kk, int vv) { p.dh0[state_index(kk, vv)] = x; });
}

template <typename T, int kK, int kBV>
__global__ void __launch_bounds__(ChainStages::kThreads, 1) gdn_bwd_chain_split_kernel(
    const __grid_constant__ GdnBwdSplitParams p) {  // (param space: the TMA reads the maps there)
  gdn_bwd_chain_split<T, kK, kBV, false>(p);
}

// The same on wgmma (K = 128 / 256, 32- or 64-column V-blocks): gdn_bwd_chain.cu picks it unless
// MOM_OPS_GDN_CHAIN_WGMMA=0.
template <typename T, int kK, int kBV>
__global__ void __launch_bounds__(ChainStages::kThreads, 1) gdn_bwd_chain_split_wgmma_kernel(
    const __grid_constant__ GdnBwdSplitParams p) {
  gdn_bwd_chain_split<T, kK, kBV, true>(p);
}

}  // namespace mom_ops
