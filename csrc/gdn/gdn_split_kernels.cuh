// Split forward of the chunked gated-delta scan: three launches for few, long sequences, where the fused kernel
// (gdn_fwd_kernel.cuh) is bound by its chain, since every chunk runs all of its chunk-local work in series
// (NOTES.md: ~28k cycles per chunk, 512 chunks in a row at n1). Here the chunk-local work runs for all chunks at
// once and the chain keeps only the two products that read the state:
//   1. gdn_prep_kernel, CTA per (chunk slot, value head): G, rk -> g_rk, A, T = (I + A)^-1,
//        W = T diag(beta e^G rk) K -> w [rows, HV, K] (16-bit),  U = T diag(beta) V -> u [rows, HV, V] (fp32),
//        and T -> t [rows, HV, 64] for the backward when asked.
//   2. gdn_chain_kernel, CTA per (sequence, value head, V-block of 64, 32 or 16 columns), the state S [K, BV] fp32 in
//        the registers of 8 compute warps; per chunk: S -> s0 (the chunk state, 16-bit), V_new = U - W S -> vn
//        (16-bit), S <- e^{G_last} S + K^T (rk e^{G_last - G} V_new); load warps bring the next chunks' W, K, U
//        while this one computes (chain_stages.cuh).
//   3. gdn_output_kernel, CTA per (chunk slot, value head, V-block of 128, or 64 where V is not a multiple of 128):
//        O = scale (rq e^G (Q S0) + QK V_new),  QK = (Q K^T) rq_i rk_j e^{G_i - G_j} (i >= j), G and rk from g_rk;
//        where V is a multiple of 128, gdn_output_wgmma_kernel.cuh's version of it on wgmma (gdn_split.cu).
// s0, w, vn and t are exactly what the training forward saves for the backward (gdn_bwd_cuda.cu). Roundings: the
// fused kernel's (16-bit T diag(..), W, S, QK, V_new operands), U kept in fp32. Status: csrc/gdn/NOTES.md.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/copy_rows.cuh"
#include "common/cp_async.cuh"
#include "common/env_flag.h"
#include "common/grid_dependency.cuh"
#include "common/mma.cuh"
#include "common/tile_layout.h"
#include "common/tma.cuh"
#include "gdn/chain_stages.cuh"
#include "gdn/chunk_prologue.cuh"
#include "gdn/gdn_fwd_kernel.cuh"
#include "gdn/scan_params.h"
#include "gdn/split_items.cuh"
#include "gdn/wg_state_tile.cuh"

