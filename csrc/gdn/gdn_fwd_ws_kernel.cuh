// Warp-specialised chunked gated-delta-rule forward (o and the final state; with kSave also what the backward reads),
// K = 128 and V a multiple of 128, on sm_90a wgmma. One CTA (3 warpgroups) owns (sequence, value head, 128 value
// columns). The chunk-local work that never reads the state runs on warpgroup 0 ("aux") one chunk ahead of
// warpgroups 1 and 2 ("state"), which keep the state transposed, S^T [v][k] in fp32 wgmma accumulators (warpgroup
// 1 + w: v rows 64 w ..), and do only the products that read it. Two stages of shared memory pass chunks from aux
// to state (FlashInfer's structure).
// Per chunk (G = cumsum g, rq / rk the l2norm factors, Kn = diag(rk) K, as in gdn_fwd_kernel.cuh):
//   aux:   A = (K K^T) * beta_i rk_i rk_j e^{G_i - G_j} (i > j),  QKm = (Q K^T) * rq_i rk_j e^{G_i - G_j} (i >= j),
//          T = (I + A)^-1,  Tb = T diag(beta)
//   state: X^T     = -(S^T K^T) diag(rk e^G)
//          V_new^T = V^T Tb^T + X^T Tb^T            (V_new = T diag(beta) (V - diag(rk e^G) K S) = U - W S)
//          O^T     = (S^T Q^T) diag(rq e^G) + V_new^T QKm^T,   o = scale O
//          S^T    <- e^{G_last} S^T + (V_new^T diag(rk e^{G_last - G})) K
// gdn_fwd_kernel.cuh's W S regrouped: the 16-bit operands are S, X, Tb, QKm, V_new and V_d (W is formed only for
// the saves: with kSave, aux also computes W = Tb diag(rk e^G) K and writes it and T (V-block 0), the state
// warpgroups write S at the chunk start and V_new, as gdn_fwd_kernel.cuh's kSave does).
// Status and measurements: csrc/gdn/NOTES.md.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/cp_async.cuh"
#include "common/mma.cuh"
#include "common/named_barrier.cuh"
#include "common/setmaxnreg.cuh"
#include "common/stmatrix.cuh"
#include "common/tile_layout.h"
#include "common/wgmma.cuh"
#include "common/wgmma_steps.cuh"
#include "gdn/chunk_prologue.cuh"
#include "gdn/gdn_fwd_kernel.cuh"
#include "gdn/ws_state.cuh"

