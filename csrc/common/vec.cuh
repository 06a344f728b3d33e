// Small device helpers shared by the kernels: vector access types and conversions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace mom_ops {

template <typename T>
__device__ __forceinline__ float to_float(T x) {
  return static_cast<float>(x);
}

// kVec elements of T per access (16 bytes for the vectorised paths).
template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Vec {
  T v[kVec];
};

// 16 bytes of T held as four 32-bit words, unpacked to fp32 with bit operations (kVec = 16 / sizeof(T) elements).
// Cheaper than arrays of 16-bit T, which the compiler packs and unpacks with byte permutes.
template <typename T>
__device__ __forceinline__ float unpack_element(const uint4& u, int e) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
  if constexpr (std::is_same_v<T, float>) {
    return __uint_as_float(w[e]);
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const uint32_t x = w[e / 2];
    return __uint_as_float(e % 2 == 0 ? x << 16 : x & 0xffff0000u);
  } else {
    static_assert(std::is_same_v<T, c10::Half>, "unpack_element: float, bf16 or fp16");
    const uint32_t x = w[e / 2];
    return __half2float(__ushort_as_half(static_cast<unsigned short>(e % 2 == 0 ? x & 0xffffu : x >> 16)));
  }
}

// kVec fp32 values -> 16 bytes of T (round to nearest even).
template <typename T, int kVec>
__device__ __forceinline__ uint4 pack_elements(const float (&x)[kVec]) {
  static_assert(kVec * sizeof(T) == 16, "pack_elements packs exactly 16 bytes");
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (std::is_same_v<T, float>) {
      w[i] = __float_as_uint(x[i]);
    } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
      const __nv_bfloat162 b = __floats2bfloat162_rn(x[2 * i], x[2 * i + 1]);
      w[i] = *reinterpret_cast<const uint32_t*>(&b);
    } else {
      const __half2 h = __floats2half2_rn(x[2 * i], x[2 * i + 1]);
      w[i] = *reinterpret_cast<const uint32_t*>(&h);
    }
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

}  // namespace mom_ops
