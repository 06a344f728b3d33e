// Warp-specialised state-gradient chain of the backward (what gdn_bwd_chain_kernel.cuh computes: dS1 of every chunk
// and dh0), K = 128 or 256 and V a multiple of 128, on sm_90a wgmma. One CTA (3 warpgroups) owns (sequence, value
// head, 128 value columns) and walks the chunks in reverse. Warpgroup 0 ("aux") does the chunk-local work one chunk
// ahead of warpgroups 1 and 2 ("state"), which keep dS^T [v][k] in fp32 wgmma accumulators (warpgroup 1 + w: v rows
// 64 w ..), as the forward's gdn_fwd_ws_kernel.cuh keeps S^T. Per chunk (G, rq, rk as in the chain kernel):
//   aux:   P  = scale rq_i rk_j e^{G_i - G_j} (q_i . k_j)  (i >= j),   Qs = diag(scale rq e^G) Q   (16-bit, to the
//          stage; with p.ws_qs_in_state the state warpgroups scale Qs at the chunk's start from aux's row factors)
//          d  = rk e^{G_L - G},  e^{G_L}
//   state: dS1 (the chunk end's dS) -> its slot (ws_state.cuh)
//          dVn^T = (dS^T K^T) diag(d) + dO^T P
//          dS^T <- e^{G_L} dS^T + dO^T Qs - dVn^T W
// Aux never reads the state (it waits for the state warpgroups only to reuse a stage); the state warpgroups run four
// products per chunk.
// K = 128: W is in the stage, and dS^T K^T reads dS^T's 16-bit shared copy.
// K = 256: dS^T takes 128 registers per state thread, so registers move from aux to the state warpgroups
// (setmaxnreg); two stages with W do not fit, so W has one buffer that the state warpgroups fill themselves (it is
// read only by the last product, so its load overlaps the first three); and dS^T K^T takes A from the accumulators
// (no shared copy). Status and measurements: csrc/gdn/NOTES.md.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/copy_rows.cuh"
#include "common/cp_async.cuh"
#include "common/mma.cuh"
#include "common/named_barrier.cuh"
#include "common/opaque.cuh"
#include "common/setmaxnreg.cuh"
#include "common/tile_layout.h"
#include "common/wgmma.cuh"
#include "common/wgmma_steps.cuh"
#include "gdn/chunk_prologue.cuh"
#include "gdn/gdn_bwd_params.h"
#include "gdn/gdn_fwd_kernel.cuh"
#include "gdn/scan_pieces.cuh"
#include "gdn/ws_state.cuh"

