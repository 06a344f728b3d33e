// Chunked gated-delta-rule forward on tensor cores (mma.sync m16n8k16, bf16/fp16 operands, fp32 accumulate).
// One CTA (8 warps) owns (sequence, value head, V-block of kBV columns) and walks the sequence in chunks of 64
// rows with the state S [K, kBV] in fp32 registers; nothing but o and the final state leaves the chip.
// Per chunk (DESIGN.md §1, chunked form; G = cumsum g inside the chunk; rq, rk = the l2norm factors of the
// q and k rows, or 1; they are applied in fp32 to the products, so the normalised q and k are never rounded):
//   A  = (K K^T) * beta_i rk_i rk_j exp(G_i - G_j) (i > j),   QK = (Q K^T) * rq_i rk_j exp(G_i - G_j) (i >= j)
//   T  = (I + A)^-1 (16x16 diagonal blocks by substitution, then the off-diagonal blocks, all fp32)
//   W  = T diag(beta e^G rk) K,   U = T diag(beta) V,   V_new = U - W S
//   O  = scale (rq e^G * (Q S) + QK V_new)
//   S <- e^{G_last} S + K^T (rk e^{G_last - G} * V_new)
// 16-bit mma operands: T diag(..), W, S, QK, V_new (as in fla); every sum accumulates in fp32.
// Status and measurements: csrc/gdn/NOTES.md.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/cp_async.cuh"
#include "common/mma.cuh"
#include "gdn/chunk_prologue.cuh"
#include "gdn/scan_params.h"
#include "gdn/scan_pieces.cuh"
#include "gdn/state_tile.cuh"

