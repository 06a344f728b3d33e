// Backward of the chunked gated-delta scan, part 1 of 2: the state-gradient chain. One CTA (8 warps) owns
// (sequence, value head, V-block of kBV columns) and walks the chunks in reverse with dS [K, kBV] in fp32
// registers (dS = dL/d state at the chunk end; dht or 0 at the last chunk). Per chunk it writes dS (16-bit) to
// the chunk's slot for the grads kernel, then (mom_ops/reference/gdn_backward.py, scale folded into P and dO):
//   P   = scale rq_i rk_j e^{G_i - G_j} (q_i . k_j)   (i >= j, raw q, k rows)
//   dVn = rk_i e^{G_L - G_i} (K dS)_i + (P^T dO)_i
//   dS <- e^{G_L} dS + Q^T diag(scale rq e^G) dO - W^T dVn
// W comes from the forward rerun (saved, 16-bit). The chunk's other gradients need only dS, the saved S0, W and
// V_new, so they run chunk-parallel afterwards (gdn_bwd_grads_kernel.cuh). At the end dS = dh0.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/copy_rows.cuh"
#include "common/cp_async.cuh"
#include "common/mma.cuh"
#include "gdn/chunk_prologue.cuh"
#include "gdn/gdn_bwd_params.h"
#include "gdn/gdn_fwd_kernel.cuh"

namespace mom_ops {

// Shared memory (byte offsets); 16-bit rows padded by 8 elements against bank conflicts. kBuffers (1 or 2) copies of
// W and dO: with two, chunk c - 1's W and dO load while chunk c is worked on (they are read only in its phases (c)
// to (e)); q and k have one copy (two do not fit at K = 256).
template <typename T, int kK, int kBV, int kBuffers>
struct GdnChainSmemOf {
  static constexpr int C = kGdnChunk;
  static constexpr int kLdK = kK + 8, kLdV = kBV + 8, kLdC = C + 8;
  static constexpr int bytes16(int rows, int ld) { return rows * ld * 2; }
  static constexpr int kQ = 0;                               // q [64][kLdK] (raw)
  static constexpr int kKey = kQ + bytes16(C, kLdK);         // k [64][kLdK] (raw)
  static constexpr int kW = kKey + bytes16(C, kLdK);         // W [kBuffers][64][kLdK] (saved)
  static constexpr int kWBuf = bytes16(C, kLdK);             //   (bytes per buffer)
  static constexpr int kDo = kW + kBuffers * kWBuf;          // dO [kBuffers][64][kLdV]
  static constexpr int kDoBuf = bytes16(C, kLdV);
  static constexpr int kDoq = kDo + kBuffers * kDoBuf;       // diag(scale rq e^G) dO [64][kLdV]
  static constexpr int kDvn = kDoq + bytes16(C, kLdV);       // -dVn [64][kLdV]
  static constexpr int kS = kDvn + bytes16(C, kLdV);         // dS^T [kBV][kLdK] (16-bit copy)
  static constexpr int kP = kS + bytes16(kBV, kLdK);         // P [64][kLdC]
  static constexpr int kVec = kP + bytes16(C, kLdC);         // f32 [64] each: G, rq, rk
  static constexpr int kBytes = kVec + 3 * C * 4;
  static constexpr int ctas_per_sm() { return 2 * kBytes <= kSmemPerCta ? 2 : 1; }
};

// Two buffers where they cost no CTA per SM (K = 256: 1 CTA either way), else one.
template <typename T, int kK, int kBV>
constexpr int kChainBuffers =
    GdnChainSmemOf<T, kK, kBV, 2>::kBytes <= kSmemPerCta &&
            GdnChainSmemOf<T, kK, kBV, 2>::ctas_per_sm() == GdnChainSmemOf<T, kK, kBV, 1>::ctas_per_sm()
        ? 2
        : 1;

template <typename T, int kK, int kBV>
using GdnChainSmem = GdnChainSmemOf<T, kK, kBV, kChainBuffers<T, kK, kBV>>;

template <typename T, int kK, int kBV>
constexpr int kChainCtasPerSm = GdnChainSmem<T, kK, kBV>::ctas_per_sm();

template <typename T, int kK, int kBV>
__global__ void __launch_bounds__(kGdnThreads, kChainCtasPerSm<T, kK, kBV>) gdn_bwd_chain_kernel(GdnBwdParams p) {
  using L = GdnChainSmem<T, kK, kBV>;
  constexpr int C = kGdnChunk, kLdK = L::kLdK, kLdV = L::kLdV, kLdC = L::kLdC;
  using ST = StateTile<kK, kBV>;  // dS's register tiles, as the forward's S
  constexpr int kMT = ST::kMT, kNT = ST::kNT;
  constexpr int kHalfV = kBV / 2, kNTo = kHalfV / 8;  // per-warp dVn columns
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem + L::kQ);
  T* sK = reinterpret_cast<T*>(smem + L::kKey);
  T* sDoq = reinterpret_cast<T*>(smem + L::kDoq);
  T* sDvn = reinterpret_cast<T*>(smem + L::kDvn);
  T* sS = reinterpret_cast<T*>(smem + L::kS);
  T* sP = reinterpret_cast<T*>(smem + L::kP);
  float* sG = reinterpret_cast<float*>(smem + L::kVec);
  float *sRq = sG + C, *sRk = sRq + C;

