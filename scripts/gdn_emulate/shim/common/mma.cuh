// Shim of csrc/common/mma.cuh: ldmatrix, mma.sync m16n8k16 and m16n8k8 (tf32) emulated per warp from the PTX fragment layouts.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>
namespace mom_ops {
namespace detail {
// ldmatrix .x{nmat} [.trans]: lanes 8i..8i+7 address the rows of matrix i.
inline void ldmatrix(int nmat, bool trans, const void* addr, uint32_t* out) {
  auto& w = emu::warp(); const int l = emu::lane();
  w.addr[l] = addr;
  emu::enter(w, 10 + 2 * nmat + trans);
  for (int i = 0; i < 8 * nmat; ++i)
    if (reinterpret_cast<uintptr_t>(w.addr[i]) % 16 != 0 || !emu::in_smem(w.addr[i], 16))
      EMU_FAIL("ldmatrix row address %p (lane %d) misaligned or outside smem", w.addr[i], i);
  for (int i = 0; i < nmat; ++i) {
    uint16_t lo, hi;
    if (!trans) {
      const uint16_t* row = static_cast<const uint16_t*>(w.addr[8 * i + l / 4]);
      lo = row[2 * (l % 4)], hi = row[2 * (l % 4) + 1];
    } else {
      lo = static_cast<const uint16_t*>(w.addr[8 * i + 2 * (l % 4)])[l / 4];
      hi = static_cast<const uint16_t*>(w.addr[8 * i + 2 * (l % 4) + 1])[l / 4];
    }
    out[i] = uint32_t(lo) | (uint32_t(hi) << 16);
  }
  emu::leave(w);
}
}  // namespace detail

template <typename T> inline void ldmatrix_x4(uint32_t (&a)[4], const T* row) { detail::ldmatrix(4, false, row, a); }
template <typename T> inline void ldmatrix_x4_trans(uint32_t (&a)[4], const T* row) {
  detail::ldmatrix(4, true, row, a);
}
template <typename T> inline void load_a(uint32_t (&a)[4], const T* tile, int stride, int lane) {
  const T* p = tile + (lane % 16) * stride + (lane / 16) * 8;
  detail::ldmatrix(4, false, p, a);
}
template <typename T> inline void load_a_trans(uint32_t (&a)[4], const T* tile, int stride, int lane) {
  const T* p = tile + ((lane % 8) + (lane / 16) * 8) * stride + ((lane / 8) % 2) * 8;
  detail::ldmatrix(4, true, p, a);
}
template <typename T> inline void load_b(uint32_t (&b)[2], const T* tile, int stride, int lane) {
  const T* p = tile + (lane % 8) * stride + ((lane / 8) % 2) * 8;
  detail::ldmatrix(2, false, p, b);
}
template <typename T> inline void load_b_trans(uint32_t (&b)[2], const T* tile, int stride, int lane) {
  const T* p = tile + (lane % 16) * stride;
  detail::ldmatrix(2, true, p, b);
}
// This lane's C fragment (c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1)) of d += A B, summed in double.
template <int kK>
inline void accumulate_lane(float (&d)[4], const float (&A)[16][kK], const float (&B)[kK][8], int lane) {
  const int g = lane / 4, t = lane % 4;
  const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
  for (int e = 0; e < 4; ++e) {
    double s = d[e];
    for (int k = 0; k < kK; ++k) s += double(A[rows[e]][k]) * double(B[k][cols[e]]);
    d[e] = float(s);
  }
}
// This lane's A and B fragment registers to the warp, then the warp's rendezvous (collective `kind`).
inline emu::Warp& share_fragments(const uint32_t (&a)[4], const uint32_t (&b)[2], int kind) {
  auto& w = emu::warp(); const int l = emu::lane();
  for (int i = 0; i < 4; ++i) w.a[l][i] = a[i];
  w.b[l][0] = b[0], w.b[l][1] = b[1];
  emu::enter(w, kind);
  return w;
}
// PTX m16n8k16 .row.col: a0 (g, 2t..), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..); b0 (k 2t.., n g),
// b1 (k 2t+8.., n g); c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1).
template <typename T> inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  auto& w = share_fragments(a, b, 1);
  float A[16][16], B[16][8];
  for (int L = 0; L < 32; ++L) {
    const int g = L / 4, t = L % 4;
    auto lo = [](uint32_t x) { return emu::bits_to_f<T>(uint16_t(x & 0xffff)); };
    auto hi = [](uint32_t x) { return emu::bits_to_f<T>(uint16_t(x >> 16)); };
    A[g][2 * t] = lo(w.a[L][0]), A[g][2 * t + 1] = hi(w.a[L][0]);
    A[g + 8][2 * t] = lo(w.a[L][1]), A[g + 8][2 * t + 1] = hi(w.a[L][1]);
    A[g][2 * t + 8] = lo(w.a[L][2]), A[g][2 * t + 9] = hi(w.a[L][2]);
    A[g + 8][2 * t + 8] = lo(w.a[L][3]), A[g + 8][2 * t + 9] = hi(w.a[L][3]);
    B[2 * t][g] = lo(w.b[L][0]), B[2 * t + 1][g] = hi(w.b[L][0]);
    B[2 * t + 8][g] = lo(w.b[L][1]), B[2 * t + 9][g] = hi(w.b[L][1]);
  }
  accumulate_lane(d, A, B, emu::lane());
  emu::leave(w);
}