namespace mom_ops {

constexpr int kGdnChunk = 64;
constexpr int kGdnThreads = 256;  // 8 warps; warp w works on chunk rows 16 (w % 4) .. and column half w / 4
constexpr int kTSolveScratch = 8 * 16 * 8;  // floats of invert_unit_lower_64's scratch: [16][8] per warp
constexpr int kSmemPerCta = 227 * 1024;  // the most shared memory one CTA may opt in to on sm_90
constexpr int kSmemPerSm = 228 * 1024;   // an SM's shared memory, of which every resident CTA also reserves 1 KB

constexpr int max_int(int a, int b) { return a > b ? a : b; }  // for shared-memory layouts

// CTAs of smem_bytes each that fit on an SM by shared memory, at most cap (the bound the registers set).
constexpr int ctas_per_sm_by_smem(int smem_bytes, int cap) {
  const int fit = kSmemPerSm / (smem_bytes + 1024);
  return fit < cap ? fit : cap;
}

struct GdnFwdParams : ScanParams {
  int num_vblocks;         // V / kBV
  bool v_first;            // states are [N, HV, V, K]
  const int* seq_order;    // [N] sequences longest first (scan_prologue.cuh), or nullptr: index order
  // What the backward (#5) reads, written by the kSave kernels (16-bit, the input dtype; slots: chunk_slot):
  void* save_s0;           // [slots, HV, K, V] the state at the start of every chunk
  void* save_w;            // [rows, HV, K] W = T diag(beta e^G rk) K (the normalised keys' W), by V-block 0
  void* save_vn;           // [rows, HV, V] V_new = U - W S
  void* save_t;            // [rows, HV, 64] the chunk's T = (I + A)^-1, row by row, by V-block 0
  ScanPieces pieces;       // inference: long sequences in pieces (scan_pieces.cuh; chunks 0: none)
#ifdef MOM_OPS_GDN_PROFILE
  unsigned long long* phase_cycles;  // [kGdnPhases]: cycles per phase summed over CTAs (scripts/gdn_phases.cu)
#endif
};

// Phase timing for scripts/gdn_phases.cu: thread 0 reads the clock after each barrier.
#ifdef MOM_OPS_GDN_PROFILE
constexpr int kGdnPhases = 9;
#define GDN_PHASE(i)                     \
  if (tid == 0) {                         \
    const long long now = clock64();      \
    phase_cycles[i] += now - phase_start; \
    phase_start = now;                    \
  }
#else
#define GDN_PHASE(i)
#endif

// Shared memory (byte offsets). 16-bit rows are padded by 8 elements against bank conflicts; A's fp32 rows by 4
// (16-byte aligned, read as float4), T's by 1. Regions whose lives do not overlap within a chunk share memory
// (marked "|").
template <typename T, int kK, int kBV>
struct GdnSmem {
  static constexpr int C = kGdnChunk;
  static constexpr int kLdK = kK + 8, kLdV = kBV + 8, kLdC = C + 8, kLdA = C + 4, kLdT = C + 1;
  static constexpr int bytes16(int rows, int ld) { return rows * ld * 2; }
  static constexpr int kQ = 0;                                              // q [64][kLdK] (raw)
  static constexpr int kKey = kQ + bytes16(C, kLdK);                        // k [64][kLdK] (raw)
  static constexpr int kV = kKey + bytes16(C, kLdK);                        // v | rk e^{G_last-G} V_new [64][kLdV]
  static constexpr int kS = kV + bytes16(C, kLdV);                          // S^T [kBV][kLdK] (16-bit copy)
  static constexpr int kW = kS + bytes16(kBV, kLdK);                        // A f32 [64][kLdA] | W [64][kLdK]
  static constexpr int kVn = kW + max_int(bytes16(C, kLdK), C * kLdA * 4);  // T f32 [64][kLdT] | V_new [64][kLdV]
  static constexpr int kTw = kVn + max_int(bytes16(C, kLdV), C * kLdT * 4); // T diag(beta e^G rk) | X f32 | QK
  static constexpr int kTu = kTw + bytes16(C, kLdC);                        // T diag(beta) [64][kLdC]  | X f32
  static constexpr int kVec = kTu + bytes16(C, kLdC);  // f32 [64] each: G, beta, rq, rk, beta e^G rk
  static constexpr int kOneBuffer = kVec + 5 * C * 4;
  // Where the layout leaves one CTA per SM anyway and room is left (K = 128 with 128-column V-blocks: 138 + 51 KB),
  // a second q, k, v buffer: the next chunk's loads land while this one computes (kPrefetch).
  static constexpr int kSecondBuffer = 2 * bytes16(C, kLdK) + bytes16(C, kLdV);
  static constexpr bool kPrefetch = 2 * kOneBuffer > kSmemPerCta && kOneBuffer + kSecondBuffer <= kSmemPerCta;
  static constexpr int kQ2 = kOneBuffer, kKey2 = kQ2 + bytes16(C, kLdK), kV2 = kKey2 + bytes16(C, kLdK);
  static constexpr int kBytes = kPrefetch ? kOneBuffer + kSecondBuffer : kOneBuffer;
  static_assert(2 * bytes16(C, kLdC) >= kTSolveScratch * 4, "the T-solve scratch must fit in the Tw and Tu regions");
};

// T = (I + A)^-1 for the strictly lower 64x64 A (fp32; row stride kLdA, a multiple of 4, so rows load as
// float4; zeros on and above the diagonal) into Tm (row stride kLdT), by 16x16 blocks, threads 0 .. 32 kWarps - 1
// (kWarps 4 or >= 6), sync() a barrier of exactly those threads. X (128 floats per warp) is scratch. Ends with sync().
template <int kLdA, int kLdT, int kWarps, typename Sync>
__device__ __forceinline__ void invert_unit_lower_64_by(const float* A, float* Tm, float* X, int tid, Sync&& sync) {
  // Diagonal blocks: thread (b, c) substitutes column c of block b: t_i = [i == c] - sum_m A_im t_m. Every sum has a
  // fixed length (the zeros of A make up the rest) and four partial sums, so the loops unroll and the FMA chains
  // stay short.
  if (tid < 64) {
    const int b = tid / 16, c = tid % 16, r0 = 16 * b;
    float t[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) t[i] = 0.f;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const float4* row = reinterpret_cast<const float4*>(A + (r0 + i) * kLdA + r0);
      float part[4] = {i == c ? 1.f : 0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int m4 = 0; m4 < (i + 3) / 4; ++m4) {  // A_im = 0 for m >= i
        const float4 a = row[m4];
        part[0] -= a.x * t[4 * m4], part[1] -= a.y * t[4 * m4 + 1];
        part[2] -= a.z * t[4 * m4 + 2], part[3] -= a.w * t[4 * m4 + 3];
      }
      t[i] = (part[0] + part[1]) + (part[2] + part[3]);
    }
#pragma unroll
    for (int i = 0; i < 16; ++i) Tm[(r0 + i) * kLdT + r0 + c] = t[i];
  }
  sync();
  // Off-diagonal blocks on the tensor cores in fp32-like 3xTF32 (mma_1688_f32), by column chains: chain (j, h) owns
  // the 8 columns n0 = 16 j + 8 h and computes the blocks (i, j), i = j + 1 .. 3, top down:
  // X = sum_{m = 16 j}^{16 i - 1} A[16 i.., m] T[m, n0..] (16 x 8), then T_ij = -T_ii X. Block (i, j) needs only the
  // diagonal blocks and the chain's own earlier blocks, so a chain runs on one warp with __syncwarp between its items
  // and the whole solve has one more barrier (the products and their order are those of a diagonal-by-diagonal
  // sweep: T is the same bit for bit). X passes from the C to the B fragment layout through the warp's scratch tile.
  const int warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  float* Xw = X + warp * 128;  // [16][8]
  auto item = [&](int j, int h, int i) {
    const int d = i - j, r = 16 * i, n0 = 16 * j + 8 * h;
    float x[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int m = 0; m < 48; m += 8) {
      if (m < 16 * d) {
        const float* a_row = A + (r + g) * kLdA + 16 * j + m + t;
        const float a[4] = {a_row[0], a_row[8 * kLdA], a_row[4], a_row[8 * kLdA + 4]};
        const float b[2] = {Tm[(16 * j + m + t) * kLdT + n0 + g], Tm[(16 * j + m + t + 4) * kLdT + n0 + g]};
        mma_1688_f32(x, a, b);
      }
    }
    *reinterpret_cast<float2*>(Xw + g * 8 + 2 * t) = make_float2(x[0], x[1]);
    *reinterpret_cast<float2*>(Xw + (g + 8) * 8 + 2 * t) = make_float2(x[2], x[3]);
    __syncwarp();
    float y[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int m = 0; m < 16; m += 8) {
      const float* t_row = Tm + (r + g) * kLdT + r + m + t;
      const float a[4] = {t_row[0], t_row[8 * kLdT], t_row[4], t_row[8 * kLdT + 4]};
      const float b[2] = {Xw[(m + t) * 8 + g], Xw[(m + t + 4) * 8 + g]};
      mma_1688_f32(y, a, b);
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int row = g + (e < 2 ? 0 : 8), col = 2 * t + (e & 1);
      Tm[(r + row) * kLdT + n0 + col] = -y[e];
      Tm[(16 * j + row) * kLdT + r + 8 * h + col] = 0.f;  // above the diagonal
    }
    __syncwarp();  // the next item reads this block and rewrites Xw
  };
  // The warp's items in order. Chains (j, h) have lengths 3, 3, 2, 2, 1, 1 for j = 0, 1, 2. One warp per chain
  // (kWarps >= 6: chain (warp / 2, warp % 2)), or on 4 warps 3 items each: chain (0, h) on warps 0, 1, chains (1, h)
  // then (2, h) on warps 2, 3. One loop, so the item's code is inlined once.
  static_assert(kWarps == 4 || kWarps >= 6, "invert_unit_lower_64_by: 4 warps, or one warp per chain");
  const int h = warp % 2;
  int j = warp / 2, i = j + 1;
  const int items = kWarps == 4 ? 3 : (warp < 6 ? 3 - warp / 2 : 0);
  for (int s = 0; s < items; ++s) {
    item(j, h, i);
    if (++i == 4) ++j, i = j + 1;  // the next chain of the same h (4 warps: (1, h) -> (2, h))
  }
  sync();
}