namespace mom_ops {

constexpr int kGdnWsThreads = 384;  // warpgroup 0: aux; 1, 2: state
// Registers per thread after the reallocation (multiples of 8; aux may only lower the launch's 168, state only
// raise it). The pool is what the launch gave the CTA, 384 x 168: 128 x 152 + 256 x 176 = 64512 exactly (asking for
// more hangs the state warpgroups in setmaxnreg.inc: 160 / 176 did on the H200). ptxas: 60 B of spills (hoisted
// stmatrix addresses, 12 reloads per chunk in the state warpgroups, 2 in aux; 272 B before stmatrix); 168 / 168
// serialised the state's wgmma; 136 / 184 leaves the state 4 reloads but spills 236 B in aux's A / QKm formation.
constexpr int kWsAuxRegs = 152, kWsStateRegs = 176;

// Named barriers: 1 aux, 2 + w state warpgroup w, 4 + s stage s full (aux arrives, state syncs), 6 + s stage s
// empty (state arrives, aux syncs).
constexpr int kWsBarAux = 1, kWsBarState = 2, kWsBarFull = 4, kWsBarEmpty = 6;

// Shared memory (byte offsets; every 16-bit tile in wgmma's 128-byte-swizzled 64-column slabs, on a 1 KB boundary).
template <typename T, bool kSave>
struct GdnWsSmem {
  static constexpr int C = kGdnChunk;
  static constexpr int kTile = C * 128 * 2;  // [64][128] 16-bit: two slabs
  static constexpr int kSquare = C * C * 2;  // [64][64] 16-bit: one slab
  // A stage, written by aux, read by state:
  static constexpr int kQ = 0, kKey = kTile, kV = 2 * kTile;  // q, k, v rows (raw); v's slab w later o's columns
  static constexpr int kTb = 3 * kTile, kQK = kTb + kSquare;  // Tb [i][j], QKm [i][j]
  static constexpr int kVec = kQK + kSquare;  // f32 [64] each: rk e^G, rq e^G, rk e^{G_last - G}; e^{G_last}
  static constexpr int kStage = (kVec + 4 * C * 4 + 1023) / 1024 * 1024;
  static constexpr int kSt = 2 * kStage;                      // S^T [128 v][128 k] 16-bit (Sw128Slabs<128>)
  // aux only:
  static constexpr int kLdA = C + 4, kLdT = C + 1;
  static constexpr int kA = kSt + 128 * 128 * 2;  // A f32 [64][kLdA] | (kSave) Tw = Tb diag(rk e^G) 16-bit
  static constexpr int kT = kA + C * kLdA * 4;     // T f32 [64][kLdT]
  static constexpr int kX = kT + C * kLdT * 4;     // T-solve scratch, 128 floats per warp
  static constexpr int kAuxVec = kX + 4 * 128 * 4; // f32 [64] each: G, beta, rq, rk
  // state, kSave only: V_new [64 r][64 v] 16-bit per state warpgroup, copied out with o
  static constexpr int kVnOut = (kAuxVec + 4 * C * 4 + 1023) / 1024 * 1024;
  static constexpr int kBytes = kSave ? kVnOut + 2 * kSquare : kAuxVec + 4 * C * 4;
  static_assert(kX % 16 == 0 && kBytes <= kSmemPerCta, "layout");
};

// Phase timing for scripts/gdn_ws_phases.cu (with MOM_OPS_GDN_PROFILE): aux's thread 0 and the first state
// warpgroup's thread 0 read the clock after each phase; p.phase_cycles gets the sums over CTAs, kGdnWsPhases of them
// (aux 0-4, state 5-9).
constexpr int kGdnWsPhases = 10;
#ifdef MOM_OPS_GDN_PROFILE
#define GDN_WS_PHASE(i)                      \
  if (timer) {                               \
    const long long now = clock64();         \
    ws_cycles[i] += now - ws_start;          \
    ws_start = now;                          \
  }
#else
#define GDN_WS_PHASE(i)
#endif

// kSave: the training forward, which also writes p.save_s0, save_w, save_vn, save_t (layouts: GdnFwdParams).
// kPieces: the forward in pieces (p.pieces, scan_pieces.cuh; with kSave the saves of a piece's own chunks, not of its
// warm-up's); instances of their own, so that the others keep their registers.
template <typename T, bool kSave = false, bool kPieces = false>
__global__ void __launch_bounds__(kGdnWsThreads, 1) gdn_fwd_ws_kernel(GdnFwdParams p) {
  using L = GdnWsSmem<T, kSave>;
  constexpr int C = kGdnChunk, kK = 128, kV = 128;
  using Sw = Sw128Slabs<C>;      // the stage's tiles
  using SwS = Sw128Slabs<128>;   // S^T
  extern __shared__ __align__(1024) unsigned char smem[];
  auto stage = [&](int s) { return smem + s * L::kStage; };
  auto tile = [&](int s, int off) { return reinterpret_cast<T*>(stage(s) + off); };
  auto vec = [&](int s) { return reinterpret_cast<float*>(stage(s) + L::kVec); };  // f, eq, d, e^{G_last}
  T* sSt = reinterpret_cast<T*>(smem + L::kSt);
  auto kmajor = [](const T* x, int row) { return kmajor_steps<Sw>(x, row); };
  auto mnmajor = [](const T* x, int col) { return mnmajor_steps<Sw>(x, col); };

  const int tid = threadIdx.x, lane = tid % 32, g8 = lane / 4, t4 = lane % 4;
  const ScanPieces& pc = p.pieces;
  const int piece_chunks = kPieces ? pc.chunks : 0;
  const ChainCta cta = chain_cta(p, p.seq_order, p.num_vblocks, kV, kK, piece_chunks);
  const int hv = cta.hv, h = cta.h, v0 = cta.v0, vb = cta.vb;
  const int64_t bos = cta.bos, eos = cta.eos;
  const int num_chunks = int((eos - bos + C - 1) / C);
  // The chain runs chunks [c_begin, c_end) and writes o from c_first on (all of them without pieces). A piece
  // (scan_pieces.cuh) starts from S = 0 at its warm-up's first chunk, or from h0 at the sequence start; the last
  // piece writes ht (an empty sequence's one piece: h0). A (sequence, head) not cut is the split forward's; a piece
  // slot past the sequence's pieces has no work.
  int c_begin = 0, c_first = 0, c_end = num_chunks;
  if (piece_chunks > 0) {
    if (!piece_is_cut(pc, cta.seq, hv, p.heads_v)) return;
    if (cta.piece >= max(1, (num_chunks + piece_chunks - 1) / piece_chunks)) return;
    c_begin = pc.start[int64_t(blockIdx.x / (p.num_vblocks * p.heads_v)) * p.heads_v + hv];
    c_first = cta.piece * piece_chunks;
    c_end = min(num_chunks, c_first + piece_chunks);
  }
#ifdef MOM_OPS_GDN_PROFILE
  const bool timer = tid == 0 || tid == 128;
  long long ws_cycles[kGdnWsPhases] = {}, ws_start = clock64();
  auto flush_cycles = [&] {
    if (timer)
      for (int i = 0; i < kGdnWsPhases; ++i) atomicAdd(p.phase_cycles + i, (unsigned long long)ws_cycles[i]);
  };
#else
  auto flush_cycles = [] {};
#endif
  struct ChunkRows {
    int64_t c0;  // first row
    int len;     // rows in the sequence (<= 64)
  };
  auto chunk_rows = [&](int c) {
    const int64_t c0 = bos + int64_t(c) * C;
    return ChunkRows{c0, int(min(int64_t(C), eos - c0))};
  };

  if (tid < 128) {  // ---------------------------------------------------------------- aux: chunk-local work
    setmaxnreg_dec<kWsAuxRegs>();
    const int warp = tid / 32, r0 = 16 * warp;
    float* sA = reinterpret_cast<float*>(smem + L::kA);
    float* sT = reinterpret_cast<float*>(smem + L::kT);
    float* sX = reinterpret_cast<float*>(smem + L::kX);
    float* sG = reinterpret_cast<float*>(smem + L::kAuxVec);
    float *sBeta = sG + C, *sRq = sBeta + C, *sRk = sRq + C;
    auto aux_sync = [] { named_bar_sync(kWsBarAux, 128); };
    const T* q = static_cast<const T*>(p.q);
    const T* k = static_cast<const T*>(p.k);
    const T* v = static_cast<const T*>(p.v);
    // q, k, v rows of chunk c (zeros past the sequence) -> stage c % 2, one commit group; g, beta of its rows
    // 2 lane, 2 lane + 1 into warp 0's g2, beta2. Chunk c + 1's go out once chunk c is handed over and the state
    // warpgroups are done with chunk c - 1. (Issuing them right after chunk c's T solve, 06fad99, made the handover
    // of chunk c wait for the state's chunk c - 1: n32 D128 0.558 -> 0.619 ms on the H200.)
    float g2[2], beta2[2];
    // Thread tid copies the 16-byte column chunk tid % 16 of rows tid / 16 + 8 i (i < 8) of each tile: one address
    // computation per tile, then constant steps (the copies were ~28 instructions each with per-copy index math).
    const int load_row = tid / 16, load_col = (tid % 16) * 8;
    const int64_t qk_step = int64_t(8) * p.heads_qk * kK, v_step = int64_t(8) * p.heads_v * p.dim_v;
    auto issue_loads = [&](int c) {
      const ChunkRows rows = chunk_rows(c);
      const int64_t row = rows.c0 + load_row;
      const T* q_src = q + (row * p.heads_qk + h) * kK + load_col;
      const T* k_src = k + (row * p.heads_qk + h) * kK + load_col;
      const T* v_src = v + (row * p.heads_v + hv) * p.dim_v + v0 + load_col;
      const int dst = Sw::at(load_row, load_col);  // row load_row + 8 i: dst + 8 i rows (the same swizzle)
      T *sQ = tile(c % 2, L::kQ) + dst, *sK = tile(c % 2, L::kKey) + dst, *sV = tile(c % 2, L::kV) + dst;
#pragma unroll
      for (int i = 0; i < C / 8; ++i) {  // rows past the sequence: zero fill, the source (then the base) not read
        const bool valid = load_row + 8 * i < rows.len;
        cp_async16(sQ + 8 * i * 64, valid ? q_src : q, valid);
        cp_async16(sK + 8 * i * 64, valid ? k_src : k, valid);
        cp_async16(sV + 8 * i * 64, valid ? v_src : v, valid);
        q_src += qk_step, k_src += qk_step, v_src += v_step;
      }
      cp_async_commit();
      if (warp == 0) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int r = 2 * lane + e;
          g2[e] = r < rows.len ? gdn_floor_g(p.g[(rows.c0 + r) * p.heads_v + hv]) : 0.f;
          beta2[e] = r < rows.len ? p.beta[(rows.c0 + r) * p.heads_v + hv] : 0.f;
        }
      }
    };
    if (c_end > c_begin) issue_loads(c_begin);
    for (int c = c_begin; c < c_end; ++c) {
      const int s = c % 2;
      const ChunkRows rows = chunk_rows(c);
      const int64_t c0 = rows.c0;
      const int len = rows.len;
      T* sQ = tile(s, L::kQ);
      T* sK = tile(s, L::kKey);
      cp_async_wait<0>();
      fence_async_smem();  // cp.async lands through the generic proxy; wgmma reads through the async one
      aux_sync();          // the loads are in; every aux thread is done with chunk c - 1's scratch
      GDN_WS_PHASE(0);
      if (warp == 0) {  // G = cumsum g (two rows per lane), beta
        const float pair = g2[0] + g2[1];
        float incl = pair;
#pragma unroll
        for (int off = 1; off < 32; off *= 2) {
          const float up = __shfl_up_sync(0xffffffffu, incl, off);
          if (lane >= off) incl += up;
        }
        const float excl = __shfl_up_sync(0xffffffffu, incl, 1);  // (not incl - pair: see chunk_prologue.cuh)
        sG[2 * lane] = (lane == 0 ? 0.f : excl) + g2[0];
        sG[2 * lane + 1] = incl;
        sBeta[2 * lane] = beta2[0];
        sBeta[2 * lane + 1] = beta2[1];
      }
      {  // q's l2norm factors, two threads per row (k's come from K K^T's diagonal). Before the products: with their
        // 64 accumulators live, the pass spilled (512 B) and ptxas serialised the wgmma.
        const float rq = row_norm_factor<T, kK, Sw>(sQ, tid / 2, tid % 2, p.l2norm);
        if (tid % 2 == 0) sRq[tid / 2] = rq;
      }
      float kk[8][4], qk[8][4];
      wgmma_fence();
      wgmma_k_steps<T, 64, false, false, kK / 16>(kk, kmajor(sK, 0), kmajor(sK, 0), false);
      wgmma_k_steps<T, 64, false, false, kK / 16>(qk, kmajor(sQ, 0), kmajor(sK, 0), false);
      wgmma_commit();
      wgmma_wait<0>();
      wgmma_fence_acc(kk);
      wgmma_fence_acc(qk);
      {  // rk_i = rsqrt(|k_i|^2 + 1e-6): (i, i) of K K^T sits in n8 tile 2 warp (+1), lane t4 = g8 / 2, column g8 % 2
        // Picked by bit masks: as selects, the compiler turned kk into a local-memory array (and 0 / 1 weights would
        // let a NaN of a later row reach an earlier one).
        uint32_t b0 = 0, b1 = 0;
#pragma unroll
        for (int n = 0; n < 8; n += 2)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const uint32_t mask = (n == 2 * warp && e == g8 % 2) ? ~0u : 0u;
            b0 |= __float_as_uint(kk[n][e]) & mask;
            b1 |= __float_as_uint(kk[n + 1][2 + e]) & mask;
          }
        const float d0 = __uint_as_float(b0), d1 = __uint_as_float(b1);
        if (t4 == g8 / 2) {
          sRk[r0 + g8] = p.l2norm ? rsqrtf(d0 + 1e-6f) : 1.f;
          sRk[r0 + g8 + 8] = p.l2norm ? rsqrtf(d1 + 1e-6f) : 1.f;
        }
      }
      aux_sync();  // G, beta, rq, rk
      float* vs = vec(s);
      if (tid < C) {
        const float G = sG[tid], G_last = sG[C - 1];
        vs[tid] = sRk[tid] * __expf(G);                   // f: X's column factor
        vs[C + tid] = sRq[tid] * __expf(G);               // eq: Q S's column factor
        vs[2 * C + tid] = sRk[tid] * __expf(G_last - G);  // d: V_d's column factor
        vs[3 * C + tid] = __expf(G_last);
      }
      {  // A -> sA (fp32), QKm -> stage (16-bit); warp rows r0 + g8 (+8), columns 8 n + 2 t4 (+1)
        T* sQK = tile(s, L::kQK);
        const int i0 = r0 + g8, i1 = i0 + 8;
        const float G0 = sG[i0], G1 = sG[i1];
        const float a0 = sBeta[i0] * sRk[i0], a1 = sBeta[i1] * sRk[i1], q0 = sRq[i0], q1 = sRq[i1];
#pragma unroll
        for (int n = 0; n < 8; ++n) {
          const int j = 8 * n + 2 * t4;
          const float e00 = sRk[j] * __expf(G0 - sG[j]), e01 = sRk[j + 1] * __expf(G0 - sG[j + 1]);
          const float e10 = sRk[j] * __expf(G1 - sG[j]), e11 = sRk[j + 1] * __expf(G1 - sG[j + 1]);
          *reinterpret_cast<float2*>(sA + i0 * L::kLdA + j) =
              make_float2(i0 > j ? a0 * e00 * kk[n][0] : 0.f, i0 > j + 1 ? a0 * e01 * kk[n][1] : 0.f);
          *reinterpret_cast<float2*>(sA + i1 * L::kLdA + j) =
              make_float2(i1 > j ? a1 * e10 * kk[n][2] : 0.f, i1 > j + 1 ? a1 * e11 * kk[n][3] : 0.f);
          store2<T>(sQK + Sw::at(i0, j), i0 >= j ? q0 * e00 * qk[n][0] : 0.f, i0 >= j + 1 ? q0 * e01 * qk[n][1] : 0.f);
          store2<T>(sQK + Sw::at(i1, j), i1 >= j ? q1 * e10 * qk[n][2] : 0.f, i1 >= j + 1 ? q1 * e11 * qk[n][3] : 0.f);
        }
      }
      aux_sync();  // A complete
      GDN_WS_PHASE(1);
      invert_unit_lower_64_by<L::kLdA, L::kLdT, 4>(sA, sT, sX, tid, aux_sync);
      GDN_WS_PHASE(2);
      {  // Tb = T diag(beta) -> stage (16-bit); with the saves T -> save_t and Tw = Tb diag(f) -> sA's region.
        // Thread tid: row tid / 2, 8-column groups 2 m + tid % 2 (m < 4), one 16-byte store per group and tile.
        T* sTb = tile(s, L::kTb);
        T* sTw = reinterpret_cast<T*>(sA);
        const float* f = vec(s);
        const int i = tid / 2;
#pragma unroll
        for (int m = 0; m < 4; ++m) {
          const int j = 8 * (2 * m + tid % 2);
          float t8[8], b8[8];
#pragma unroll
          for (int e = 0; e < 8; ++e) t8[e] = sT[i * L::kLdT + j + e], b8[e] = t8[e] * sBeta[j + e];
          uint4 tb;
          tb.x = pack2<T>(b8[0], b8[1]), tb.y = pack2<T>(b8[2], b8[3]);
          tb.z = pack2<T>(b8[4], b8[5]), tb.w = pack2<T>(b8[6], b8[7]);
          *reinterpret_cast<uint4*>(sTb + Sw::at(i, j)) = tb;
          if constexpr (kSave) {
            if (vb == 0) {  // (Tw also in a warm-up chunk: W's product reads it)
              uint4 tw, t16;
              tw.x = pack2<T>(b8[0] * f[j], b8[1] * f[j + 1]), tw.y = pack2<T>(b8[2] * f[j + 2], b8[3] * f[j + 3]);
              tw.z = pack2<T>(b8[4] * f[j + 4], b8[5] * f[j + 5]), tw.w = pack2<T>(b8[6] * f[j + 6], b8[7] * f[j + 7]);
              *reinterpret_cast<uint4*>(sTw + Sw::at(i, j)) = tw;
              t16.x = pack2<T>(t8[0], t8[1]), t16.y = pack2<T>(t8[2], t8[3]);
              t16.z = pack2<T>(t8[4], t8[5]), t16.w = pack2<T>(t8[6], t8[7]);
              T* save_t = static_cast<T*>(p.save_t) + ((c0 + i) * p.heads_v + hv) * C + j;
              if (i < len && c >= c_first) *reinterpret_cast<uint4*>(save_t) = t16;
            }
          }
        }
      }
      fence_async_smem();
      named_bar_arrive(kWsBarFull + s, kGdnWsThreads);
      if constexpr (kSave) {  // W = Tw K (the normalised keys' W), rows < len -> save_w, by V-block 0
        if (vb == 0 && c >= c_first) {  // (uniform: the aux warpgroup's barriers below stay matched)
          aux_sync();  // Tw complete
          T* sW = reinterpret_cast<T*>(sA);  // Tw, then W [64][128] (two slabs) once the product is done
          float w[2][8][4];
          wgmma_fence();
#pragma unroll
          for (int kc = 0; kc < 2; ++kc)  // B[n = k][kdim = j] = K[j][k]: MN-major, k columns 64 kc..
            wgmma_k_steps<T, 64, false, true, C / 16>(w[kc], kmajor(sW, 0), mnmajor(sK, 64 * kc), false);
          wgmma_commit();
          wgmma_wait<0>();
          aux_sync();  // every warp's product is done reading Tw
          // W -> sW (rows 16 warp ..), then rows < len to save_w in 16-byte rows (one address per thread, as the loads).
          store_acc_rows_sw128<C>(w, sW + (r0 + 8 * ((lane / 8) % 2) + lane % 8) * 64, lane);
          aux_sync();
          T* dst = static_cast<T*>(p.save_w) + ((c0 + load_row) * p.heads_v + hv) * kK + load_col;
          const T* src = sW + Sw::at(load_row, load_col);
#pragma unroll
          for (int i = 0; i < C / 8; ++i)
            if (load_row + 8 * i < len)
              *reinterpret_cast<uint4*>(dst + 8 * i * int64_t(p.heads_v) * kK) =
                  *reinterpret_cast<const uint4*>(src + 8 * i * 64);
        }
      }
      GDN_WS_PHASE(3);
      if (c + 1 < c_end) {  // the next chunk's loads, into the stage the state warpgroups free after chunk c - 1
        if (c + 1 - c_begin >= 2) named_bar_sync(kWsBarEmpty + (c + 1) % 2, kGdnWsThreads);
        issue_loads(c + 1);
      }
      GDN_WS_PHASE(4);
    }
    flush_cycles();
    return;
  }

  // ---------------------------------------------------------------------------------------- state warpgroups
  setmaxnreg_inc<kWsStateRegs>();
  const int wg = tid / 128 - 1, wtid = tid % 128, wr = wtid / 32;  // v rows 64 wg + 16 wr + g8 (+8)
  const int vrow0 = 64 * wg + 16 * wr + g8;
  auto wg_sync = [&] { named_bar_sync(kWsBarState + wg, 128); };
  // S^T: two m64 x n64 accumulators (k columns 64 kc ..): St[kc][n][e] at v = vrow0 (+8 for e >= 2),
  // k = 64 kc + 8 n + 2 t4 (+1 for odd e).
  float St[2][8][4];
  auto for_each_state = [&](auto&& fn) { for_each_ws_state(St, vrow0, t4, fn); };  // fn(element, k, v)
  auto state_index = [&](int kk, int vv) { return cta.state_index(p.v_first, kK, p.dim_v, kk, vv); };
  const bool from_h0 = p.h0 != nullptr && c_begin == 0;
  for_each_state([&](float& x, int kk, int vv) { x = from_h0 ? p.h0[state_index(kk, vv)] : 0.f; });
  T* st_row = ws_state_copy_row(sSt, wg, wr, lane);
  auto publish_state = [&]() { publish_ws_state(St, st_row, lane); };  // the A operand of the products with it
  // stmatrix lane 8 m + r addresses row r of matrix m (acc_to_a's matrices m = 0..3).
  const int mat = lane / 8, mrow = lane % 8;
  // An m64 x n64 accumulator [v][i] (v rows of this warpgroup) times scale -> the 16-bit tile [i][v], transposed by
  // stmatrix: matrix m's row r is i = 16 j + 8 (m / 2) + r, its 8 columns start at v column v_col0 + 16 wr + 8 (m % 2).
  auto store_transposed = [&](const float (&acc)[8][4], T* tile, int v_col0, float scale) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      uint32_t x[4];
      acc_to_a<T>(x, acc, j, t4, [=](int) { return scale; });
      store_matrix_x4_trans(x, tile + Sw::at(16 * j + 8 * (mat / 2) + mrow, v_col0 + 16 * wr + 8 * (mat % 2)));
    }
  };
  publish_state();
  wg_sync();
  T* o = static_cast<T*>(p.o);
  T* sVnOut = reinterpret_cast<T*>(smem + L::kVnOut + wg * L::kSquare);
  auto a_st = kmajor_steps<SwS>(sSt, 64 * wg);  // S^T rows 64 wg.., k-step s
  for (int c = c_begin; c < c_end; ++c) {
    const int s = c % 2;
    const ChunkRows rows = chunk_rows(c);
    const int64_t c0 = rows.c0;
    const int len = rows.len;
    T* sQ = tile(s, L::kQ);
    T* sK = tile(s, L::kKey);
    T* sV = tile(s, L::kV);
    const T* sTb = tile(s, L::kTb);
    const T* sQK = tile(s, L::kQK);
    const float* vs = vec(s);
    named_bar_sync(kWsBarFull + s, kGdnWsThreads);
    GDN_WS_PHASE(5);

    if (kSave && c >= c_first) {  // S at the chunk start ([K, V] 16-bit) from the accumulators, through the V_new
      // tile (free until (2): the previous chunk's readers of it all passed this chunk's full barrier). Before the
      // products: beside their accumulators it spilled (104 B), and ptxas waited for them before reading St.
      T* s0 = static_cast<T*>(p.save_s0) +
              ((chunk_slot(p, cta.seq, bos) + c) * p.heads_v + hv) * int64_t(kK) * p.dim_v + v0 + 64 * wg;
      store_state_rows<T>(St, sVnOut, s0, p.dim_v, lane, wr);
    }
    // (1) S^T K^T and S^T Q^T (the old state).
    float sk[8][4], ot[8][4];
    wgmma_fence();
    wgmma_k_steps<T, 64, false, false, kK / 16>(sk, a_st, kmajor(sK, 0), false);
    wgmma_k_steps<T, 64, false, false, kK / 16>(ot, a_st, kmajor(sQ, 0), false);
    wgmma_commit();
    wgmma_wait<0>();
    GDN_WS_PHASE(6);
    // (2) V_new^T = V^T Tb^T + X^T Tb^T, X^T = -(S^T K^T) diag(f).
    float vn[8][4];
    uint32_t xa[4][4];
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) acc_to_a<T>(xa[ks], sk, ks, t4, [&](int j) { return -vs[j]; });
    wgmma_fence();
    wgmma_k_steps<T, 64, true, false, C / 16>(vn, mnmajor(sV, 64 * wg), kmajor(sTb, 0), false);
    wgmma_rs_k_steps<T, false, C / 16>(vn, xa, kmajor(sTb, 0), true);
    wgmma_commit();