  if (p.chain_width != nullptr && *p.chain_width != p.chain_width_id) return;  // the other width's launch runs
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g8 = lane / 4, t4 = lane % 4;
  const int rt = warp % 4, ch = warp / 4, r0 = 16 * rt;
  const ChainCta cta = chain_cta(p, p.seq_order, p.num_vblocks, kBV, kK);
  const int seq = cta.seq, hv = cta.hv, h = cta.h, v0 = cta.v0;
  const int64_t bos = cta.bos, eos = cta.eos;
  const int64_t num_chunks = (eos - bos + C - 1) / C, slot0 = chunk_slot(p, seq, bos);
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* w = static_cast<const T*>(p.w);
  const T* dout = static_cast<const T*>(p.dout);

  float dS[kMT][kNT][4];
  auto for_each_state = [&](auto&& fn) { ST::for_each(dS, warp, lane, fn); };  // fn(element, k, v - v0)
  auto state_index = [&](int kk, int vv) { return cta.state_index(p.v_first, kK, p.dim_v, kk, vv); };
  for_each_state([&](float& x, int kk, int vv) { x = p.dht != nullptr ? p.dht[state_index(kk, vv)] : 0.f; });
  auto publish_state = [&]() {  // dS^T in 16 bits: the B operand of K dS
    for_each_state([&](float& x, int kk, int vv) { sS[vv * kLdK + kk] = from_f32<T>(x); });
  };
  publish_state();

  // W [64, K] and dO [64, kBV] of chunk ci into buffer b (zeros past the sequence's end), as one commit group.
  auto load_w_do = [&](int64_t ci, int b) {
    const int64_t c0 = bos + ci * C;
    const int len = int(min(int64_t(C), eos - c0));
    T* sW = reinterpret_cast<T*>(smem + L::kW + b * L::kWBuf);
    T* sDo = reinterpret_cast<T*>(smem + L::kDo + b * L::kDoBuf);
    copy_rows_async<C, kK, PaddedRows<kLdK>, kGdnThreads>(sW, w + (c0 * p.heads_v + hv) * kK, int64_t(p.heads_v) * kK,
                                                          len, tid);
    copy_rows_async<C, kBV, PaddedRows<kLdV>, kGdnThreads>(sDo, dout + (c0 * p.heads_v + hv) * p.dim_v + v0,
                                                           int64_t(p.heads_v) * p.dim_v, len, tid);
    cp_async_commit();
  };
  constexpr int kBuffers = kChainBuffers<T, kK, kBV>;
  if (kBuffers == 2 && num_chunks > 0) load_w_do(num_chunks - 1, 0);

