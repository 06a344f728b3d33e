// Tensor-core building blocks (sm_80+ PTX): ldmatrix loads of 16-bit tiles from shared memory and the
// m16n8k16 mma with fp32 accumulation. Fragment layouts (g = lane / 4, t = lane % 4):
//   A 16x16 (row-major): a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
//   B 16x8 (k x n):      b0 (k = 2t..2t+1, n = g), b1 (k = 2t+8.., n = g)
//   C 16x8 (fp32):       c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1)
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace mom_ops {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ldmatrix .x4 (.trans) from this lane's row address: lanes 8 i .. 8 i + 7 address the rows of matrix i (for tiles
// of any layout: mma_rows.cuh's load_a_sw128, load_a_trans_sw128).
template <typename T>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&a)[4], const T* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
               : "r"(smem_addr(row)));
}
template <typename T>
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&a)[4], const T* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
               : "r"(smem_addr(row)));
}

// A fragment of the 16x16 tile whose row r starts at tile + r * stride (row-major, m x k).
template <typename T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* tile, int stride, int lane) {
  const T* p = tile + (lane % 16) * stride + (lane / 16) * 8;
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
               : "r"(smem_addr(p)));
}

// A fragment of a 16(m) x 16(k) tile stored transposed: row kk of the storage holds A[:, kk], starting at
// tile + kk * stride (so A[m][kk] = tile[kk * stride + m]).
template <typename T>
__device__ __forceinline__ void load_a_trans(uint32_t (&a)[4], const T* tile, int stride, int lane) {
  const T* p = tile + ((lane % 8) + (lane / 16) * 8) * stride + ((lane / 8) % 2) * 8;
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
               : "r"(smem_addr(p)));
}

// B fragment of a 16(k) x 8(n) tile stored n-major: row n of the storage holds B[:, n] (B[k][n] = tile[n * stride + k]).
template <typename T>
__device__ __forceinline__ void load_b(uint32_t (&b)[2], const T* tile, int stride, int lane) {
  const T* p = tile + (lane % 8) * stride + ((lane / 8) % 2) * 8;
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(b[0]), "=r"(b[1])
               : "r"(smem_addr(p)));
}

// B fragment of a 16(k) x 8(n) tile stored k-major: row k of the storage holds B[k, :] (B[k][n] = tile[k * stride + n]).
template <typename T>
__device__ __forceinline__ void load_b_trans(uint32_t (&b)[2], const T* tile, int stride, int lane) {
  const T* p = tile + (lane % 16) * stride;
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(b[0]), "=r"(b[1])
               : "r"(smem_addr(p)));
}

// d += a * b on 16-bit inputs (bf16 or fp16), fp32 accumulation.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// x rounded to tf32 (10 mantissa bits, to nearest, ties away from zero), as the 32-bit operand of mma_1688_tf32.
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

// d += a * b on tf32 inputs, m16n8k8, fp32 accumulation. Fragments (g = lane / 4, t = lane % 4):
//   A 16x8: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4);  B 8x8: b0 (k = t, n = g), b1 (k = t+4, n = g);
//   C as m16n8k16's.
__device__ __forceinline__ void mma_1688_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) {
  return __float2half_rn(x);
}

template <typename T>
__device__ __forceinline__ float to_f32(T x);
template <>
__device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <>
__device__ __forceinline__ float to_f32<__half>(__half x) {
  return __half2float(x);
}

// Two floats as one 32-bit pair of 16-bit values (x in the low half), and its store.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float x, float y) {
  T a = from_f32<T>(x), b = from_f32<T>(y);
  return uint32_t(*reinterpret_cast<uint16_t*>(&a)) | (uint32_t(*reinterpret_cast<uint16_t*>(&b)) << 16);
}

template <typename T>
__device__ __forceinline__ void store2(T* dst, float x, float y) {
  *reinterpret_cast<uint32_t*>(dst) = pack2<T>(x, y);
}

// A 32-bit pair of 16-bit values as floats (the low half first).
template <typename T>
__device__ __forceinline__ float2 unpack2(uint32_t u) {
  const uint16_t lo = uint16_t(u & 0xffffu), hi = uint16_t(u >> 16);
  return make_float2(to_f32<T>(*reinterpret_cast<const T*>(&lo)), to_f32<T>(*reinterpret_cast<const T*>(&hi)));
}

// The 2 (4-byte aligned) or 8 (16-byte aligned) 16-bit values at src as floats, one load.
template <typename T>
__device__ __forceinline__ float2 load2(const T* src) {
  return unpack2<T>(*reinterpret_cast<const uint32_t*>(src));
}
template <typename T>
__device__ __forceinline__ void load8(const T* src, float (&x)[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(src);
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = unpack2<T>(w[i]);
    x[2 * i] = f.x, x[2 * i + 1] = f.y;
  }
}

}  // namespace mom_ops

#include "common/mma_rows.cuh"
#include "common/mma_f32.cuh"