namespace mom_ops {

constexpr int kSplitBV = 64;  // value columns per chain / output CTA

struct GdnSplitParams : GdnFwdParams {
  float* u;     // [rows, HV, V] fp32 workspace: U = T diag(beta) V (save_w, save_vn, save_s0 are required here)
  float* g_rk;  // [slots, HV, 2, 64] fp32 workspace: each chunk's G = cumsum(g) then rk (16-byte aligned runs)
  // The outputs beside the chain (gdn_split_overlap): chunk_ready [slots, HV] counts the chain CTAs (of the head)
  // done with the chunk's S0 and V_new; chains_done counts the chain CTAs done with everything (ht included). Both
  // zeroed by prep; nullptr: the output kernel runs after the chain.
  int* chunk_ready;
  int* chains_done;
  int chain_ctas_per_head, chain_ctas;
  int chunks_per_signal;  // the most chunks the chain raises chunk_ready for at a time, behind one fence (>= 1)
  // chain: where set, the launch runs only if *chain_width == chain_width_id (both widths are launched and the order
  // kernel's simulation picks one: scan_prologue.cuh's ChainWidthChoice; not with chunk_ready); nullptr: always
  const int* chain_width;
  int chain_width_id;
  // The wgmma chain's W and K tiles by TMA (gdn_chain_tma): one load thread issues a box per 64 columns on the
  // stage's mbarrier instead of every load thread's cp.async per 16 bytes. Maps of save_w [rows, HV, K] and k
  // [rows, H, K] with 64 x 64 boxes in the 128-byte swizzle (the stage's Sw128Slabs).
  bool chain_tma;
  CUtensorMap w_map, k_map;
};

// The output kernel starts while the chain runs (programmatic dependent launch) and takes each chunk once the chain
// has written its S0 and V_new. On by default where measured to win: K = 128 with 16-column chains, whose variant
// beside the output kernel fits (n1 D128 fwd 1.186 -> 1.156 ms on the H200; at K = 256 the chain keeps its full
// budget and the outputs only wait: 0.622 -> 0.626). MOM_OPS_GDN_OVERLAP=1 / 0 forces it on / off.
inline bool gdn_split_overlap(int64_t dim_k, int chain_bv) {
  if (env_is("MOM_OPS_GDN_OVERLAP", "1")) return true;
  if (env_is("MOM_OPS_GDN_OVERLAP", "0")) return false;
  return dim_k == 128 && chain_bv == 16;
}

// ---------------------------------------------------------------- 1. chunk-local terms

// Prep's shared memory, aliased by lifetime so that three CTAs fit on an SM at K <= 128 (72.5 KB; two at K = 256):
// the kernel is a chain of short latency-bound phases, so more CTAs per SM are what hide them (ncu at 2 CTAs per SM:
// issue slots 35% busy, DRAM 25%). A and the T-solve scratch die with the solve; Tw and Tu take their place.
template <typename T, int kK>
struct GdnPrepSmem {
  static constexpr int C = kGdnChunk, kVB = 128;  // v in blocks of 128 columns (a last block may have 64)
  static constexpr int kLdK = kK + 8, kLdV = kVB + 8, kLdC = C + 8, kLdA = C + 4, kLdT = C + 1;
  static constexpr int bytes16(int rows, int ld) { return rows * ld * 2; }
  static constexpr int kKey = 0;                                // k [64][kLdK] raw
  static constexpr int kV = kKey + bytes16(C, kLdK);            // v [64][kLdV], one block of columns at a time
  static constexpr int kT = kV + bytes16(C, kLdV);              // T f32 [64][kLdT]
  static constexpr int kA = kT + C * kLdT * 4;                  // A f32 [64][kLdA], T-solve scratch | Tw, Tu
  static constexpr int kX = kA + C * kLdA * 4;
  static constexpr int kTw = kA;                                // T diag(beta e^G rk) [64][kLdC]
  static constexpr int kTu = kTw + bytes16(C, kLdC);            // T diag(beta) [64][kLdC]
  static constexpr int kVec = kA + max_int(C * kLdA * 4 + kTSolveScratch * 4, 2 * bytes16(C, kLdC));
  static constexpr int kBytes = kVec + 5 * C * 4;               // f32 [64] each: G, beta, rk, beta e^G rk, (rq)
  static constexpr int kCtasPerSm = ctas_per_sm_by_smem(kBytes, 3);  // (3: <= 85 registers per thread)
  static_assert(kK > 128 || kCtasPerSm == 3, "three prep CTAs per SM at K <= 128");
};

// Slot -> its chunk (sequence, rows [bos, eos), first row c0, rows len) for value head hv; false for a slot no chunk
// uses and where (sequence, hv) is cut into pieces (scan_pieces.cuh: the warp-specialised kernels run it). The cut
// flag is loaded beside the bounds, so that a cut head's CTA (at n1 with a fast decay, all 8192 of a kernel's CTAs)
// exits after one load's latency, not two in a row.
__device__ __forceinline__ bool split_slot_chunk(const ScanParams& p, const ScanPieces& pieces, int hv, int64_t slot,
                                                 int& seq, int64_t& bos, int64_t& eos, int64_t& c0, int& len) {
  seq = slot_sequence(p, slot);
  const bool cut = piece_is_cut(pieces, seq, hv, p.heads_v);
  sequence_bounds(p, seq, bos, eos);
  if (cut) return false;
  const int64_t chunk = slot - chunk_slot(p, seq, bos);
  c0 = bos + chunk * kGdnChunk;
  if (chunk < 0 || c0 >= eos) return false;
  len = int(min(int64_t(kGdnChunk), eos - c0));
  return true;
}

// A CTA per (chunk slot, value head), also with pieces: taken from a counter by a CTA per resident slot
// (split_items.cuh, as the output kernels do), the items ran 8-18% slower where nothing was cut (H200 n1 g x 0.001:
// 348 -> 375-412 us) for 20 us saved where everything was (csrc/gdn/NOTES.md).
template <typename T, int kK>
__global__ void __launch_bounds__(kGdnThreads, GdnPrepSmem<T, kK>::kCtasPerSm) gdn_prep_kernel(GdnSplitParams p) {
  using L = GdnPrepSmem<T, kK>;
  constexpr int C = kGdnChunk, BV = L::kVB, kLdK = L::kLdK, kLdV = L::kLdV, kLdC = L::kLdC;
  constexpr int kNTo = BV / 2 / 8;  // per-warp output column tiles (of one block of columns)
  extern __shared__ __align__(16) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem + L::kKey);
  T* sV = reinterpret_cast<T*>(smem + L::kV);
  float* sA = reinterpret_cast<float*>(smem + L::kA);
  float* sT = reinterpret_cast<float*>(smem + L::kT);
  T* sTw = reinterpret_cast<T*>(smem + L::kTw);
  T* sTu = reinterpret_cast<T*>(smem + L::kTu);
  float* sX = reinterpret_cast<float*>(smem + L::kX);
  float* sG = reinterpret_cast<float*>(smem + L::kVec);
  float *sBeta = sG + C, *sRk = sBeta + C, *sColW = sRk + C, *sRq = sColW + C;  // sRq: unused norms of k again

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g8 = lane / 4, t4 = lane % 4;
  const int rt = warp % 4, ch = warp / 4, r0 = 16 * rt, i0 = r0 + g8, i1 = i0 + 8;
  const int64_t item = blockIdx.x;
  const int hv = int(item % p.heads_v), h = hv / (p.heads_v / p.heads_qk);
  if (p.chunk_ready != nullptr && tid == 0) {  // zeroed for every item (cut ones too); the chain raises them after
    p.chunk_ready[item] = 0;                   // this kernel (stream order)
    if (item == 0) *p.chains_done = 0;
  }
  int seq, len;
  int64_t bos, eos, c0;
  if (!split_slot_chunk(p, p.pieces, hv, item / p.heads_v, seq, bos, eos, c0, len)) return;
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);

  auto block_cols = [&](int v0) { return min(BV, p.dim_v - v0); };  // 128, or 64 in a last block (V % 64 == 0)
  auto load_vblock = [&](int v0) {  // v rows (zeros past len), columns v0 .. v0 + block_cols(v0) - 1
    const int cols = block_cols(v0);
    for (int idx = tid; idx < C * (cols / 8); idx += kGdnThreads) {
      const int r = idx / (cols / 8), c = (idx % (cols / 8)) * 8;
      cp_async16(sV + r * kLdV + c, v + ((c0 + min(r, len - 1)) * p.heads_v + hv) * p.dim_v + v0 + c, r < len);
    }
    cp_async_commit();
  };
  copy_rows_async<C, kK, PaddedRows<kLdK>, kGdnThreads>(sK, k + (c0 * p.heads_qk + h) * kK, int64_t(p.heads_qk) * kK,
                                                        len, tid);
  cp_async_commit();
  load_vblock(0);
  if (tid < C) {
    sG[tid] = tid < len ? gdn_floor_g(p.g[(c0 + tid) * p.heads_v + hv]) : 0.f;
    sBeta[tid] = tid < len ? p.beta[(c0 + tid) * p.heads_v + hv] : 0.f;
  }
  cp_async_wait<1>();  // k
  __syncthreads();
  chunk_norms_and_cumsum<T, kK, PaddedRows<kLdK>>(sK, sK, sG, sRq, sRk, p.l2norm, tid);
  __syncthreads();
  // G and rk for the chain (all 64 rows: past len, G stays G[len - 1] and the zero rows' rk is finite).
  if (tid < 2 * C) p.g_rk[(item * 2 + tid / C) * C + tid % C] = tid < C ? sG[tid] : sRk[tid - C];

  // A = (K K^T) beta_i rk_i rk_j e^{G_i - G_j} (i > j): rows r0.., columns of half ch -> sA (fp32).
  if (tid < C) sColW[tid] = sBeta[tid] * __expf(sG[tid]) * sRk[tid];
  {
    float acc[4][4] = {};
    mma_rows<T, kK / 16, 4, false>(acc, sK + r0 * kLdK, kLdK, sK + ch * 32 * kLdK, kLdK, lane);
    const float f0 = sBeta[i0] * sRk[i0], f1 = sBeta[i1] * sRk[i1], G0 = sG[i0], G1 = sG[i1];
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int j = ch * 32 + nt * 8 + 2 * t4;
      float x[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = e < 2 ? i0 : i1, jj = j + (e & 1);
        x[e] = i > jj ? (e < 2 ? f0 : f1) * sRk[jj] * __expf((e < 2 ? G0 : G1) - sG[jj]) * acc[nt][e] : 0.f;
      }
      *reinterpret_cast<float2*>(sA + i0 * L::kLdA + j) = make_float2(x[0], x[1]);
      *reinterpret_cast<float2*>(sA + i1 * L::kLdA + j) = make_float2(x[2], x[3]);
    }
  }
  __syncthreads();

  // T = (I + A)^-1 (fp32), then T diag(beta e^G rk) and T diag(beta) in 16 bits (and T for the backward).
  invert_unit_lower_64<L::kLdA, L::kLdT>(sA, sT, sX, tid);
  scale_t_columns<T, L::kLdT, kLdC>(sT, sBeta, sColW, sTu, sTw, tid, [&](int i, int j, float t0, float t1) {
    if (p.save_t != nullptr && i < len) store2<T>(static_cast<T*>(p.save_t) + ((c0 + i) * p.heads_v + hv) * C + j, t0, t1);
  });
  __syncthreads();

  // W and U leave through a per-warp staging tile of 16 rows x 128 bytes in T's fp32 region (dead since the scaling):
  // the fragments go in, then 16-byte rows go out (four per lane), instead of 4- / 8-byte stores per fragment pair
  // (ncu at K = 256: the stores' lg-throttle stalls were ~20% of the samples). 16-byte chunks XOR-swizzled by row so
  // that the fragment writes hit distinct banks: chunk ^ (row % 8) for W's 16-bit pairs, chunk ^ 2 (row % 4) for U's
  // fp32 pairs (64-bit accesses go by half-warps of four rows).
  unsigned char* stage = smem + L::kT + warp * 2048;  // [16][128 bytes] of this warp
  // the staged rows r0.. (kChunks 16-byte chunks each) -> dst_row0 + row * dst_row_stride (rows < len)
  auto stage_rows_out = [&]<int kChunks, bool kWSwizzle>(auto* dst_row0, int64_t dst_row_stride) {
    constexpr int kElems = 16 / int(sizeof(*dst_row0));
    __syncwarp();
#pragma unroll
    for (int idx = lane; idx < 16 * kChunks; idx += 32) {
      const int row = idx / kChunks, chunk = idx % kChunks;
      const int phys = chunk ^ (kWSwizzle ? row % 8 : 2 * (row % 4));
      if (r0 + row < len) {
        *reinterpret_cast<uint4*>(dst_row0 + (r0 + row) * dst_row_stride + chunk * kElems) =
            *reinterpret_cast<const uint4*>(stage + row * 128 + phys * 16);
      }
    }
    __syncwarp();  // the next pass rewrites the tile
  };
  static_assert(8 * 2048 <= C * L::kLdT * 4, "the staging tiles fit in T's fp32 region");

  // W = Tw K: rows r0.., columns of half ch -> global (rows < len), in w_rows' passes of kPass columns.
  constexpr int kPass = kK / 2 < 64 ? kK / 2 : 64;
  T* w = static_cast<T*>(p.save_w);
  T* w_row0 = w + (c0 * p.heads_v + hv) * kK;  // row i: + i * heads_v * kK
  w_rows<T, kK, kLdC, kLdK>(
      sTw, sK, r0, ch, lane,
      [&](int i, int c, float w0, float w1) {
        const int row = i - r0, chunk = (c % kPass) / 8;
        store2<T>(reinterpret_cast<T*>(stage + row * 128 + (chunk ^ (row % 8)) * 16) + c % 8, w0, w1);
      },
      [&](int n0) { stage_rows_out.template operator()<kPass / 8, true>(w_row0 + n0, int64_t(p.heads_v) * kK); });

  // U = Tu V, one block of V's columns at a time -> global fp32 (rows < len).
  for (int v0 = 0; v0 < p.dim_v; v0 += BV) {
    if (v0 > 0) {
      __syncthreads();  // every warp is done with the previous block's v
      load_vblock(v0);
    }
    cp_async_wait<0>();
    __syncthreads();
    const int vc0 = ch * (BV / 2);
    if (vc0 >= block_cols(v0)) continue;  // a 64-column block: the second column half has none
    float acc[kNTo][4] = {};
    mma_rows<T, C / 16, kNTo, true>(acc, sTu + r0 * kLdC, kLdC, sV + vc0, kLdV, lane);
    // through the staging tile, 32 fp32 columns (4 n8 tiles) at a time
    float* u_row0 = p.u + (c0 * p.heads_v + hv) * p.dim_v + v0 + vc0;  // row i: + i * heads_v * V
#pragma unroll
    for (int nt0 = 0; nt0 < kNTo; nt0 += 4) {
#pragma unroll
      for (int nt = nt0; nt < nt0 + 4 && nt < kNTo; ++nt) {
        const int col = (nt - nt0) * 8 + 2 * t4;  // 0 .. 31 in the staged columns
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int row = g8 + 8 * half, phys = (col / 4) ^ (2 * (row % 4));
          *reinterpret_cast<float2*>(stage + row * 128 + phys * 16 + (col % 4) * 4) =
              make_float2(acc[nt][2 * half], acc[nt][2 * half + 1]);
        }
      }
      stage_rows_out.template operator()<8, false>(u_row0 + nt0 * 8, int64_t(p.heads_v) * p.dim_v);
    }
  }
}