// The same by all 256 threads of a CTA (X: kTSolveScratch floats).
template <int kLdA, int kLdT>
__device__ __forceinline__ void invert_unit_lower_64(const float* A, float* Tm, float* X, int tid) {
  invert_unit_lower_64_by<kLdA, kLdT, 8>(A, Tm, X, tid, [] { __syncthreads(); });
}

// From the fp32 T (row stride kLdT): Tu = T diag(beta), Tw = T diag(col_w) in 16 bits (row stride kLdC), all 256
// threads; save_t(i, j, t0, t1) sees T's elements (i, j), (i, j + 1) for the backward's copy.
template <typename T, int kLdT, int kLdC, typename SaveT>
__device__ __forceinline__ void scale_t_columns(const float* sT, const float* beta, const float* col_w, T* tu, T* tw,
                                                int tid, SaveT&& save_t) {
  constexpr int C = kGdnChunk;
  for (int idx = tid; idx < C * C / 2; idx += kGdnThreads) {
    const int i = idx / (C / 2), j = (idx % (C / 2)) * 2;
    const float t0 = sT[i * kLdT + j], t1 = sT[i * kLdT + j + 1];
    store2<T>(tu + i * kLdC + j, t0 * beta[j], t1 * beta[j + 1]);
    store2<T>(tw + i * kLdC + j, t0 * col_w[j], t1 * col_w[j + 1]);
    save_t(i, j, t0, t1);
  }
}

