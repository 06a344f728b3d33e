// Chunked gated-delta-rule forward on tensor cores (mma.sync m16n8k16, bf16/fp16 operands, fp32 accumulate).
// One CTA (4 warps) owns (sequence, value head, V-block of kBV columns) and walks the sequence in chunks of 64
// rows with the state S [K, kBV] in fp32 registers; nothing but o and the final state leaves the chip.
// Per chunk (DESIGN.md §1, chunked form; G = cumsum g inside the chunk):
//   A  = (K K^T) * beta_i exp(G_i - G_j) (i > j),     QK = (Q K^T) * exp(G_i - G_j) (i >= j)
//   T  = (I + A)^-1 (forward substitution, one column per thread)
//   W  = T diag(beta e^G) K,   U = T diag(beta) V,   V_new = U - W S
//   O  = scale (e^G * (Q S) + QK V_new)
//   S <- e^{G_last} S + K^T (e^{G_last - G} * V_new)
// S is an mma operand in 16 bits (as in fla); everything else that feeds a sum is fp32.
// Status: compiled, not yet run on a GPU (see csrc/gdn/NOTES.md); registered behind MOM_OPS_EXPERIMENTAL_CUDA_SCAN.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/mma.cuh"
#include "gdn/scan_params.h"

namespace mom_ops {

constexpr int kGdnChunk = 64;
constexpr int kGdnThreads = 128;  // 4 warps; warp w owns chunk rows 16w .. 16w + 15

struct GdnFwdParams : ScanParams {
  int num_vblocks;  // V / kBV
  bool v_first;     // states are [N, HV, V, K]
};

// Shared-memory layout (element offsets); rows padded by 8 16-bit elements against bank conflicts.
template <typename T, int kK, int kBV>
struct GdnSmem {
  static constexpr int kLdK = kK + 8, kLdV = kBV + 8, kLdC = kGdnChunk + 8, kLdA = kGdnChunk + 4;
  static constexpr int kQ = 0;                            // T [64][kLdK]  q (l2-normalised)
  static constexpr int kKey = kQ + kGdnChunk * kLdK;      // T [64][kLdK]  k (l2-normalised)
  static constexpr int kW = kKey + kGdnChunk * kLdK;      // T [64][kLdK]  W
  static constexpr int kS = kW + kGdnChunk * kLdK;        // T [kBV][kLdK] S^T (B operand, n-major)
  static constexpr int kV = kS + kBV * kLdK;              // T [64][kLdV]  v
  static constexpr int kVn = kV + kGdnChunk * kLdV;       // T [64][kLdV]  V_new
  static constexpr int kVd = kVn + kGdnChunk * kLdV;      // T [64][kLdV]  e^{G_last - G} V_new
  static constexpr int kTw = kVd + kGdnChunk * kLdV;      // T [64][kLdC]  T diag(beta e^G)
  static constexpr int kTu = kTw + kGdnChunk * kLdC;      // T [64][kLdC]  T diag(beta)
  static constexpr int kQK = kTu + kGdnChunk * kLdC;      // T [64][kLdC]  masked, decayed Q K^T
  static constexpr int kHalfEnd = kQK + kGdnChunk * kLdC;
  // fp32 part, after the 16-bit part (aligned to 16 bytes)
  static constexpr int kF32Begin = ((kHalfEnd * int(sizeof(T)) + 15) / 16) * 16 / 4;  // in floats
  static constexpr int kA = 0;                            // f32 [64][kLdA]
  static constexpr int kG = kA + kGdnChunk * kLdA;        // f32 [64] G (cumsum)
  static constexpr int kBeta = kG + kGdnChunk;            // f32 [64]
  static constexpr int kF32End = kBeta + kGdnChunk;
  static constexpr size_t kBytes = size_t(kF32Begin + kF32End) * 4;
};

template <typename T>
__device__ __forceinline__ uint32_t pack2(float x, float y) {
  T a = from_f32<T>(x), b = from_f32<T>(y);
  return uint32_t(*reinterpret_cast<uint16_t*>(&a)) | (uint32_t(*reinterpret_cast<uint16_t*>(&b)) << 16);
}

template <typename T>
__device__ __forceinline__ void store2(T* dst, float x, float y) {
  *reinterpret_cast<uint32_t*>(dst) = pack2<T>(x, y);
}

template <typename T, int kK, int kBV>
__global__ void __launch_bounds__(kGdnThreads, 1) gdn_fwd_kernel(GdnFwdParams p) {
  using L = GdnSmem<T, kK, kBV>;
  constexpr int C = kGdnChunk;
  constexpr int kMTiles = kK / 16 / 4;  // state rows (k) per warp, in 16-row tiles
  constexpr int kNTiles = kBV / 8;      // state columns (v), in 8-column tiles
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sh = reinterpret_cast<T*>(smem_raw);
  float* sf = reinterpret_cast<float*>(smem_raw) + L::kF32Begin;
  T *sQ = sh + L::kQ, *sK = sh + L::kKey, *sW = sh + L::kW, *sS = sh + L::kS, *sV = sh + L::kV;
  T *sVn = sh + L::kVn, *sVd = sh + L::kVd, *sTw = sh + L::kTw, *sTu = sh + L::kTu, *sQK = sh + L::kQK;
  float *sA = sf + L::kA, *sG = sf + L::kG, *sBeta = sf + L::kBeta;

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g8 = lane / 4, t4 = lane % 4;
  const int vb = blockIdx.x % p.num_vblocks;
  const int hv = (blockIdx.x / p.num_vblocks) % p.heads_v;
  const int seq = blockIdx.x / (p.num_vblocks * p.heads_v);
  const int h = hv / (p.heads_v / p.heads_qk), v0 = vb * kBV;
  int64_t bos, eos;
  sequence_bounds(p, seq, bos, eos);
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  T* o = static_cast<T*>(p.o);
  const int64_t state_off = (int64_t(seq) * p.heads_v + hv) * int64_t(kK) * p.dim_v;

  // State fragments: warp w holds state rows (k) [kMTiles * 16 * w, ...), all kBV columns.
  // S[mt][nt][e]: k = (warp * kMTiles + mt) * 16 + g8 (+8 for e >= 2), v = nt * 8 + 2 t4 (+1 for odd e).
  float S[kMTiles][kNTiles][4];
  auto for_each_state = [&](auto&& fn) {  // fn(element, k, v - v0)
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          fn(S[mt][nt][e], (warp * kMTiles + mt) * 16 + g8 + (e >= 2 ? 8 : 0), nt * 8 + 2 * t4 + (e & 1));
  };
  auto state_index = [&](int kk, int vv) -> int64_t {  // element (k, v0 + vv) of this head's state
    return state_off + (p.v_first ? int64_t(v0 + vv) * kK + kk : int64_t(kk) * p.dim_v + v0 + vv);
  };
  for_each_state([&](float& x, int kk, int vv) { x = p.h0 != nullptr ? p.h0[state_index(kk, vv)] : 0.f; });
  // S^T in 16 bits for the W S and Q S products.
  auto publish_state = [&]() {
    for_each_state([&](float& x, int kk, int vv) { sS[vv * L::kLdK + kk] = from_f32<T>(x); });
  };
  publish_state();

  for (int64_t c0 = bos; c0 < eos; c0 += C) {
    const int len = int(min(int64_t(C), eos - c0));
    // (a) Load q, k [64, K], v [64, kBV], g, beta; rows past len are zero (g = beta = 0 there).
    for (int idx = tid; idx < C * (kK / 8); idx += kGdnThreads) {
      const int r = idx / (kK / 8), c = (idx % (kK / 8)) * 8;
      uint4 qv = make_uint4(0, 0, 0, 0), kv = qv;
      if (r < len) {
        const int64_t src = ((c0 + r) * p.heads_qk + h) * kK + c;
        qv = *reinterpret_cast<const uint4*>(q + src);
        kv = *reinterpret_cast<const uint4*>(k + src);
      }
      *reinterpret_cast<uint4*>(sQ + r * L::kLdK + c) = qv;
      *reinterpret_cast<uint4*>(sK + r * L::kLdK + c) = kv;
    }
    for (int idx = tid; idx < C * (kBV / 8); idx += kGdnThreads) {
      const int r = idx / (kBV / 8), c = (idx % (kBV / 8)) * 8;
      uint4 vv = make_uint4(0, 0, 0, 0);
      if (r < len) vv = *reinterpret_cast<const uint4*>(v + ((c0 + r) * p.heads_v + hv) * p.dim_v + v0 + c);
      *reinterpret_cast<uint4*>(sV + r * L::kLdV + c) = vv;
    }
    if (tid < C) {
      sG[tid] = tid < len ? p.g[(c0 + tid) * p.heads_v + hv] : 0.f;
      sBeta[tid] = tid < len ? p.beta[(c0 + tid) * p.heads_v + hv] : 0.f;
    }
    __syncthreads();
    // l2norm of q and k rows (warp w: rows 16w..16w+15), and G = cumsum(g) (warp 0).
    if (p.l2norm) {
      for (int idx = warp * 32; idx < warp * 32 + 32; ++idx) {  // 16 rows of q, then of k
        T* row = (idx % 2 == 0 ? sQ : sK) + (idx / 2) * L::kLdK;
        {
          float ss = 0.f;
          for (int c = lane; c < kK; c += 32) ss += to_f32<T>(row[c]) * to_f32<T>(row[c]);
#pragma unroll
          for (int off = 16; off > 0; off /= 2) ss += __shfl_xor_sync(0xffffffffu, ss, off);
          const float inv = rsqrtf(ss + 1e-6f);
          for (int c = lane; c < kK; c += 32) row[c] = from_f32<T>(to_f32<T>(row[c]) * inv);
        }
      }
    }
    if (warp == 0) {
      float a = sG[2 * lane], b = sG[2 * lane + 1];
      float pair = a + b, incl = pair;
#pragma unroll
      for (int off = 1; off < 32; off *= 2) {
        const float up = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += up;
      }
      const float excl = incl - pair;
      sG[2 * lane] = excl + a;
      sG[2 * lane + 1] = excl + pair;
    }
    __syncthreads();
    const float G_last = sG[C - 1];

    // (c) A = K K^T and QK = Q K^T for rows 16w.. (all 64 columns), masked and decayed.
    {
      float acc_a[8][4] = {}, acc_q[8][4] = {};
#pragma unroll
      for (int kk = 0; kk < kK; kk += 16) {
        uint32_t ak[4], aq[4];
        load_a(ak, sK + (warp * 16) * L::kLdK + kk, L::kLdK, lane);
        load_a(aq, sQ + (warp * 16) * L::kLdK + kk, L::kLdK, lane);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          uint32_t b[2];
          load_b(b, sK + (nt * 8) * L::kLdK + kk, L::kLdK, lane);  // B[kk][j] = K[j][kk]: n-major storage
          mma_16816<T>(acc_a[nt], ak, b);
          mma_16816<T>(acc_q[nt], aq, b);
        }
      }
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = warp * 16 + g8 + (e >= 2 ? 8 : 0), j = nt * 8 + 2 * t4 + (e & 1);
          const bool ok = i < len && j < len;
          const float decay = (ok && i >= j) ? __expf(sG[i] - sG[j]) : 0.f;
          sA[i * L::kLdA + j] = (i > j) ? sBeta[i] * decay * acc_a[nt][e] : 0.f;
          sQK[i * L::kLdC + j] = from_f32<T>(decay * acc_q[nt][e]);
        }
    }
    __syncthreads();

