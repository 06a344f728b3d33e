// Shim of the driver API header for the emulator: the tensor-map types common/tma.cuh and common/tma_host.h name.
// The map's 128 bytes hold the emulator's own description of the tensor (common/tma_host.h's shim fills it).
#pragma once
#include <cstdint>
struct CUtensorMap { alignas(64) uint64_t opaque[16]; };
enum CUtensorMapSwizzle {
  CU_TENSOR_MAP_SWIZZLE_NONE = 0,
  CU_TENSOR_MAP_SWIZZLE_32B,
  CU_TENSOR_MAP_SWIZZLE_64B,
  CU_TENSOR_MAP_SWIZZLE_128B,
};