// W = Tw K for the warp's 16 rows r0.. and column half ch: store(row, column, w0, w1) takes each pair of columns, in
// passes of 64 columns (at most); pass_done(n0) follows the stores of the pass from column n0.
template <typename T, int kK, int kLdC, int kLdK, typename Store, typename PassDone>
__device__ __forceinline__ void w_rows(const T* tw, const T* key, int r0, int ch, int lane, Store&& store,
                                       PassDone&& pass_done) {
  constexpr int kNW = (kK / 2 < 64 ? kK / 2 : 64) / 8;
  const int g8 = lane / 4, t4 = lane % 4;
#pragma unroll
  for (int n0 = ch * (kK / 2); n0 < (ch + 1) * (kK / 2); n0 += 64) {
    float acc[kNW][4] = {};
    mma_rows<T, kGdnChunk / 16, kNW, true>(acc, tw + r0 * kLdC, kLdC, key + n0, kLdK, lane);  // B[m][c] = K[m][c]
#pragma unroll
    for (int nt = 0; nt < kNW; ++nt) {
      const int c = n0 + nt * 8 + 2 * t4;
      store(r0 + g8, c, acc[nt][0], acc[nt][1]);
      store(r0 + g8 + 8, c, acc[nt][2], acc[nt][3]);
    }
    pass_done(n0);
  }
}
template <typename T, int kK, int kLdC, int kLdK, typename Store>
__device__ __forceinline__ void w_rows(const T* tw, const T* key, int r0, int ch, int lane, Store&& store) {
  w_rows<T, kK, kLdC, kLdK>(tw, key, r0, ch, lane, store, [](int) {});
}

// CTAs per SM the registers are capped for at K <= 128 (2 fit in shared memory; scripts/gdn_phases.cu tries 1).
#ifndef MOM_OPS_GDN_CTAS_PER_SM
#define MOM_OPS_GDN_CTAS_PER_SM 2
#endif

// Two CTAs per SM where two fit in shared memory (K <= 128 with 64-column V-blocks), else one.
template <typename T, int kK, int kBV>
constexpr int kGdnCtasPerSm = 2 * GdnSmem<T, kK, kBV>::kBytes <= kSmemPerCta ? MOM_OPS_GDN_CTAS_PER_SM : 1;