    // (d) T = (I + A)^-1, one column per thread; T diag(beta e^G) and T diag(beta) in 16 bits.
    if (tid < C) {
      const int j = tid;
      float col[C];
#pragma unroll
      for (int i = 0; i < C; ++i) {
        float acc = (i == j) ? 1.f : 0.f;
#pragma unroll
        for (int m = 0; m < i; ++m) acc -= sA[i * L::kLdA + m] * col[m];
        col[i] = acc;
      }
      const float bu = sBeta[j], bw = bu * __expf(sG[j]);
#pragma unroll
      for (int i = 0; i < C; ++i) {
        sTw[i * L::kLdC + j] = from_f32<T>(col[i] * bw);
        sTu[i * L::kLdC + j] = from_f32<T>(col[i] * bu);
      }
    }
    __syncthreads();

    // (e) W = Tw K (rows 16w.., 64 columns at a time) -> sW; U = Tu V; V_new = U - W S.
    const int r0 = warp * 16;
#pragma unroll
    for (int n0 = 0; n0 < kK; n0 += 64) {
      float acc[8][4] = {};
#pragma unroll
      for (int kk = 0; kk < C; kk += 16) {
        uint32_t a[4];
        load_a(a, sTw + r0 * L::kLdC + kk, L::kLdC, lane);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          if (n0 + nt * 8 >= kK) break;
          uint32_t b[2];
          load_b_trans(b, sK + kk * L::kLdK + n0 + nt * 8, L::kLdK, lane);  // B[m][c] = K[m][c]: k-major
          mma_16816<T>(acc[nt], a, b);
        }
      }
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        if (n0 + nt * 8 >= kK) break;
        const int c = n0 + nt * 8 + 2 * t4;
        store2<T>(sW + (r0 + g8) * L::kLdK + c, acc[nt][0], acc[nt][1]);
        store2<T>(sW + (r0 + g8 + 8) * L::kLdK + c, acc[nt][2], acc[nt][3]);
      }
    }
    __syncwarp();
    float vnew[kNTiles][4] = {};
