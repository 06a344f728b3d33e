// Small device helpers shared by the kernels: vector access types and conversions.
#pragma once

#include <cuda_runtime.h>

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

}  // namespace mom_ops