// ---------------------------------------------------------------- 2. the state chain

// Rows [len, 64) of kTiles chain stage tiles t0, t1(, t2) (Sw128Slabs<64>: each row one 128-byte line per 64-column
// slab) -> zeros, by the load threads, each 16 bytes by one thread: a TMA box runs on into the next sequence's rows,
// which cp.async zero-filled (and 0 x NaN would reach the state through the products).
template <int kK, int kTiles, typename T>
__device__ __forceinline__ void zero_stage_rows(T* t0, T* t1, T* t2, int len, int ltid) {
  static_assert(kTiles >= 1 && kTiles <= 3, "1 to 3 tiles");
  constexpr int kSlabs = kK / 64;
  const int lines = (kGdnChunk - len) * kSlabs * 8;  // 16-byte chunks per tile
  for (int idx = ltid; idx < kTiles * lines; idx += ChainStages::kLoadThreads) {
    const int tile = idx / lines, rest = idx % lines;
    const int slab = rest / ((kGdnChunk - len) * 8), row = len + rest % ((kGdnChunk - len) * 8) / 8, q = rest % 8;
    T* base = (tile == 0 ? t0 : tile == 1 ? t1 : t2) + slab * kGdnChunk * 64 + row * 64 + q * 8;
    *reinterpret_cast<uint4*>(base) = make_uint4(0, 0, 0, 0);
  }
}