// kSave: the training forward, which also writes p.save_s0, p.save_w, p.save_vn (a template flag so that the
// inference forward carries none of their registers).
template <typename T, int kK, int kBV, bool kSave = false>
__global__ void __launch_bounds__(kGdnThreads, kGdnCtasPerSm<T, kK, kBV>) gdn_fwd_kernel(GdnFwdParams p) {
  using L = GdnSmem<T, kK, kBV>;
  constexpr int C = kGdnChunk, kLdK = L::kLdK, kLdV = L::kLdV, kLdC = L::kLdC, kLdA = L::kLdA, kLdT = L::kLdT;
  using ST = StateTile<kK, kBV>;  // the state's register tiles
  constexpr int kMT = ST::kMT, kNT = ST::kNT;
  constexpr int kHalfV = kBV / 2, kNTo = kHalfV / 8;  // per-warp output columns (v) in the row phases
  extern __shared__ __align__(16) unsigned char smem[];
  // q, k, v buffers: chunk i uses buffer i % 2 with kPrefetch, else buffer 0.
  auto buffer_q = [&](int b) { return reinterpret_cast<T*>(smem + (b ? L::kQ2 : L::kQ)); };
  auto buffer_k = [&](int b) { return reinterpret_cast<T*>(smem + (b ? L::kKey2 : L::kKey)); };
  auto buffer_v = [&](int b) { return reinterpret_cast<T*>(smem + (b ? L::kV2 : L::kV)); };
  T* sS = reinterpret_cast<T*>(smem + L::kS);
  float* sA = reinterpret_cast<float*>(smem + L::kW);
  T* sW = reinterpret_cast<T*>(smem + L::kW);
  float* sT = reinterpret_cast<float*>(smem + L::kVn);
  T* sVn = reinterpret_cast<T*>(smem + L::kVn);
  T* sTw = reinterpret_cast<T*>(smem + L::kTw);
  T* sQK = sTw;  // after W is done
  T* sTu = reinterpret_cast<T*>(smem + L::kTu);
  float* sX = reinterpret_cast<float*>(smem + L::kTw);  // T-solve scratch, before Tw and Tu are written
  float* sG = reinterpret_cast<float*>(smem + L::kVec);
  float *sBeta = sG + C, *sRq = sBeta + C, *sRk = sRq + C, *sColW = sRk + C;

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g8 = lane / 4, t4 = lane % 4;
  const int rt = warp % 4, ch = warp / 4, r0 = 16 * rt;  // row tile and column half of the row phases
  const ChainCta cta = chain_cta(p, p.seq_order, p.num_vblocks, kBV, kK);
  const int seq = cta.seq, hv = cta.hv, h = cta.h, vb = cta.vb, v0 = cta.v0;
  const int64_t bos = cta.bos, eos = cta.eos;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  T* o = static_cast<T*>(p.o);

  float S[kMT][kNT][4];
  auto for_each_state = [&](auto&& fn) { ST::for_each(S, warp, lane, fn); };  // fn(element, k, v - v0)
  auto state_index = [&](int kk, int vv) { return cta.state_index(p.v_first, kK, p.dim_v, kk, vv); };
  for_each_state([&](float& x, int kk, int vv) { x = p.h0 != nullptr ? p.h0[state_index(kk, vv)] : 0.f; });
  auto publish_state = [&]() {  // S^T in 16 bits: the B operand of W S and Q S
    for_each_state([&](float& x, int kk, int vv) { sS[vv * kLdK + kk] = from_f32<T>(x); });
  };
  publish_state();
#ifdef MOM_OPS_GDN_PROFILE
  long long phase_cycles[kGdnPhases] = {}, phase_start = clock64();
#endif

  // (a) q, k [64, K], v [64, kBV] of the chunk at row c0 -> buffer b (zeros past the sequence), one commit group;
  // g and beta (0 past the sequence) -> registers of threads < 64.
  auto load_chunk = [&](int64_t c0, int b, float& g_row, float& beta_row) {
    const int len = int(min(int64_t(C), eos - c0));
    load_chunk_qk<T, kK, PaddedRows<kLdK>, kGdnThreads>(buffer_q(b), buffer_k(b), q, k, c0, len, p.heads_qk, h, tid);
    T* sV = buffer_v(b);
    for (int idx = tid; idx < C * (kBV / 8); idx += kGdnThreads) {
      const int r = idx / (kBV / 8), c = (idx % (kBV / 8)) * 8;
      cp_async16(sV + r * kLdV + c, v + ((c0 + min(r, len - 1)) * p.heads_v + hv) * p.dim_v + v0 + c, r < len);
    }
    cp_async_commit();
    if (tid < C) {
      g_row = tid < len ? gdn_floor_g(p.g[(c0 + tid) * p.heads_v + hv]) : 0.f;
      beta_row = tid < len ? p.beta[(c0 + tid) * p.heads_v + hv] : 0.f;
    }
  };
  float g_row = 0.f, beta_row = 0.f;  // this chunk's (thread tid < 64: row tid)
  if constexpr (L::kPrefetch) {
    if (bos < eos) load_chunk(bos, 0, g_row, beta_row);
  }

  for (int64_t c0 = bos; c0 < eos; c0 += C) {
    const int len = int(min(int64_t(C), eos - c0));
    const int buf = L::kPrefetch ? int(((c0 - bos) / C) % 2) : 0;
    T* sQ = buffer_q(buf);
    T* sK = buffer_k(buf);
    T* sV = buffer_v(buf);  // later V_d = rk e^{G_last - G} V_new
    if constexpr (kSave) {  // S0 of this chunk
      ST::store(static_cast<T*>(p.save_s0) +
                    ((chunk_slot(p, seq, bos) + (c0 - bos) / C) * p.heads_v + hv) * int64_t(kK) * p.dim_v + v0,
                p.dim_v, S, warp, lane);
    }
    // (a) This chunk's q, k, v, g, beta; with kPrefetch they were requested one chunk ago, and the next chunk's go
    // into the other buffer now (its last readers were the previous chunk's, before its closing barrier).
    if constexpr (L::kPrefetch) {
      if (tid < C) sG[tid] = g_row, sBeta[tid] = beta_row;
      if (c0 + C < eos) {
        load_chunk(c0 + C, buf ^ 1, g_row, beta_row);
        cp_async_wait<1>();  // all but the newest group: this chunk's
      } else {
        cp_async_wait<0>();
      }
    } else {
      load_chunk(c0, 0, g_row, beta_row);
      if (tid < C) sG[tid] = g_row, sBeta[tid] = beta_row;
      cp_async_wait<0>();
    }
    __syncthreads();
    GDN_PHASE(0);

    // (b) l2norm factors, G = cumsum(g).
    chunk_norms_and_cumsum<T, kK, PaddedRows<kLdK>>(sQ, sK, sG, sRq, sRk, p.l2norm, tid);
    __syncthreads();
    const float G_last = sG[C - 1];
    GDN_PHASE(1);

    // (c) Warps of column half 0: A rows r0.. (all 64 columns) -> sA (fp32). Half 1: QK rows r0.., kept in
    // registers as 16-bit A-operand fragments until sQK is free.
    uint32_t qk_frag[C / 16][4];
    if (tid < C) sColW[tid] = sBeta[tid] * __expf(sG[tid]) * sRk[tid];  // column factor of T in W (read in (d))
    {
      float acc[8][4] = {};
      const T* lhs = (ch == 0 ? sK : sQ) + r0 * kLdK;
      mma_rows<T, kK / 16, 8, false>(acc, lhs, kLdK, sK, kLdK, lane);  // B[kk][j] = K[j][kk]: n-major
      const int i0 = r0 + g8, i1 = i0 + 8;
      const float G0 = sG[i0], G1 = sG[i1];
      const float f0 = ch == 0 ? sBeta[i0] * sRk[i0] : sRq[i0], f1 = ch == 0 ? sBeta[i1] * sRk[i1] : sRq[i1];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        float x[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = e < 2 ? i0 : i1, j = nt * 8 + 2 * t4 + (e & 1);
          const bool keep = ch == 0 ? i > j : i >= j;
          x[e] = keep ? (e < 2 ? f0 : f1) * sRk[j] * __expf((e < 2 ? G0 : G1) - sG[j]) * acc[nt][e] : 0.f;
        }
        if (ch == 0) {
          *reinterpret_cast<float2*>(sA + i0 * kLdA + nt * 8 + 2 * t4) = make_float2(x[0], x[1]);
          *reinterpret_cast<float2*>(sA + i1 * kLdA + nt * 8 + 2 * t4) = make_float2(x[2], x[3]);
        } else {  // accumulator (16 x 8 tile nt) -> half of the A fragment of k-step nt / 2
          qk_frag[nt / 2][(nt % 2) * 2 + 0] = pack2<T>(x[0], x[1]);
          qk_frag[nt / 2][(nt % 2) * 2 + 1] = pack2<T>(x[2], x[3]);
        }
      }
    }
    __syncthreads();
    GDN_PHASE(2);

    // (d) T = (I + A)^-1 (fp32), then T diag(beta e^G rk) and T diag(beta) in 16 bits.
    invert_unit_lower_64<kLdA, kLdT>(sA, sT, sX, tid);
    GDN_PHASE(3);
    scale_t_columns<T, kLdT, kLdC>(sT, sBeta, sColW, sTu, sTw, tid, [&](int i, int j, float t0, float t1) {
      if constexpr (kSave) {
        if (vb == 0 && i < len) store2<T>(static_cast<T*>(p.save_t) + ((c0 + i) * p.heads_v + hv) * C + j, t0, t1);
      }
    });
    __syncthreads();
    GDN_PHASE(4);

    // (e) W = Tw K (rows r0.., columns of half ch) -> sW; U = Tu V (rows r0.., v columns of half ch).
    w_rows<T, kK, kLdC, kLdK>(sTw, sK, r0, ch, lane,
                              [&](int i, int c, float w0, float w1) { store2<T>(sW + i * kLdK + c, w0, w1); });
    const int vc0 = ch * kHalfV;  // first v column (within the block) of this warp's output tiles
    float vnew[kNTo][4] = {};
    mma_rows<T, C / 16, kNTo, true>(vnew, sTu + r0 * kLdC, kLdC, sV + vc0, kLdV, lane);  // U = Tu V
    __syncthreads();  // W complete; Tw, Tu and v are free
    GDN_PHASE(5);

    if (ch == 1) {  // QK -> sQK (the Tw region)
#pragma unroll
      for (int ks = 0; ks < C / 16; ++ks) {
        T* dst = sQK + (r0 + g8) * kLdC + ks * 16 + 2 * t4;
        *reinterpret_cast<uint32_t*>(dst) = qk_frag[ks][0];
        *reinterpret_cast<uint32_t*>(dst + 8 * kLdC) = qk_frag[ks][1];
        *reinterpret_cast<uint32_t*>(dst + 8) = qk_frag[ks][2];
        *reinterpret_cast<uint32_t*>(dst + 8 * kLdC + 8) = qk_frag[ks][3];
      }
    }
    {  // V_new = U - W S -> sVn; rk e^{G_last - G} V_new -> sV
      float ws[kNTo][4] = {};  // B[kk][v] = S[kk][v] = sS[v][kk]: n-major
      mma_rows<T, kK / 16, kNTo, false>(ws, sW + r0 * kLdK, kLdK, sS + vc0 * kLdK, kLdK, lane);
      const int i0 = r0 + g8, i1 = i0 + 8;
      const float d0 = sRk[i0] * __expf(G_last - sG[i0]), d1 = sRk[i1] * __expf(G_last - sG[i1]);
#pragma unroll
      for (int nt = 0; nt < kNTo; ++nt) {
        const int c = vc0 + nt * 8 + 2 * t4;
#pragma unroll
        for (int e = 0; e < 4; ++e) vnew[nt][e] -= ws[nt][e];
        store2<T>(sVn + i0 * kLdV + c, vnew[nt][0], vnew[nt][1]);
        store2<T>(sVn + i1 * kLdV + c, vnew[nt][2], vnew[nt][3]);
        store2<T>(sV + i0 * kLdV + c, d0 * vnew[nt][0], d0 * vnew[nt][1]);
        store2<T>(sV + i1 * kLdV + c, d1 * vnew[nt][2], d1 * vnew[nt][3]);
      }
    }
    __syncthreads();
    GDN_PHASE(6);
    if constexpr (kSave) {  // V_new rows of this V-block; W (all K columns) from V-block 0
      for (int idx = tid; idx < len * (kBV / 8); idx += kGdnThreads) {
        const int r = idx / (kBV / 8), c = (idx % (kBV / 8)) * 8;
        *reinterpret_cast<uint4*>(static_cast<T*>(p.save_vn) + ((c0 + r) * p.heads_v + hv) * p.dim_v + v0 + c) =
            *reinterpret_cast<const uint4*>(sVn + r * kLdV + c);
      }
      if (vb == 0) {
        for (int idx = tid; idx < len * (kK / 8); idx += kGdnThreads) {
          const int r = idx / (kK / 8), c = (idx % (kK / 8)) * 8;
          *reinterpret_cast<uint4*>(static_cast<T*>(p.save_w) + ((c0 + r) * p.heads_v + hv) * kK + c) =
              *reinterpret_cast<const uint4*>(sW + r * kLdK + c);
        }
      }
    }

    // (f) O = scale (rq e^G (Q S) + QK V_new), rows r0.., v columns of half ch -> global (the backward's rerun
    // passes no o).
    if (o != nullptr) {
      float acc[kNTo][4] = {};
      mma_rows<T, kK / 16, kNTo, false>(acc, sQ + r0 * kLdK, kLdK, sS + vc0 * kLdK, kLdK, lane);
      const int i0 = r0 + g8, i1 = i0 + 8;
      const float e0 = sRq[i0] * __expf(sG[i0]), e1 = sRq[i1] * __expf(sG[i1]);
#pragma unroll
      for (int nt = 0; nt < kNTo; ++nt) acc[nt][0] *= e0, acc[nt][1] *= e0, acc[nt][2] *= e1, acc[nt][3] *= e1;
      mma_rows<T, C / 16, kNTo, true>(acc, sQK + r0 * kLdC, kLdC, sVn + vc0, kLdV, lane);
#pragma unroll
      for (int nt = 0; nt < kNTo; ++nt) {
        const int c = v0 + vc0 + nt * 8 + 2 * t4;
        if (i0 < len) store2<T>(o + ((c0 + i0) * p.heads_v + hv) * p.dim_v + c, p.scale * acc[nt][0], p.scale * acc[nt][1]);
        if (i1 < len) store2<T>(o + ((c0 + i1) * p.heads_v + hv) * p.dim_v + c, p.scale * acc[nt][2], p.scale * acc[nt][3]);
      }
    }
    __syncthreads();  // every warp is done reading sS before it changes
    GDN_PHASE(7);

    // (g) S = e^{G_last} S + K^T V_d on this warp's state tiles.
    ST::decay_add_atb(S, __expf(G_last), sK, kLdK, sV, kLdV, warp, lane);
    publish_state();
    __syncthreads();
    GDN_PHASE(8);
  }
#ifdef MOM_OPS_GDN_PROFILE
  if (tid == 0)
    for (int i = 0; i < kGdnPhases; ++i) atomicAdd(p.phase_cycles + i, (unsigned long long)phase_cycles[i]);
#endif

  if (p.ht != nullptr) for_each_state([&](float& x, int kk, int vv) { p.ht[state_index(kk, vv)] = x; });
}

}  // namespace mom_ops