namespace mom_ops {

constexpr int kBwdWsThreads = 384;  // warpgroup 0: aux; 1, 2: state

// Named barriers: 1 aux, 2 + w state warpgroup w, 4 + s stage s full (aux arrives, state syncs), 6 + s stage s
// empty (state arrives, aux syncs), 8 both state warpgroups (K = 256: their shared W tile).
constexpr int kBwdWsBarAux = 1, kBwdWsBarState = 2, kBwdWsBarFull = 4, kBwdWsBarEmpty = 6, kBwdWsBarPair = 8;

// K = 256: registers per thread after setmaxnreg. The pool is the launch's 384 x 168 (asking for more hangs). ptxas
// (nvcc 13.0): state below 208 serialises every wgmma; aux fits 88 without spills only since its addresses are formed
// per chunk (hoisted, they spilled 128 B).
constexpr int kBwdWsAuxRegs = 88, kBwdWsStateRegs = 208;
static_assert(kBwdWsAuxRegs + 2 * kBwdWsStateRegs <= 3 * 168, "register pool");

// Shared memory (byte offsets; every 16-bit tile in wgmma's 128-byte-swizzled 64-column slabs, on a 1 KB boundary).
template <typename T, int kK>
struct GdnBwdWsSmem {
  static constexpr int C = kGdnChunk;
  static constexpr bool kStageW = kK == 128;  // W in each stage (K = 128) or in one buffer of its own (K = 256)
  static constexpr int kTileK = C * kK * 2;   // [64][K] 16-bit
  static constexpr int kTileV = C * 128 * 2;  // [64][128] 16-bit
  // A stage, written by aux, read by state:
  static constexpr int kQs = 0, kKey = kTileK;             // Qs (q raw until P), k
  static constexpr int kW = 2 * kTileK;                    // W (K = 128)
  static constexpr int kDo = kW + (kStageW ? kTileK : 0);  // dO
  static constexpr int kP = kDo + kTileV;                  // P [j][i] 16-bit, one slab
  static constexpr int kVec = kP + C * C * 2;              // f32 [64] d, e^{G_L}, then [64] Qs's row factors
  static constexpr int kStage = (kVec + (2 * C + 4) * 4 + 1023) / 1024 * 1024;
  static constexpr int kSt = 2 * kStage;  // K = 128: dS^T [128 v][128 k] 16-bit (Sw128Slabs<128>)
  static constexpr int kWOwn = kSt + (kStageW ? 128 * 128 * 2 : 0);     // K = 256: W [64][256]
  static constexpr int kRowsOut = kWOwn + (kStageW ? 0 : kTileK);       // state only: [64][64] 16-bit per warpgroup
  static constexpr int kAuxVec = kRowsOut + 2 * C * C * 2;  // aux only, f32 [64] each: G, rq, rk
  static constexpr int kBytes = kAuxVec + 3 * C * 4;
  static_assert(kK == 128 || kK == 256, "K = 128 or 256");
  static_assert(kBytes <= kSmemPerCta, "layout");
};

// Rows of a [64][kCols] tile in 64-column slabs (Sw128Slabs<64>), kCols a multiple of 128, copied in 128-column
// pieces so that every thread's rows stay 8 apart (copy_rows_async's condition) at 128 threads as well.
template <int kCols, int kThreads, typename T>
__device__ __forceinline__ void copy_chunk_tile_async(T* dst, const T* src, int64_t stride, int len, int tid) {
  static_assert(kCols % 128 == 0, "128-column pieces");
  using Sw = Sw128Slabs<kGdnChunk>;
#pragma unroll
  for (int piece = 0; piece < kCols / 128; ++piece)
    copy_rows_async<kGdnChunk, 128, Sw, kThreads>(dst + Sw::at(0, 128 * piece), src + 128 * piece, stride, len, tid);
}

// Qs = diag(scale rq e^G) Q in place, one thread's share: kChunks 16-byte chunks of row i from column c0 of a
// [64][K] tile (Sw128Slabs<64>), times f.
template <typename T, int kChunks>
__device__ __forceinline__ void scale_row_chunks(T* tile, int i, int c0, float f) {
#pragma unroll
  for (int m = 0; m < kChunks; ++m) {
    uint4* x = reinterpret_cast<uint4*>(tile + Sw128Slabs<kGdnChunk>::at(i, c0 + 8 * m));
    const uint4 raw = *x;
    const T* in = reinterpret_cast<const T*>(&raw);
    uint4 out;
    uint32_t* u = reinterpret_cast<uint32_t*>(&out);
#pragma unroll
    for (int e = 0; e < 4; ++e) u[e] = pack2<T>(f * to_f32<T>(in[2 * e]), f * to_f32<T>(in[2 * e + 1]));
    *x = out;
  }
}

// kPieces: the chain in pieces (p.pieces, scan_pieces.cuh; K = 128): a CTA per (piece slot, head, V-block) runs from
// its start (one past the last warm-up chunk) down to the piece's first chunk, from dS = 0 (dht at the sequence's
// end), and writes dS1 of the piece's own chunks only; the first piece writes dh0.
template <typename T, int kK, bool kPieces = false>
__global__ void __launch_bounds__(kBwdWsThreads, 1) gdn_bwd_chain_ws_kernel(GdnBwdParams p) {
  using L = GdnBwdWsSmem<T, kK>;
  constexpr int C = kGdnChunk, kV = 128, kKc = kK / 64;
  constexpr bool kStageW = L::kStageW;
  using Sw = Sw128Slabs<C>;     // the stage's tiles
  using SwS = Sw128Slabs<128>;  // dS^T (K = 128)
  extern __shared__ __align__(1024) unsigned char smem[];
  auto stage = [&](int s) { return smem + s * L::kStage; };
  auto tile = [&](int s, int off) { return reinterpret_cast<T*>(stage(s) + off); };
  auto vec = [&](int s) { return reinterpret_cast<float*>(stage(s) + L::kVec); };  // d, e^{G_L}
  auto kmajor = [](const T* x, int row) { return kmajor_steps<Sw>(x, row); };
  auto mnmajor = [](const T* x, int col) { return mnmajor_steps<Sw>(x, col); };

  const int tid = threadIdx.x, lane = tid % 32, g8 = lane / 4, t4 = lane % 4;
  const ScanPieces& pc = p.pieces;
  const int piece_chunks = kPieces ? pc.chunks : 0;
  const ChainCta cta = chain_cta(p, p.seq_order, p.num_vblocks, kV, kK, piece_chunks);
  const int hv = cta.hv, h = cta.h, v0 = cta.v0;
  const int64_t bos = cta.bos, eos = cta.eos;
  const int seq_chunks = int((eos - bos + C - 1) / C);
  // The chain runs chunks [c_first, c_stop) from the last; dS1 of chunks below c_last (all without pieces).
  int c_first = 0, c_last = seq_chunks, c_stop = seq_chunks;
  if (piece_chunks > 0) {
    if (!piece_is_cut(pc, cta.seq, hv, p.heads_v)) return;  // the split chain's
    if (cta.piece >= max(1, (seq_chunks + piece_chunks - 1) / piece_chunks)) return;
    c_stop = pc.start[int64_t(blockIdx.x / (p.num_vblocks * p.heads_v)) * p.heads_v + hv];
    c_first = cta.piece * piece_chunks;
    c_last = min(seq_chunks, c_first + piece_chunks);
  }
  const int num_chunks = c_stop - c_first;  // iterations
  struct ChunkRows {
    int64_t c0;  // first row
    int len;     // rows in the sequence (<= 64)
  };
  // Iteration it handles chunk c_stop - 1 - it (reverse order), in stage it % 2.
  auto chunk_rows = [&](int it) {
    const int64_t c0 = bos + int64_t(c_stop - 1 - it) * C;
    return ChunkRows{c0, int(min(int64_t(C), eos - c0))};
  };
  const T* w = static_cast<const T*>(p.w);
  const int64_t w_stride = int64_t(p.heads_v) * kK;

  if (tid < 128) {  // ---------------------------------------------------------------- aux: chunk-local work
    if constexpr (!kStageW) setmaxnreg_dec<kBwdWsAuxRegs>();
    const int warp = tid / 32;
    float* sG = reinterpret_cast<float*>(smem + L::kAuxVec);
    float *sRq = sG + C, *sRk = sRq + C;
    auto aux_sync = [] { named_bar_sync(kBwdWsBarAux, 128); };
    const T* q = static_cast<const T*>(p.q);
    const T* k = static_cast<const T*>(p.k);
    const T* dout = static_cast<const T*>(p.dout);
    // q, k, (W,) dO rows of iteration it (zeros past the sequence) -> its stage, one commit group; g of rows 2 lane,
    // 2 lane + 1 into warp 0's g2.
    float g2[2];
    const int64_t qk_stride = int64_t(p.heads_qk) * kK, v_stride = int64_t(p.heads_v) * p.dim_v;
    auto issue_loads = [&](int it) {
      const ChunkRows rows = chunk_rows(it);
      const int s = it % 2;
      const int64_t qk_row0 = (rows.c0 * p.heads_qk + h) * kK;
      const int t = opaque(tid);  // the per-thread addresses formed here, per chunk
      copy_chunk_tile_async<kK, 128>(tile(s, L::kQs), q + qk_row0, qk_stride, rows.len, t);
      copy_chunk_tile_async<kK, 128>(tile(s, L::kKey), k + qk_row0, qk_stride, rows.len, t);
      if constexpr (kStageW)
        copy_chunk_tile_async<kK, 128>(tile(s, L::kW), w + (rows.c0 * p.heads_v + hv) * kK, w_stride, rows.len, t);
      copy_chunk_tile_async<kV, 128>(tile(s, L::kDo), dout + (rows.c0 * p.heads_v + hv) * p.dim_v + v0, v_stride,
                                     rows.len, t);
      cp_async_commit();
      if (warp == 0) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int r = 2 * lane + e;
          g2[e] = r < rows.len ? gdn_floor_g(p.g[(rows.c0 + r) * p.heads_v + hv]) : 0.f;
        }
      }
    };
    if (num_chunks > 0) issue_loads(0);
    for (int it = 0; it < num_chunks; ++it) {
      const int s = it % 2;
      T* sQ = tile(s, L::kQs);
      T* sK = tile(s, L::kKey);
      T* sP = tile(s, L::kP);
      float* vs = vec(s);
      cp_async_wait<0>();
      fence_async_smem();  // cp.async lands through the generic proxy; wgmma reads through the async one
      aux_sync();          // the loads are in; every aux thread is done with the previous chunk's vectors
      const int t = opaque(tid);  // the swizzled addresses of q, k, P rows below formed per chunk
      const int tr0 = 16 * (t / 32), tg8 = (t % 32) / 4, tt4 = t % 4;
      float qk[8][4];  // Q K^T of the raw rows, on the tensor cores while G and the norms are formed
      wgmma_fence();
      wgmma_k_steps<T, 64, false, false, kK / 16>(qk, kmajor(sQ, 0), kmajor(sK, 0), false);
      wgmma_commit();
      if (warp == 0) {  // G = cumsum g (two rows per lane)
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
      }
      {  // l2norm factors, two threads per row: q rows, then k rows
        const float rq = row_norm_factor<T, kK, Sw, 4>(sQ, t / 2, t % 2, p.l2norm);
        const float rk = row_norm_factor<T, kK, Sw, 4>(sK, t / 2, t % 2, p.l2norm);
        if (t % 2 == 0) sRq[t / 2] = rq, sRk[t / 2] = rk;
      }
      aux_sync();  // G, rq, rk
      if (tid < C) {
        const float G_last = sG[C - 1];
        vs[tid] = sRk[tid] * __expf(G_last - sG[tid]);  // d: the column factor of dS^T K^T
        if (tid == 0) vs[C] = __expf(G_last);
      }
      wgmma_wait<0>();
      wgmma_fence_acc(qk);
      {  // P rows i -> the stage's P tile [i][j] (16-bit); warp rows tr0 + tg8 (+8), columns 8 n + 2 tt4 (+1)
        const int i0 = tr0 + tg8, i1 = i0 + 8;
        const float G0 = sG[i0], G1 = sG[i1];
        const float q0 = p.scale * sRq[i0], q1 = p.scale * sRq[i1];
#pragma unroll
        for (int n = 0; n < 8; ++n) {
          const int j = 8 * n + 2 * tt4;
          const float e00 = sRk[j] * __expf(G0 - sG[j]), e01 = sRk[j + 1] * __expf(G0 - sG[j + 1]);
          const float e10 = sRk[j] * __expf(G1 - sG[j]), e11 = sRk[j + 1] * __expf(G1 - sG[j + 1]);
          store2<T>(sP + Sw::at(i0, j), i0 >= j ? q0 * e00 * qk[n][0] : 0.f, i0 >= j + 1 ? q0 * e01 * qk[n][1] : 0.f);
          store2<T>(sP + Sw::at(i1, j), i1 >= j ? q1 * e10 * qk[n][2] : 0.f, i1 >= j + 1 ? q1 * e11 * qk[n][3] : 0.f);
        }
      }
      if (p.ws_qs_in_state) {  // Qs's row factors, for the state warpgroups
        if (tid < C) vs[C + 4 + tid] = p.scale * sRq[tid] * __expf(sG[tid]);
      } else {  // Qs = diag(scale rq e^G) Q in place: thread tid scales row tid / 2, columns K / 2 (tid % 2) ..
        aux_sync();  // every warp's share of Q K^T is done reading q
        const int i = t / 2;
        scale_row_chunks<T, kK / 16>(sQ, i, (kK / 2) * (t % 2), p.scale * sRq[i] * __expf(sG[i]));
      }
      fence_async_smem();
      named_bar_arrive(kBwdWsBarFull + s, kBwdWsThreads);
      if (it + 1 < num_chunks) {  // the next chunk's loads, into the stage the state frees after iteration it - 1
        if (it + 1 >= 2) named_bar_sync(kBwdWsBarEmpty + (it + 1) % 2, kBwdWsThreads);
        issue_loads(it + 1);
      }
    }
    return;
  }

  // ---------------------------------------------------------------------------------------- state warpgroups
  if constexpr (!kStageW) setmaxnreg_inc<kBwdWsStateRegs>();
  const int wg = tid / 128 - 1, wtid = tid % 128, wr = wtid / 32;  // v rows 64 wg + 16 wr + g8 (+8)
  const int vrow0 = 64 * wg + 16 * wr + g8;
  auto wg_sync = [&] { named_bar_sync(kBwdWsBarState + wg, 128); };
  // dS^T: kKc m64 x n64 accumulators (k columns 64 kc ..): St[kc][n][e] at v = vrow0 (+8 for e >= 2),
  // k = 64 kc + 8 n + 2 t4 (+1 for odd e).
  float St[kKc][8][4];
  auto for_each_state = [&](auto&& fn) { for_each_ws_state(St, vrow0, t4, fn); };  // fn(element, k, v)
  auto state_index = [&](int kk, int vv) { return cta.state_index(p.v_first, kK, p.dim_v, kk, vv); };
  const bool from_dht = p.dht != nullptr && c_stop == seq_chunks;
  for_each_state([&](float& x, int kk, int vv) { x = from_dht ? p.dht[state_index(kk, vv)] : 0.f; });
  T* sSt = reinterpret_cast<T*>(smem + L::kSt);
  T* st_row = ws_state_copy_row(sSt, wg, wr, lane);
  auto publish_state = [&]() {  // the A operand of dS^T K^T (K = 128)
    if constexpr (kStageW) publish_ws_state(St, st_row, lane);
  };
  T* sWOwn = reinterpret_cast<T*>(smem + L::kWOwn);
  auto pair_sync = [] { named_bar_sync(kBwdWsBarPair, 256); };
  auto load_w = [&](int it) {  // K = 256: W rows of iteration it -> the W tile, by both state warpgroups
    const ChunkRows rows = chunk_rows(it);
    copy_chunk_tile_async<kK, 256>(sWOwn, w + (rows.c0 * p.heads_v + hv) * kK, w_stride, rows.len, tid - 128);
    cp_async_commit();
  };
  if constexpr (kStageW) {
    publish_state();
    wg_sync();
  } else if (num_chunks > 0) {
    load_w(0);
  }
  const int64_t slot0 = chunk_slot(p, cta.seq, bos);
  T* sRowsOut = reinterpret_cast<T*>(smem + L::kRowsOut) + wg * C * C;
  auto a_st = kmajor_steps<SwS>(sSt, 64 * wg);  // dS^T rows 64 wg.., k-step s
  for (int it = 0; it < num_chunks; ++it) {
    const int s = it % 2, ci = c_stop - 1 - it;
    T* sQs = tile(s, L::kQs);
    const T* sK = tile(s, L::kKey);
    const T* sW = kStageW ? tile(s, L::kW) : sWOwn;
    const T* sDo = tile(s, L::kDo);
    const T* sP = tile(s, L::kP);
    const float* vs = vec(s);
    named_bar_sync(kBwdWsBarFull + s, kBwdWsThreads);
    if (p.ws_qs_in_state) {  // Qs = diag(scale rq e^G) Q in place: row (tid - 128) / 4, a quarter of K, 16-byte rows
      const int t = opaque(tid);  // the addresses formed here, per chunk
      const int i = (t - 128) / 4;
      scale_row_chunks<T, kK / 32>(sQs, i, (kK / 4) * (t % 4), vs[C + 4 + i]);
      fence_async_smem();
    }

    // (0) dS1 (the chunk end's dS, [K, V] 16-bit) -> the chunk's slot from the accumulators. Before the products:
    // between them ptxas waited for the first before reading dS^T's registers.
    if (ci < c_last)  // (a piece's warm-up chunks write nothing)
      store_state_rows<T>(St, sRowsOut,
                          static_cast<T*>(p.ds1) + ((slot0 + ci) * p.heads_v + hv) * int64_t(kK) * p.dim_v + v0 +
                              64 * wg,
                          p.dim_v, lane, wr);
    // (1) dS^T K^T, then dS^T = e^{G_L} dS^T + dO^T Qs as a second group (K = 128: the decay before the first
    // product, between them ptxas waited for it before writing dS^T's registers; K = 256: after, since the first
    // reads dS^T's registers).
    float dvn[8][4];
    const float decay = vs[C];
    auto decay_state = [&] {
#pragma unroll
      for (int kc = 0; kc < kKc; ++kc)
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) St[kc][n][e] *= decay;
    };
    if constexpr (kStageW) {  // A from dS^T's shared copy
      decay_state();
      wgmma_fence();
      wgmma_k_steps<T, 64, false, false, kK / 16>(dvn, a_st, kmajor(sK, 0), false);
      wgmma_commit();
    } else {  // A from the accumulators, 64 k columns (4 k-steps) per group. One register set, each group waited
      // for before the next conversion: with two sets ptxas serialised every wgmma (registers).
      uint32_t a[4][4];
#pragma unroll
      for (int kc = 0; kc < kKc; ++kc) {
        if (kc > 0) wgmma_wait<0>();
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) acc_to_a<T>(a[ks], St[kc], ks, t4, [](int) { return 1.f; });
        wgmma_fence();
        wgmma_rs_k_steps<T, false, 4>(dvn, a, [&](int ks) { return sK + Sw::at(0, 64 * kc + 16 * ks); }, kc > 0);
        wgmma_commit();
      }
      decay_state();
      wgmma_fence();
    }
    if (p.ws_qs_in_state) pair_sync();  // both warpgroups' rows of Qs
