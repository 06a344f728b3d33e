// Launch of a scan kernel with a large dynamic shared-memory footprint on a 1-D grid (one idea shared by the
// forward, the backward chain and the backward grads launches).
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "gdn/split_items.cuh"

namespace mom_ops {

// kernel<<<blocks, threads, smem_bytes, stream>>>(params) with all of the unified L1 / shared memory as shared
// memory and the opt-in for more than 48 KB; `programs` names the grid's unit in the error past 2^31 - 1 CTAs.
// overlap_previous: a programmatic dependent launch (common/grid_dependency.cuh), which may start once every CTA of the
// stream's previous kernel has called launch_dependents().
template <typename Params>
void launch_scan_kernel(void (*kernel)(Params), const Params& params, int64_t blocks, int threads, int smem_bytes,
                        cudaStream_t stream, const char* programs, bool overlap_previous = false) {
  TORCH_CHECK(blocks < (int64_t(1) << 31), "too many ", programs, " programs: ", blocks);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
  if (!overlap_previous) {
    kernel<<<unsigned(blocks), threads, smem_bytes, stream>>>(params);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(unsigned(blocks));
  config.blockDim = dim3(unsigned(threads));
  config.dynamicSmemBytes = size_t(smem_bytes);
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, params));
}

// A split kernel over `items` (chunk slot, value head[, V-block]) items (split_items.cuh): a CTA per item, or with
// `many` (the kernel's kItems) up to 32 per CTA, at least as many CTAs as the device holds at once (the occupancy
// calculator's count).
template <typename Params>
void launch_split_items_kernel(void (*kernel)(Params), const Params& params, int64_t items, bool many, int threads,
                               int smem_bytes, cudaStream_t stream, const char* programs,
                               bool overlap_previous = false) {
  int64_t resident = 0;
  if (many) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
    int per_sm = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem_bytes));
    resident = int64_t(std::max(per_sm, 1)) * at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  }
  launch_scan_kernel(kernel, params, split_item_grid(items, many, resident), threads, smem_bytes, stream, programs,
                     overlap_previous);
}

}  // namespace mom_ops
