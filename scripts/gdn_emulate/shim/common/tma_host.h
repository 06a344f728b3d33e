// Shim of csrc/common/tma_host.h: the tensor map as the emulator's tma_load_3d reads it, with the driver's checks
// that matter here (16-byte aligned base and strides, a box row no wider than the swizzle, boxes of <= 256).
#pragma once
#include <cuda.h>
#include <cstdint>
#include <cstring>
namespace emu {
struct TensorMap3d {
  const char* base;
  uint64_t dims[3];     // n0 (contiguous), n1, n2 elements
  uint64_t strides[2];  // bytes between consecutive indices of dims 1 and 2
  uint32_t box[3];
  int swizzle_bytes;    // 0 (none), 32, 64 or 128
};
static_assert(sizeof(TensorMap3d) <= sizeof(CUtensorMap), "fits in the opaque map");
}  // namespace emu
namespace mom_ops {
inline bool tensor_map_3d(CUtensorMap* map, const void* x, bool /*bf16*/, uint64_t n0, uint64_t n1, uint64_t n2,
                          uint64_t stride1, uint64_t stride2, uint32_t box0, uint32_t box2,
                          CUtensorMapSwizzle swizzle = CU_TENSOR_MAP_SWIZZLE_128B) {
  const int sw = swizzle == CU_TENSOR_MAP_SWIZZLE_128B ? 128 : swizzle == CU_TENSOR_MAP_SWIZZLE_64B ? 64
               : swizzle == CU_TENSOR_MAP_SWIZZLE_32B ? 32 : 0;
  if (reinterpret_cast<uintptr_t>(x) % 16 != 0 || (stride1 * 2) % 16 != 0 || (stride2 * 2) % 16 != 0) return false;
  if (box0 == 0 || box2 == 0 || box0 > 256 || box2 > 256 || (box0 * 2) % 16 != 0) return false;
  if (sw != 0 && box0 * 2 > uint32_t(sw)) return false;
  emu::TensorMap3d m{static_cast<const char*>(x), {n0, n1, n2}, {stride1 * 2, stride2 * 2}, {box0, 1, box2}, sw};
  std::memset(map, 0, sizeof(*map));
  std::memcpy(map, &m, sizeof(m));
  return true;
}
}  // namespace mom_ops