// kBudget: the shared memory the chain may take (less than a CTA's most where an output CTA should fit beside it).
// kWgmma: the layout of the wgmma chain (WgStateTile): sS and sVd unpadded in wgmma's swizzle, every tile on a 1 KB
// boundary (the swizzle is applied to address bits).
template <typename T, int kK, int kBV, int kBudget = kSmemPerCta, bool kWgmma = false>
struct GdnChainFwdSmem {
  static constexpr int C = kGdnChunk;
  static constexpr int kLdV = kWgmma ? kBV : kBV + 8, kLdU = kBV + 4;
  static constexpr int bytes16(int rows, int ld) { return rows * ld * 2; }
  static constexpr int align(int x) { return kWgmma ? (x + 1023) / 1024 * 1024 : x; }
  // W and K [64][kK] 16-bit in 64-column slabs of the 128-byte swizzle (no padding: cp.async writes whole 128-byte
  // lines, ldmatrix reads without bank conflicts; ncu put the padded rows' cp.async at ~2.6x the ideal wavefronts).
  using StageRows = Sw128Slabs<C>;
  // sS [kK][kLdV] and sVd [64][kLdV]: padded rows (ldmatrix), or wgmma's layout.
  using SRows = std::conditional_t<kWgmma, WgColumnRows<kBV, kK>, PaddedRows<kLdV>>;
  using VdRows = std::conditional_t<kWgmma, WgColumnRows<kBV, C>, PaddedRows<kLdV>>;
  // kStages stages (chunks c, c + 1, ...) of: W, K, U [64][kLdU] fp32, G and rk [64] fp32 each.
  static constexpr int kStageW = 0, kStageK = bytes16(C, kK), kStageU = 2 * bytes16(C, kK);
  static constexpr int kStageG = kStageU + C * kLdU * 4;
  static constexpr int kStage = align(kStageG + 2 * C * 4);
  static constexpr int kMbarBytes = kWgmma ? 8 * ChainStages::kMaxStages : 0;  // the stages' TMA mbarriers
  static constexpr int kOther = bytes16(kK, kLdV) + bytes16(C, kLdV) + kMbarBytes;  // sS, sVd (1 KB multiples
                                                                                     // when kWgmma), mbarriers
  static constexpr int kStages = chain_stage_count(kStage, kOther, kBudget);
  static constexpr int kS = kStages * kStage;                 // S [kK][kLdV] in 16 bits: W S's B operand and s0
  static constexpr int kVd = kS + bytes16(kK, kLdV);          // rk e^{G_last - G} V_new [64][kLdV]
  static constexpr int kMbar = kVd + bytes16(C, kLdV);        // uint64_t [kStages] (kWgmma)
  static constexpr int kBytes = kMbar + kMbarBytes;
};

// The chain's V-block width kBV: 64, or 32 or 16 where 64-column chains would leave most SMs idle (one long
// sequence: 2 or 4 times the chains, each with 1/2 or 1/4 of the products per chunk; the chains of one head read the
// same W and K, mostly from L2). split_chain_value_block (gdn_split.cu) picks it.