#pragma unroll
    for (int kk = 0; kk < C; kk += 16) {  // U = Tu V
      uint32_t a[4];
      load_a(a, sTu + r0 * L::kLdC + kk, L::kLdC, lane);
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
        uint32_t b[2];
        load_b_trans(b, sV + kk * L::kLdV + nt * 8, L::kLdV, lane);
        mma_16816<T>(vnew[nt], a, b);
      }
    }
    {
      float ws[kNTiles][4] = {};
#pragma unroll
      for (int kk = 0; kk < kK; kk += 16) {  // W S
        uint32_t a[4];
        load_a(a, sW + r0 * L::kLdK + kk, L::kLdK, lane);
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
          uint32_t b[2];
          load_b(b, sS + (nt * 8) * L::kLdK + kk, L::kLdK, lane);  // B[kk][v] = S[kk][v] = sS[v][kk]
          mma_16816<T>(ws[nt], a, b);
        }
      }
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
        const int c = nt * 8 + 2 * t4, i0 = r0 + g8, i1 = r0 + g8 + 8;
#pragma unroll
        for (int e = 0; e < 4; ++e) vnew[nt][e] -= ws[nt][e];
        store2<T>(sVn + i0 * L::kLdV + c, vnew[nt][0], vnew[nt][1]);
        store2<T>(sVn + i1 * L::kLdV + c, vnew[nt][2], vnew[nt][3]);
        const float d0 = __expf(G_last - sG[i0]), d1 = __expf(G_last - sG[i1]);
        store2<T>(sVd + i0 * L::kLdV + c, d0 * vnew[nt][0], d0 * vnew[nt][1]);
        store2<T>(sVd + i1 * L::kLdV + c, d1 * vnew[nt][2], d1 * vnew[nt][3]);
      }
    }
    __syncthreads();

    // (f) O = scale (e^G (Q S) + QK V_new) for rows 16w.. -> global.
    {
      float acc[kNTiles][4] = {};
#pragma unroll
      for (int kk = 0; kk < kK; kk += 16) {
        uint32_t a[4];
        load_a(a, sQ + r0 * L::kLdK + kk, L::kLdK, lane);
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
          uint32_t b[2];
          load_b(b, sS + (nt * 8) * L::kLdK + kk, L::kLdK, lane);
          mma_16816<T>(acc[nt], a, b);
        }
      }
      const float e0 = __expf(sG[r0 + g8]), e1 = __expf(sG[r0 + g8 + 8]);
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
        acc[nt][0] *= e0, acc[nt][1] *= e0, acc[nt][2] *= e1, acc[nt][3] *= e1;
      }