#pragma unroll
    for (int kc = 0; kc < kKc; ++kc)  // A[v][i] = dO[i][v]: MN-major; B[n = k][kdim = i] = Qs[i][k]: MN-major
      wgmma_k_steps<T, 64, true, true, C / 16>(St[kc], mnmajor(sDo, 64 * wg), mnmajor(sQs, 64 * kc), true);
    wgmma_commit();
    wgmma_wait<1>();
    wgmma_fence_acc(dvn);
    // (2) dVn^T = (dS^T K^T) diag(d) + dO^T P: B[n = i][kdim = j] = P[j][i], MN-major.
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      const int i = 8 * n + 2 * t4;
      const float d0 = vs[i], d1 = vs[i + 1];
      dvn[n][0] *= d0, dvn[n][1] *= d1, dvn[n][2] *= d0, dvn[n][3] *= d1;
    }
    wgmma_fence();
    wgmma_k_steps<T, 64, true, true, C / 16>(dvn, mnmajor(sDo, 64 * wg), mnmajor(sP, 0), true);
    wgmma_commit();
    wgmma_wait<0>();
    if constexpr (!kStageW) {  // the stage is read no more (W is not in it); W has landed
      if (it + 2 < num_chunks) named_bar_arrive(kBwdWsBarEmpty + s, kBwdWsThreads);
      cp_async_wait<0>();
      fence_async_smem();
      pair_sync();  // every state thread's share of W
    }
    // (3) dS^T -= dVn^T W: A = -dVn^T from registers, B[n = k][kdim = i] = W[i][k], MN-major.
    uint32_t na[4][4];
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) acc_to_a<T>(na[ks], dvn, ks, t4, [](int) { return -1.f; });
    wgmma_fence();
#pragma unroll
    for (int kc = 0; kc < kKc; ++kc) wgmma_rs_k_steps<T, true, C / 16>(St[kc], na, mnmajor(sW, 64 * kc), true);
    wgmma_commit();
    wgmma_wait<0>();
    if constexpr (kStageW) {  // (4) the new dS^T's 16-bit copy; the stage is free.
      publish_state();
      wg_sync();
      if (it + 2 < num_chunks) named_bar_arrive(kBwdWsBarEmpty + s, kBwdWsThreads);
    } else {  // (4) both warpgroups are done with W: the next chunk's goes out
      pair_sync();
      if (it + 1 < num_chunks) load_w(it + 1);
    }
  }
  if (p.dh0 != nullptr && c_first == 0)  // (the first piece)
    for_each_state([&](float& x, int kk, int vv) { p.dh0[state_index(kk, vv)] = x; });
}

}  // namespace mom_ops