#pragma unroll
    for (int n = 0; n < 8; ++n) {  // O^T's columns i times eq_i
      const int i = 8 * n + 2 * t4;
      const float e0 = vs[C + i], e1 = vs[C + i + 1];
      ot[n][0] *= e0, ot[n][1] *= e1, ot[n][2] *= e0, ot[n][3] *= e1;
    }
    wgmma_wait<0>();
    // V_new -> this warpgroup's out tile [r][v], copied out with o in (4) (its last readers, the previous chunk's,
    // were before the full barrier)
    if constexpr (kSave) store_transposed(vn, sVnOut, 0, 1.f);
    GDN_WS_PHASE(7);
    // (3) O^T += V_new^T QKm^T; S^T = e^{G_last} S^T + V_d^T K.
    uint32_t na[4][4], da[4][4];
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      acc_to_a<T>(na[ks], vn, ks, t4, [](int) { return 1.f; });
      acc_to_a<T>(da[ks], vn, ks, t4, [&](int j) { return vs[2 * C + j]; });
    }
    const float decay = vs[3 * C];
#pragma unroll
    for (int kc = 0; kc < 2; ++kc)
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) St[kc][n][e] *= decay;
    wgmma_fence();
    wgmma_rs_k_steps<T, false, C / 16>(ot, na, kmajor(sQK, 0), true);