// Per chunk, after the load warp's full(stage) (ChainStages): (1) = full: this chunk's stage has landed and S is in
// sS. (2) = compute_sync: V_new is in sVd and s0 has been copied out; then the state update (sS has no reader after
// (2), so the next chunk's S -> sS may start), after which the stage goes back to the load warp.
// The chain's body; kernels: gdn_chain_kernel, gdn_chain_wgmma_kernel and gdn_chain_beside_output_kernel below.
// kWgmma: the two products on wgmma, the state in WgStateTile's accumulators (W S: each warpgroup an m64 x (kBV / 2)
// half of V_new over kK / 16 k-steps; the update: each warpgroup its kK / 128 m64 tiles of S over the chunk's 64 rows),
// sS and sVd in wgmma's swizzle; else mma.sync from ldmatrix (StateTile, padded sS and sVd).
template <typename T, int kK, int kBV, int kBudget, bool kWgmma = false>
__device__ __forceinline__ void gdn_chain(const GdnSplitParams& p) {
  using L = GdnChainFwdSmem<T, kK, kBV, kBudget, kWgmma>;
  constexpr int C = kGdnChunk, BV = kBV, kLdV = L::kLdV, kLdU = L::kLdU;
  using StageRows = typename L::StageRows;
  using SRows = typename L::SRows;
  using VdRows = typename L::VdRows;
  using ST = std::conditional_t<kWgmma, WgStateTile<kK, BV>, StateTile<kK, BV>>;  // the state's register tiles
  constexpr int kMT = ST::kMT, kNT = ST::kNT, kNTo = BV / 2 / 8;
  extern __shared__ __align__(1024) unsigned char smem[];
  T* sS = reinterpret_cast<T*>(smem + L::kS);
  T* sVd = reinterpret_cast<T*>(smem + L::kVd);
  auto stage_w = [&](int s) { return reinterpret_cast<T*>(smem + s * L::kStage + L::kStageW); };
  auto stage_k = [&](int s) { return reinterpret_cast<T*>(smem + s * L::kStage + L::kStageK); };
  auto stage_u = [&](int s) { return reinterpret_cast<float*>(smem + s * L::kStage + L::kStageU); };
  auto stage_g = [&](int s) { return reinterpret_cast<float*>(smem + s * L::kStage + L::kStageG); };  // G, rk

  if (p.chain_width != nullptr && *p.chain_width != p.chain_width_id) return;  // the other width's launch runs
  // On wgmma, warp through a shuffle, so that the compiler knows it (and the roles below) to be warp-uniform: with the
  // roles split by tid, ptxas serialised every wgmma (C7520, the compute warps' path being divergent to it).
  const int tid = threadIdx.x, lane = tid % 32, warp = kWgmma ? __shfl_sync(0xffffffffu, tid / 32, 0) : tid / 32;
  const int g8 = lane / 4, t4 = lane % 4;
  const ChainCta cta = chain_cta(p, p.seq_order, p.dim_v / BV, BV, kK);
  const int seq = cta.seq, hv = cta.hv, h = cta.h, v0 = cta.v0;
  if (piece_is_cut(p.pieces, seq, hv, p.heads_v)) {  // the warp-specialised kernel's, in pieces
    if (p.chunk_ready != nullptr && tid == 0) release_add(p.chains_done);  // the output kernel's last CTA counts it
    return;
  }
  const int64_t bos = cta.bos, eos = cta.eos, slot0 = chunk_slot(p, seq, bos);
  const int64_t num_chunks = (eos - bos + C - 1) / C;
  if (p.chunk_ready != nullptr) launch_dependents();  // the output kernel may start (gdn_split_overlap)
  // Chunks [signalled, to)'s S0 and V_new are out (every compute thread's stores precede barrier (2) of chunk to - 1):
  // one thread raises their counters behind one fence, once `every` chunks are out (a 32nd of the chain, at most
  // chunks_per_signal: the outputs then trail the chain by ~3% at the end) and one chunk late. The fence stalls its
  // warp, and the CTA with it at the next barrier: raised per chunk, ncu at n1 D128 put a third of warp 0's samples on
  // it.
  const int64_t every = min(max(num_chunks / 32, int64_t(1)), int64_t(max(p.chunks_per_signal, 1)));
  int64_t signalled = 0;
  auto signal_chunks = [&](int64_t to) {
    if (p.chunk_ready != nullptr && tid == 0 && signalled < to) {
      release_add_each(p.chunk_ready + (slot0 + signalled) * p.heads_v + hv, p.heads_v, int(to - signalled));
    }
    signalled = to;
  };

  // The load warps: chunk i -> stage s: W, K, U (zero rows past the sequence), G and rk.
  if (ChainStages::is_load_warp(32 * warp)) {
    const int ltid = tid - ChainStages::kComputeThreads;
    const int64_t w_ld = int64_t(p.heads_v) * kK, k_ld = int64_t(p.heads_qk) * kK, u_ld = int64_t(p.heads_v) * p.dim_v;
    const T* w = static_cast<const T*>(p.save_w) + hv * kK;
    const T* k = static_cast<const T*>(p.k) + h * kK;
    const float* u = p.u + (hv * p.dim_v + v0);
    if constexpr (kWgmma) {
      if (p.chain_tma) {  // W and K as 64 x 64 boxes on the stage's mbarrier; U, G and rk by cp.async as below
        uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L::kMbar);
        if (ltid == 0) {
          for (int s = 0; s < L::kStages; ++s) mbarrier_init(bars + s, 1);
          fence_mbarrier_init();
        }
        named_bar_sync(ChainStages::kLoads, ChainStages::kLoadThreads);
        constexpr uint32_t kTileBytes = 2 * C * kK * 2;  // W and K, whole boxes (rows past the tensor count too)
        ChainStages::produce<L::kStages, true>(
            num_chunks,
            [&](int s, int64_t i) {
              const int64_t c0 = bos + i * C;
              if (ltid == 0) {
                mbarrier_expect_tx(bars + s, kTileBytes);
#pragma unroll
                for (int col = 0; col < kK; col += 64) {
                  const int at = StageRows::at(0, col);
                  tma_load_3d(stage_w(s) + at, &p.w_map, col, hv, int(c0), bars + s);
                  tma_load_3d(stage_k(s) + at, &p.k_map, col, h, int(c0), bars + s);
                }
              }
              const int len = int(min(int64_t(C), eos - c0));
              load_rows<BV * 4>(stage_u(s), kLdU, u + c0 * u_ld, u_ld, len, ltid);
              const float* g_rk = p.g_rk + ((slot0 + i) * p.heads_v + hv) * 2 * C;
              if (ltid < 2 * C / 4) cp_async16(stage_g(s) + 4 * ltid, g_rk + 4 * ltid, true);  // 2 C floats
            },
            [&](int s, int64_t j) {  // chunk j's boxes have landed; rows past the sequence (the next one's) -> 0
              mbarrier_wait(bars + s, uint32_t(j / L::kStages) % 2);
              const int len = int(min(int64_t(C), eos - (bos + j * C)));
              if (len < C) zero_stage_rows<kK, 2>(stage_w(s), stage_k(s), stage_k(s), len, ltid);
            });
        return;
      }
    }
    ChainStages::produce<L::kStages, kWgmma>(num_chunks, [&](int s, int64_t i) {
      const int64_t c0 = bos + i * C;
      const int len = int(min(int64_t(C), eos - c0));
      constexpr int kCols = kK < 128 ? kK : 128, kThreads = ChainStages::kLoadThreads;
#pragma unroll
      for (int col = 0; col < kK; col += kCols) {  // (at most 128 columns at a time: passes of 8 or more rows)
        const int at = StageRows::at(0, col);
        copy_rows_async<C, kCols, StageRows, kThreads>(stage_w(s) + at, w + c0 * w_ld + col, w_ld, len, ltid);
        copy_rows_async<C, kCols, StageRows, kThreads>(stage_k(s) + at, k + c0 * k_ld + col, k_ld, len, ltid);
      }
      load_rows<BV * 4>(stage_u(s), kLdU, u + c0 * u_ld, u_ld, len, ltid);
      const float* g_rk = p.g_rk + ((slot0 + i) * p.heads_v + hv) * 2 * C;
      if (ltid < 2 * C / 4) cp_async16(stage_g(s) + 4 * ltid, g_rk + 4 * ltid, true);  // 2 C floats
    });
    return;
  }

  const int rt = warp % 4, ch = warp / 4, r0 = 16 * rt, i0 = r0 + g8, i1 = i0 + 8;
  T* vn = static_cast<T*>(p.save_vn);
  // This CTA's columns of the state at chunk slot0 + c: s0 + c * slot_stride, rows of p.dim_v.
  T* s0 = static_cast<T*>(p.save_s0) + (slot0 * p.heads_v + hv) * int64_t(kK) * p.dim_v + v0;
  const int64_t slot_stride = int64_t(p.heads_v) * kK * p.dim_v;

  float S[kMT][kNT][4];
  auto state_index = [&](int kk, int vv) { return cta.state_index(p.v_first, kK, p.dim_v, kk, vv); };
  ST::for_each(S, warp, lane, [&](float& x, int kk, int vv) {
    x = p.h0 != nullptr ? p.h0[state_index(kk, vv)] : 0.f;
  });

  for (int64_t c = 0; c < num_chunks; ++c) {
    const int64_t c0 = bos + c * C;
    const int len = int(min(int64_t(C), eos - c0)), stage = int(c % L::kStages);
    if constexpr (kWgmma) {
      ST::store(sS, S, warp, lane);  // S in 16 bits (the saved chunk state's rounding)
      fence_async_smem();            // (read by wgmma after (1))
    } else {
      ST::store(sS, kLdV, S, warp, lane);
    }
    ChainStages::wait_full<L::kStages>(c);  // (1)
    if (c - signalled >= every) signal_chunks(c);
    const T *sW = stage_w(stage), *sK = stage_k(stage);
    const float* sU = stage_u(stage);
    const float *sG = stage_g(stage), *sRk = sG + C;
    const float G_last = sG[C - 1], decay = __expf(G_last);

    // V_new = U - W S (rows r0.., columns of half ch) -> global; rk e^{G_last - G} V_new -> sVd.
    {
      const int vc0 = ch * (BV / 2);
      float ws[kNTo][4] = {};
      if constexpr (kWgmma) {  // this warpgroup's m64 x (BV / 2) of W S; the chunk state's copy-out under it
        wgmma_fence();
        wgmma_k_steps<T, BV / 2, false, true, kK / 16, 128, ST::kSwizzle>(
            ws, kmajor_steps<StageRows>(sW, 0), mnmajor_steps<SRows>(sS, vc0), false);
        wgmma_commit();
        store_state_tile<kK, BV, SRows>(s0 + c * slot_stride, p.dim_v, sS, tid);  // this chunk's state S0 -> s0
        wgmma_wait<0>();
        wgmma_fence_acc(ws);
      } else {
        mma_rows_sw128<T, kK / 16, kNTo, C>(ws, sW, r0, sS + vc0, kLdV, lane);  // B[kk][v] = S[kk][v]
      }
      const float d0 = sRk[i0] * __expf(G_last - sG[i0]), d1 = sRk[i1] * __expf(G_last - sG[i1]);
#pragma unroll
      for (int nt = 0; nt < kNTo; ++nt) {
        const int col = vc0 + nt * 8 + 2 * t4;
        const float2 u0 = *reinterpret_cast<const float2*>(sU + i0 * kLdU + col);
        const float2 u1 = *reinterpret_cast<const float2*>(sU + i1 * kLdU + col);
        const float x0 = u0.x - ws[nt][0], x1 = u0.y - ws[nt][1], x2 = u1.x - ws[nt][2], x3 = u1.y - ws[nt][3];
        if (i0 < len) store2<T>(vn + ((c0 + i0) * p.heads_v + hv) * p.dim_v + v0 + col, x0, x1);
        if (i1 < len) store2<T>(vn + ((c0 + i1) * p.heads_v + hv) * p.dim_v + v0 + col, x2, x3);
        store2<T>(sVd + VdRows::at(i0, col), d0 * x0, d0 * x1);
        store2<T>(sVd + VdRows::at(i1, col), d1 * x2, d1 * x3);
      }
    }
    if constexpr (kWgmma) {
      fence_async_smem();  // sVd, read by wgmma after (2)
    } else {
      store_state_tile<kK, BV, SRows>(s0 + c * slot_stride, p.dim_v, sS, tid);  // this chunk's state S0 -> s0
    }
    ChainStages::compute_sync();  // (2)

    // S = e^{G_last} S + K^T V_d on this warp's state tiles; then the stage is free.
    if constexpr (kWgmma) {
      ST::decay_add_ktv(S, decay, sK, sVd, warp);
    } else {
      ST::decay_add_atb_sw128(S, decay, sK, sVd, kLdV, warp, lane);
    }
    ChainStages::release<L::kStages>(c, num_chunks);
  }
  if (p.ht != nullptr) ST::for_each(S, warp, lane, [&](float& x, int kk, int vv) { p.ht[state_index(kk, vv)] = x; });
  if (p.chunk_ready != nullptr) {  // the last chunks and the whole chain (ht) after every compute thread's stores
    ChainStages::compute_sync();
    signal_chunks(num_chunks);
    if (tid == 0) release_add(p.chains_done);
  }
}