  for (int64_t ci = num_chunks - 1; ci >= 0; --ci) {
    const int64_t c0 = bos + ci * C;
    const int len = int(min(int64_t(C), eos - c0));
    const int b = kBuffers == 2 ? int((num_chunks - 1 - ci) & 1) : 0;
    const T* sW = reinterpret_cast<const T*>(smem + L::kW + b * L::kWBuf);
    const T* sDo = reinterpret_cast<const T*>(smem + L::kDo + b * L::kDoBuf);
    // (a) q, k [64, K] -> shared memory (zeros past len), g; W and dO (loaded one chunk ahead with two buffers,
    // the next chunk's now going out into the other buffer, free since the previous chunk's last barrier); dS -> the
    // chunk's slot.
    load_chunk_qk<T, kK, PaddedRows<kLdK>, kGdnThreads>(sQ, sK, q, k, c0, len, p.heads_qk, h, tid);
    if constexpr (kBuffers == 1) {
      load_w_do(ci, 0);  // commits q, k, W and dO as one group
    } else {
      cp_async_commit();
      if (ci > 0) load_w_do(ci - 1, b ^ 1);
    }
    if (tid < C) sG[tid] = tid < len ? gdn_floor_g(p.g[(c0 + tid) * p.heads_v + hv]) : 0.f;
    ST::store(static_cast<T*>(p.ds1) + ((slot0 + ci) * p.heads_v + hv) * int64_t(kK) * p.dim_v + v0, p.dim_v, dS,
              warp, lane);
    if (kBuffers == 2 && ci > 0) {
      cp_async_wait<1>();  // all but the next chunk's W, dO
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    // (b) l2norm factors, G = cumsum(g).
    chunk_norms_and_cumsum<T, kK, PaddedRows<kLdK>>(sQ, sK, sG, sRq, sRk, p.l2norm, tid);
    __syncthreads();
    const float G_last = sG[C - 1];

    // (c) P rows r0.., columns 32 ch.. -> sP; diag(scale rq e^G) dO -> sDoq.
    causal_p_rows<T, kK, kLdK, kLdC>(sQ, sK, sG, sRq, sRk, p.scale, sP, r0, ch, lane);
    for (int idx = tid; idx < C * kBV / 2; idx += kGdnThreads) {
      const int r = idx / (kBV / 2), c = (idx % (kBV / 2)) * 2;
      const float f = p.scale * sRq[r] * __expf(sG[r]);
      store2<T>(sDoq + r * kLdV + c, f * to_f32<T>(sDo[r * kLdV + c]), f * to_f32<T>(sDo[r * kLdV + c + 1]));
    }
    __syncthreads();

    // (d) dVn rows r0.., v columns of half ch: rk e^{G_L - G} (K dS) + P^T dO -> -dVn in sDvn.
    {
      const int vc0 = ch * kHalfV;
      float acc[kNTo][4] = {};
      mma_rows<T, kK / 16, kNTo, false>(acc, sK + r0 * kLdK, kLdK, sS + vc0 * kLdK, kLdK, lane);
      const int i0 = r0 + g8, i1 = i0 + 8;
      const float d0 = sRk[i0] * __expf(G_last - sG[i0]), d1 = sRk[i1] * __expf(G_last - sG[i1]);
#pragma unroll
      for (int nt = 0; nt < kNTo; ++nt) acc[nt][0] *= d0, acc[nt][1] *= d0, acc[nt][2] *= d1, acc[nt][3] *= d1;
      mma_rows_at<T, C / 16, kNTo>(acc, sP + r0, kLdC, sDo + vc0, kLdV, lane);  // P^T dO
#pragma unroll
      for (int nt = 0; nt < kNTo; ++nt) {
        const int c = vc0 + nt * 8 + 2 * t4;
        store2<T>(sDvn + i0 * kLdV + c, -acc[nt][0], -acc[nt][1]);
        store2<T>(sDvn + i1 * kLdV + c, -acc[nt][2], -acc[nt][3]);
      }
    }
    __syncthreads();

    // (e) dS = e^{G_L} dS + Q^T Doq + W^T (-dVn) on this warp's tiles.
    ST::decay_add_atb2(dS, __expf(G_last), sQ, sW, kLdK, sDoq, sDvn, kLdV, warp, lane);
    publish_state();
    __syncthreads();
  }

  if (p.dh0 != nullptr) for_each_state([&](float& x, int kk, int vv) { p.dh0[state_index(kk, vv)] = x; });
}

}  // namespace mom_ops
