// The fp32 state (or state gradient) [kK, kBV] that a CTA of 8 warps keeps in mma.sync accumulators while it walks
// a sequence: the forward (gdn_fwd_kernel.cuh), the split forward's chain (gdn_split_kernels.cuh) and the backward
// chain (gdn_bwd_chain_kernel.cuh). kWarpsM x kWarpsN warps, each kMT 16-row (k) x kNT 8-column (v) tiles; with
// wm = warp % kWarpsM, wn = warp / kWarpsM, g = lane / 4, t = lane % 4, element e of tile (mt, nt) is
//   k = (wm kMT + mt) 16 + g (+8 for e >= 2),   v = (wn kNT + nt) 8 + 2t (+1 for odd e)   (v within the V-block).
#pragma once

#include <cstdint>

#include "common/mma.cuh"

namespace mom_ops {

template <int kK, int kBV>
struct StateTile {
  static constexpr int kWarpsM = kK / 16 < 8 ? kK / 16 : 8, kWarpsN = 8 / kWarpsM;
  static constexpr int kMT = kK / 16 / kWarpsM, kNT = kBV / 8 / kWarpsN;

  // fn(element, k, v) for each of this thread's elements of s.
  template <typename Fn>
  __device__ __forceinline__ static void for_each(float (&s)[kMT][kNT][4], int warp, int lane, Fn&& fn) {
    const int wm = warp % kWarpsM, wn = warp / kWarpsM, g8 = lane / 4, t4 = lane % 4;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          fn(s[mt][nt][e], (wm * kMT + mt) * 16 + g8 + (e >= 2 ? 8 : 0), (wn * kNT + nt) * 8 + 2 * t4 + (e & 1));
  }

  // s[k][v] = decay s[k][v] + sum over the chunk's 64 rows c of a[c][k] b[c][v]: the state update K^T V_d. a, b
  // 16-bit row-major in shared memory (a[c * lda + k], b[c * ldb + v]).
  template <typename T>
  __device__ __forceinline__ static void decay_add_atb(float (&s)[kMT][kNT][4], float decay, const T* a, int lda,
                                                       const T* b, int ldb, int warp, int lane) {
    decay_add_atb_from<T>(s, decay, [&](uint32_t (&af)[4], int c0, int m0) {
      load_a_trans(af, a + c0 * lda + m0, lda, lane);  // A[k][c] = a[c][k]: stored c-major
    }, b, ldb, warp, lane);
  }

  // The same with a in 64-column slabs of 64 rows in the 128-byte swizzle (Sw128Slabs<64>, common/mma_rows.cuh).
  template <typename T>
  __device__ __forceinline__ static void decay_add_atb_sw128(float (&s)[kMT][kNT][4], float decay, const T* a,
                                                             const T* b, int ldb, int warp, int lane) {
    decay_add_atb_from<T>(s, decay, [&](uint32_t (&af)[4], int c0, int m0) {
      load_a_trans_sw128<64>(af, a, c0, m0, lane);
    }, b, ldb, warp, lane);
  }

  // Their body: a_fragment(af, c0, m0) gives the A fragment A[m][c] = a[c0 + c][m0 + m] (16 x 16).
  template <typename T, typename AFragment>
  __device__ __forceinline__ static void decay_add_atb_from(float (&s)[kMT][kNT][4], float decay,
                                                            AFragment&& a_fragment, const T* b, int ldb, int warp,
                                                            int lane) {
    const int wm = warp % kWarpsM, wn = warp / kWarpsM;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      const int m0 = (wm * kMT + mt) * 16;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] *= decay;
#pragma unroll
      for (int kk = 0; kk < 64; kk += 16) {
        uint32_t af[4];
        a_fragment(af, kk, m0);
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          uint32_t bf[2];
          load_b_trans(bf, b + kk * ldb + (wn * kNT + nt) * 8, ldb, lane);
          mma_16816<T>(s[mt][nt], af, bf);
        }
      }
    }
  }

  // s[k][v] = decay s[k][v] + sum over the chunk's 64 rows c of (a1[c][k] b1[c][v] + a2[c][k] b2[c][v]), the two
  // products interleaved per 16 rows and 8 columns: the backward's dS update (Q^T doq + W^T (-dVn)).
  template <typename T>
  __device__ __forceinline__ static void decay_add_atb2(float (&s)[kMT][kNT][4], float decay, const T* a1, const T* a2,
                                                        int lda, const T* b1, const T* b2, int ldb, int warp,
                                                        int lane) {
    decay_add_atb2_from<T>(
        s, decay, [&](uint32_t (&af)[4], int c0, int m0) { load_a_trans(af, a1 + c0 * lda + m0, lda, lane); },
        [&](uint32_t (&af)[4], int c0, int m0) { load_a_trans(af, a2 + c0 * lda + m0, lda, lane); }, b1, b2, ldb, warp,
        lane);
  }

  // The same with a1, a2 in 64-column slabs of 64 rows in the 128-byte swizzle (Sw128Slabs<64>, common/mma_rows.cuh).
  template <typename T>
  __device__ __forceinline__ static void decay_add_atb2_sw128(float (&s)[kMT][kNT][4], float decay, const T* a1,
                                                              const T* a2, const T* b1, const T* b2, int ldb, int warp,
                                                              int lane) {
    decay_add_atb2_from<T>(
        s, decay, [&](uint32_t (&af)[4], int c0, int m0) { load_a_trans_sw128<64>(af, a1, c0, m0, lane); },
        [&](uint32_t (&af)[4], int c0, int m0) { load_a_trans_sw128<64>(af, a2, c0, m0, lane); }, b1, b2, ldb, warp,
        lane);
  }

  // Their body (decay_add_atb_from's, with two products interleaved).
  template <typename T, typename AFragment1, typename AFragment2>
  __device__ __forceinline__ static void decay_add_atb2_from(float (&s)[kMT][kNT][4], float decay,
                                                             AFragment1&& a1_fragment, AFragment2&& a2_fragment,
                                                             const T* b1, const T* b2, int ldb, int warp, int lane) {
    const int wm = warp % kWarpsM, wn = warp / kWarpsM;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      const int m0 = (wm * kMT + mt) * 16;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] *= decay;
#pragma unroll
      for (int kk = 0; kk < 64; kk += 16) {
        uint32_t af1[4], af2[4];
        a1_fragment(af1, kk, m0);
        a2_fragment(af2, kk, m0);
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          uint32_t bf[2];
          load_b_trans(bf, b1 + kk * ldb + (wn * kNT + nt) * 8, ldb, lane);
          mma_16816<T>(s[mt][nt], af1, bf);
          load_b_trans(bf, b2 + kk * ldb + (wn * kNT + nt) * 8, ldb, lane);
          mma_16816<T>(s[mt][nt], af2, bf);
        }
      }
    }
  }

  // s in 16 bits to dst[k * ld + v] ((v, v + 1) pairs as 32-bit stores): the chunk states the kernels save.
  template <typename T>
  __device__ __forceinline__ static void store(T* dst, int64_t ld, const float (&s)[kMT][kNT][4], int warp, int lane) {
    const int wm = warp % kWarpsM, wn = warp / kWarpsM, g8 = lane / 4, t4 = lane % 4;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
          const int kk = (wm * kMT + mt) * 16 + g8 + (e >= 2 ? 8 : 0), vv = (wn * kNT + nt) * 8 + 2 * t4;
          store2<T>(dst + int64_t(kk) * ld + vv, s[mt][nt][e], s[mt][nt][e + 1]);
        }
  }
};

}  // namespace mom_ops