#pragma unroll
      for (int kk = 0; kk < C; kk += 16) {
        uint32_t a[4];
        load_a(a, sQK + r0 * L::kLdC + kk, L::kLdC, lane);
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
          uint32_t b[2];
          load_b_trans(b, sVn + kk * L::kLdV + nt * 8, L::kLdV, lane);
          mma_16816<T>(acc[nt], a, b);
        }
      }
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
        const int c = v0 + nt * 8 + 2 * t4;
        const int i0 = r0 + g8, i1 = r0 + g8 + 8;
        if (i0 < len) store2<T>(o + ((c0 + i0) * p.heads_v + hv) * p.dim_v + c, p.scale * acc[nt][0], p.scale * acc[nt][1]);
        if (i1 < len) store2<T>(o + ((c0 + i1) * p.heads_v + hv) * p.dim_v + c, p.scale * acc[nt][2], p.scale * acc[nt][3]);
      }
    }
    __syncthreads();  // every warp is done reading sS before it changes

    // (g) S = e^{G_last} S + K^T Vd (warp w: state rows of its m-tiles).
    const float eg = __expf(G_last);
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
      const int m0 = (warp * kMTiles + mt) * 16;
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) S[mt][nt][e] *= eg;
#pragma unroll
      for (int kk = 0; kk < C; kk += 16) {
        uint32_t a[4];
        load_a_trans(a, sK + kk * L::kLdK + m0, L::kLdK, lane);  // A[c][i] = K[i][c]: stored k-major
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
          uint32_t b[2];
          load_b_trans(b, sVd + kk * L::kLdV + nt * 8, L::kLdV, lane);
          mma_16816<T>(S[mt][nt], a, b);
        }
      }
    }
    publish_state();
    __syncthreads();
  }

  if (p.ht != nullptr) for_each_state([&](float& x, int kk, int vv) { p.ht[state_index(kk, vv)] = x; });
}

}  // namespace mom_ops