template <typename T, int kK, int kBV>
__global__ void __launch_bounds__(ChainStages::kThreads, 1) gdn_chain_kernel(GdnSplitParams p) {
  gdn_chain<T, kK, kBV, kSmemPerCta>(p);
}

// The same on wgmma (K = 128 / 256, 32- or 64-column V-blocks): gdn_split.cu's launch_chain picks it unless
// MOM_OPS_GDN_CHAIN_WGMMA=0.
template <typename T, int kK, int kBV>
__global__ void __launch_bounds__(ChainStages::kThreads, 1) gdn_chain_wgmma_kernel(
    const __grid_constant__ GdnSplitParams p) {  // (param space: the TMA reads the maps there)
  gdn_chain<T, kK, kBV, kSmemPerCta, true>(p);
}

// Whether the split chains take their stage tiles by TMA (the forward W, K; the backward q, k, W: GdnSplitParams and
// GdnBwdSplitParams::chain_tma); MOM_OPS_GDN_CHAIN_TMA=0: by cp.async.
inline bool gdn_chain_tma() { return !env_is("MOM_OPS_GDN_CHAIN_TMA", "0"); }

// With the outputs beside the chain (gdn_split_overlap) at 16-column V-blocks: kBudget bytes of shared memory and at
// most 104 registers, so that an output CTA fits on the SM too (384 x 104 + 256 x 96 registers; the output kernel's
// 89 registers are allocated as 96: if it grows past 96 the two no longer share an SM). __maxnreg__ in place of
// __launch_bounds__ (the two may not be combined).
template <typename T, int kK, int kBV, int kBudget>
__global__ void __maxnreg__(104) gdn_chain_beside_output_kernel(GdnSplitParams p) {
  gdn_chain<T, kK, kBV, kBudget>(p);
}