// cvt.rna.tf32.f32: 10 mantissa bits, to nearest, ties away from zero (finite inputs).
inline uint32_t to_tf32(float x) {
  uint32_t u; std::memcpy(&u, &x, 4);
  return (u + 0x1000u) & 0xffffe000u;
}
inline float __uint_as_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
// PTX m16n8k8 .tf32: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4); b0 (k t, n g), b1 (k t+4, n g); C as above.
inline void mma_1688_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  auto& w = share_fragments(a, b, 2);
  float A[16][8], B[8][8];
  for (int L = 0; L < 32; ++L) {
    const int g = L / 4, t = L % 4;
    A[g][t] = __uint_as_float(w.a[L][0]), A[g + 8][t] = __uint_as_float(w.a[L][1]);
    A[g][t + 4] = __uint_as_float(w.a[L][2]), A[g + 8][t + 4] = __uint_as_float(w.a[L][3]);
    B[t][g] = __uint_as_float(w.b[L][0]), B[t + 4][g] = __uint_as_float(w.b[L][1]);
  }
  accumulate_lane(d, A, B, emu::lane());
  emu::leave(w);
}

template <typename T> inline T from_f32(float x) { return T(x); }  // c10 conversions round to nearest even
template <typename T> inline float to_f32(T x) { return static_cast<float>(x); }
template <typename T> inline uint32_t pack2(float x, float y) {
  T a = from_f32<T>(x), b = from_f32<T>(y);
  uint16_t ua, ub; std::memcpy(&ua, &a, 2); std::memcpy(&ub, &b, 2);
  return uint32_t(ua) | (uint32_t(ub) << 16);
}
template <typename T> inline float2 load2(const T* src) {
  if (reinterpret_cast<uintptr_t>(src) % 4 != 0) EMU_FAIL("load2 misaligned %p", (const void*)src);
  return make_float2(to_f32<T>(src[0]), to_f32<T>(src[1]));
}
template <typename T> inline void load8(const T* src, float (&x)[8]) {
  if (reinterpret_cast<uintptr_t>(src) % 16 != 0) EMU_FAIL("load8 misaligned %p", (const void*)src);
  for (int i = 0; i < 8; ++i) x[i] = to_f32<T>(src[i]);
}
template <typename T> inline void store2(T* dst, float x, float y) {
  if (reinterpret_cast<uintptr_t>(dst) % 4 != 0) EMU_FAIL("store2 misaligned %p", (void*)dst);
  *reinterpret_cast<uint32_t*>(dst) = pack2<T>(x, y);
}
}  // namespace mom_ops

#include "common/mma_rows.cuh"  // csrc's, on the shim's fragments
#include "common/mma_f32.cuh"  // csrc's, on the shim's tf32 mma