#pragma unroll
    for (int kc = 0; kc < 2; ++kc)  // B[n = k][kdim = r] = K[r][k]: MN-major, k columns 64 kc..
      wgmma_rs_k_steps<T, true, C / 16>(St[kc], da, mnmajor(sK, 64 * kc), true);
    wgmma_commit();
    wgmma_wait<0>();
    GDN_WS_PHASE(8);
    // (4) o = scale O: O^T -> the o tile [i][v] in v's slab wg (its last reader was (2)), then 16-byte rows to global.
    store_transposed(ot, sV, 64 * wg, p.scale);
    publish_state();
    wg_sync();  // o tile and S^T complete
    for (int idx = wtid; idx < C * 8; idx += 128) {  // 64 rows x 8 chunks of 16 bytes (columns 64 wg ..)
      const int r = idx / 8, col = 64 * wg + (idx % 8) * 8;
      if (r < len) {
        if (o != nullptr && c >= c_first)  // (a piece's warm-up chunks write nothing)
          *reinterpret_cast<uint4*>(o + ((c0 + r) * p.heads_v + hv) * p.dim_v + v0 + col) =
              *reinterpret_cast<const uint4*>(sV + Sw::at(r, col));
        if (kSave && c >= c_first)
          *reinterpret_cast<uint4*>(static_cast<T*>(p.save_vn) + ((c0 + r) * p.heads_v + hv) * p.dim_v + v0 + col) =
              *reinterpret_cast<const uint4*>(sVnOut + Sw::at(r, col - 64 * wg));
      }
    }
    if (c + 2 < c_end) named_bar_arrive(kWsBarEmpty + s, kGdnWsThreads);
    GDN_WS_PHASE(9);
  }
  flush_cycles();
  if (p.ht != nullptr && c_end == num_chunks)  // (the last piece)
    for_each_state([&](float& x, int kk, int vv) { p.ht[state_index(kk, vv)] = x; });
}

#undef GDN_WS_PHASE

}  // namespace mom_ops