// ---------------------------------------------------------------- 3. outputs

// An output item's work (gdn_output_kernel and gdn_output_wgmma_kernel.cuh): item -> (chunk slot, value head, V-block
// of bv columns), the slot's chunk (rows c0 .. c0 + len) and its inputs; false for a slot no chunk uses or a cut head.
template <typename T>
struct OutputCta {
  int v0, hv, h, seq, len;
  int64_t slot, bos, eos, c0;
  const T *q, *k, *s0, *vn;  // s0: the chunk's state at the V-block's first column
  T* o;
};
template <typename T>
__device__ __forceinline__ bool output_cta(const GdnSplitParams& p, int64_t item, int bv, int dim_k, OutputCta<T>& c) {
  const int num_vblocks = p.dim_v / bv;
  c.v0 = int(item % num_vblocks) * bv;
  c.hv = int((item / num_vblocks) % p.heads_v), c.h = c.hv / (p.heads_v / p.heads_qk);
  c.slot = item / (int64_t(num_vblocks) * p.heads_v);
  c.q = static_cast<const T*>(p.q), c.k = static_cast<const T*>(p.k), c.vn = static_cast<const T*>(p.save_vn);
  c.s0 = static_cast<const T*>(p.save_s0) + (c.slot * p.heads_v + c.hv) * int64_t(dim_k) * p.dim_v + c.v0;
  c.o = static_cast<T*>(p.o);
  return split_slot_chunk(p, p.pieces, c.hv, c.slot, c.seq, c.bos, c.eos, c.c0, c.len);
}

// An output kernel: item(item) for each of the CTA's items. Beside the chain (gdn_split_overlap) the grid's last CTA
// then waits for every chain CTA, so that the kernel ends after the chain's last writes (ht included) and whatever
// follows it in the stream sees them.
template <bool kItems, class Item>
__device__ __forceinline__ void output_items(const GdnSplitParams& p, int bv, Item&& item) {
  for_each_split_item<kItems>(p, p.pieces, p.dim_v / bv, item);
  if (p.chunk_ready != nullptr && blockIdx.x == gridDim.x - 1 && threadIdx.x == 0)
    acquire_wait(p.chains_done, p.chain_ctas);
}

// Beside the chain: until the chain CTAs of this head have written the chunk's S0 and V_new (all threads; ends with a
// barrier, after which their loads see those writes). Nothing to wait for otherwise.
__device__ __forceinline__ void wait_for_chunk(const GdnSplitParams& p, int64_t slot, int hv) {
  if (p.chunk_ready == nullptr) return;
  if (threadIdx.x == 0) acquire_wait(p.chunk_ready + slot * p.heads_v + hv, p.chain_ctas_per_head);
  __syncthreads();
}

// The output kernel's V-block width kBV: 128 where V is a multiple of 128, else 64. Every V-block CTA of a chunk loads
// q and k and forms QK again, so the wider block saves a quarter of the kernel's loads and a fifth of its products
// at V = 128 (one CTA per chunk and head). At K = 256 that costs CTAs per SM (one instead of two) and still wins
// (H200, n32 D256: output 0.38 vs 0.41 ms). MOM_OPS_GDN_OUTPUT_BV=64 / 128 forces a width (where V allows it).
inline int gdn_output_value_block(int64_t dim_v) {
  if (env_is("MOM_OPS_GDN_OUTPUT_BV", "64")) return 64;
  if (env_is("MOM_OPS_GDN_OUTPUT_BV", "128") && dim_v % 128 == 0) return 128;
  return dim_v % 128 == 0 ? 128 : 64;
}

// v_new is loaded into k's region once QK is formed (the two are never live together), which takes the kernel from
// two CTAs per SM to three at K = 128.
template <typename T, int kK, int kBV>
struct GdnOutputSmem {
  static constexpr int C = kGdnChunk;
  static constexpr int kLdK = kK + 8, kLdV = kBV + 8;
  static constexpr int bytes16(int rows, int ld) { return rows * ld * 2; }
  static constexpr int kQ = 0;                                        // q [64][kLdK] raw
  static constexpr int kKey = kQ + bytes16(C, kLdK);                  // k [64][kLdK] raw | V_new [64][kLdV]
  static constexpr int kVn = kKey;
  static constexpr int kS0 = kKey + max_int(bytes16(C, kLdK), bytes16(C, kLdV));  // S0 [kK][kLdV] (k-major rows)
  static constexpr int kVec = kS0 + bytes16(kK, kLdV);                // f32 [64] each: G, rk (prep's g_rk), rq
  static constexpr int kBytes = kVec + 3 * C * 4;
  static constexpr int kCtasPerSm = ctas_per_sm_by_smem(kBytes, 3);  // (3: <= 85 registers per thread)
};

