// Host shim of csrc/common/vec.cuh and the CUDA builtins conv_kernels.cuh uses, so that its kernels run on the CPU
// (scripts/conv_emulate/run.py): one std::thread per CUDA thread, a std::barrier per CTA. This folder comes before
// csrc on the include path, so "common/vec.cuh" resolves here. Only what the conv kernels need (fp32, bf16).
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
struct uint4 { uint32_t x, y, z, w; };
inline uint4 make_uint4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) { return {a, b, c, d}; }
struct uint2 { uint32_t x, y; };
inline uint2 make_uint2(uint32_t a, uint32_t b) { return {a, b}; }
struct dim3e { unsigned x = 1, y = 1, z = 1; };
using dim3 = dim3e;
inline thread_local dim3e threadIdx, blockIdx;
inline dim3e gridDim, blockDim;
inline std::barrier<>* g_barrier = nullptr;
inline void __syncthreads() { g_barrier->arrive_and_wait(); }
// The conv kernels reach __syncwarp only where the whole CTA does (the plan row tables): a CTA barrier stands in.
inline void __syncwarp(unsigned = 0xffffffffu) { g_barrier->arrive_and_wait(); }
inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __uint_as_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t __float_as_uint(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
template <typename T> inline T __ldg(const T* p) { return *p; }
inline void __stcs(uint4* p, uint4 v) { *p = v; }
inline void __stcs(uint2* p, uint2 v) { *p = v; }

namespace mom_ops {
template <typename T> inline float to_float(T x) { return static_cast<float>(x); }
template <typename T> inline float unpack_element(const uint4& u, int e) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
  if constexpr (std::is_same_v<T, float>) {
    return __uint_as_float(w[e]);
  } else {
    const uint16_t bits = uint16_t(e % 2 == 0 ? w[e / 2] & 0xffffu : w[e / 2] >> 16);
    T t; std::memcpy(&t, &bits, 2); return static_cast<float>(t);
  }
}
template <typename T, int kVec> inline uint4 pack_elements(const float (&x)[kVec]) {
  static_assert(kVec * sizeof(T) == 16);
  uint32_t w[4];
  if constexpr (std::is_same_v<T, float>) {
    for (int i = 0; i < 4; ++i) w[i] = __float_as_uint(x[i]);
  } else {
    for (int i = 0; i < 4; ++i) {
      T lo(x[2 * i]), hi(x[2 * i + 1]);
      uint16_t a, b; std::memcpy(&a, &lo, 2); std::memcpy(&b, &hi, 2);
      w[i] = uint32_t(a) | (uint32_t(b) << 16);
    }
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}
}  // namespace mom_ops
