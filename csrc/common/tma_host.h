// Host side of common/tma.cuh: tensor maps for 16-bit row-major tensors, built through the driver's
// cuTensorMapEncodeTiled (found at run time, so nothing links libcuda).
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mom_ops {

// A map over the 16-bit tensor x[n2][n1][n0] (n0 contiguous; rows of n1 x n0 at stride2 elements, n0-rows at
// stride1 elements) whose loads copy boxes of box0 x 1 x box2 elements (box0 = 64: one 128-byte-swizzled slab per
// box with CU_TENSOR_MAP_SWIZZLE_128B). Returns false where the driver refuses (alignment, sizes).
inline bool tensor_map_3d(CUtensorMap* map, const void* x, bool bf16, uint64_t n0, uint64_t n1, uint64_t n2,
                          uint64_t stride1, uint64_t stride2, uint32_t box0, uint32_t box2,
                          CUtensorMapSwizzle swizzle = CU_TENSOR_MAP_SWIZZLE_128B) {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      fn = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  if (encode == nullptr) return false;
  const cuuint64_t dims[3] = {n0, n1, n2};
  const cuuint64_t strides[2] = {stride1 * 2, stride2 * 2};  // bytes, of dims 1 and 2
  const cuuint32_t box[3] = {box0, 1, box2};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  return encode(map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 3,
                const_cast<void*>(x), dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

}  // namespace mom_ops