template <typename T, int kK, int kBV>
__device__ __forceinline__ void gdn_output_item(const GdnSplitParams& p, int64_t item) {
  using L = GdnOutputSmem<T, kK, kBV>;
  constexpr int C = kGdnChunk, BV = kBV, kLdK = L::kLdK, kLdV = L::kLdV;
  constexpr int kNTo = BV / 2 / 8;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem + L::kQ);
  T* sK = reinterpret_cast<T*>(smem + L::kKey);
  T* sS0 = reinterpret_cast<T*>(smem + L::kS0);
  T* sVn = reinterpret_cast<T*>(smem + L::kVn);
  float* sG = reinterpret_cast<float*>(smem + L::kVec);
  float *sRk = sG + C, *sRq = sRk + C;

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g8 = lane / 4, t4 = lane % 4;
  const int rt = warp % 4, ch = warp / 4, r0 = 16 * rt, i0 = r0 + g8, i1 = i0 + 8;
  OutputCta<T> cta;
  if (!output_cta(p, item, BV, kK, cta)) return;
  const int v0 = cta.v0, hv = cta.hv, h = cta.h, len = cta.len;
  const int64_t slot = cta.slot, c0 = cta.c0;

  // q, k and prep's G, rk of the chunk (the same values the fused kernel computes), then S0.
  load_chunk_qk<T, kK, PaddedRows<kLdK>, kGdnThreads>(sQ, sK, cta.q, cta.k, c0, len, p.heads_qk, h, tid);
  if (tid < 2 * C / 4) cp_async16(sG + 4 * tid, p.g_rk + (slot * p.heads_v + hv) * 2 * C + 4 * tid, true);
  cp_async_commit();
  wait_for_chunk(p, slot, hv);  // S0 and V_new come from the chain
  for (int idx = tid; idx < kK * (BV / 8); idx += kGdnThreads) {
    const int r = idx / (BV / 8), c = (idx % (BV / 8)) * 8;
    cp_async16(sS0 + r * kLdV + c, cta.s0 + int64_t(r) * p.dim_v + c, true);
  }
  cp_async_commit();
  cp_async_wait<1>();  // q, k, G, rk
  __syncthreads();
  chunk_q_norms<T, kK, PaddedRows<kLdK>>(sQ, sRq, p.l2norm, tid);
  __syncthreads();

  // QK rows r0.. (all 64 columns; each warp computes its own), masked and scaled, as 16-bit A fragments.
  uint32_t qk_frag[C / 16][4];
  {
    float acc[8][4] = {};
    mma_rows<T, kK / 16, 8, false>(acc, sQ + r0 * kLdK, kLdK, sK, kLdK, lane);  // B[kk][j] = K[j][kk]
    const float G0 = sG[i0], G1 = sG[i1], f0 = sRq[i0], f1 = sRq[i1];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      float x[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = e < 2 ? i0 : i1, j = nt * 8 + 2 * t4 + (e & 1);
        x[e] = i >= j ? (e < 2 ? f0 : f1) * sRk[j] * __expf((e < 2 ? G0 : G1) - sG[j]) * acc[nt][e] : 0.f;
      }
      qk_frag[nt / 2][(nt % 2) * 2 + 0] = pack2<T>(x[0], x[1]);
      qk_frag[nt / 2][(nt % 2) * 2 + 1] = pack2<T>(x[2], x[3]);
    }
  }
  __syncthreads();  // k has no reader left: V_new goes into its region while Q S0 runs
  for (int idx = tid; idx < C * (BV / 8); idx += kGdnThreads) {
    const int r = idx / (BV / 8), c = (idx % (BV / 8)) * 8;
    cp_async16(sVn + r * kLdV + c, cta.vn + ((c0 + min(r, len - 1)) * p.heads_v + hv) * p.dim_v + v0 + c, r < len);
  }
  cp_async_commit();
  cp_async_wait<1>();  // S0
  __syncthreads();

  // O = scale (rq e^G (Q S0) + QK V_new): rows r0.., columns of half ch.
  const int vc0 = ch * (BV / 2);
  float acc[kNTo][4] = {};
  mma_rows<T, kK / 16, kNTo, true>(acc, sQ + r0 * kLdK, kLdK, sS0 + vc0, kLdV, lane);  // B[kk][v] = S0[kk][v]
  const float e0 = sRq[i0] * __expf(sG[i0]), e1 = sRq[i1] * __expf(sG[i1]);
#pragma unroll
  for (int nt = 0; nt < kNTo; ++nt) acc[nt][0] *= e0, acc[nt][1] *= e0, acc[nt][2] *= e1, acc[nt][3] *= e1;
  cp_async_wait<0>();  // V_new
  __syncthreads();
#pragma unroll
  for (int ks = 0; ks < C / 16; ++ks)
#pragma unroll
    for (int nt = 0; nt < kNTo; ++nt) {
      uint32_t b[2];
      load_b_trans(b, sVn + ks * 16 * kLdV + vc0 + nt * 8, kLdV, lane);  // B[j][v] = V_new[j][v]
      mma_16816<T>(acc[nt], qk_frag[ks], b);
    }
#pragma unroll
  for (int nt = 0; nt < kNTo; ++nt) {
    const int c = v0 + vc0 + nt * 8 + 2 * t4;
    T* o = cta.o + (c0 * p.heads_v + hv) * p.dim_v + c;  // row c0, this column pair
    if (i0 < len) store2<T>(o + int64_t(i0) * p.heads_v * p.dim_v, p.scale * acc[nt][0], p.scale * acc[nt][1]);
    if (i1 < len) store2<T>(o + int64_t(i1) * p.heads_v * p.dim_v, p.scale * acc[nt][2], p.scale * acc[nt][3]);
  }
}

template <typename T, int kK, int kBV, bool kItems>
__global__ void __launch_bounds__(kGdnThreads, GdnOutputSmem<T, kK, kBV>::kCtasPerSm)
    gdn_output_kernel(GdnSplitParams p) {
  output_items<kItems>(p, kBV, [&](int64_t item) { gdn_output_item<T, kK, kBV>(p, item); });
}

}  // namespace mom_ops
