// Launch of a scan kernel with a large dynamic shared-memory footprint on a 1-D grid (one idea shared by the
// forward, the backward chain and the backward grads launches).
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

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

// A split kernel over `items` (chunk slot, value head[, V-block]) items (split_items.cuh). instance(kItems) names
// the kernel's instance for std::bool_constant<kItems>: the one-item kernel, or where the split items are on
// (split_items_on: pieces, which only K = 128 has) the many-items one, launched with as many CTAs as the device holds
// at once (the occupancy calculator's count), which claim the items from the plan's counter. Only the K = 128 calls
// instantiate the many-items kernels.
template <int kK, typename Params, typename Instance>
void launch_split_items_kernel(Instance instance, const Params& params, int64_t items, int threads, int smem_bytes,
                               cudaStream_t stream, const char* programs, bool overlap_previous = false) {
  const bool many = split_items_on(params.pieces);
  TORCH_INTERNAL_ASSERT(!many || kK == 128, "split items need pieces, which take K = 128, got K = ", kK);
  auto kernel = instance(std::false_type{});
  int64_t resident = 0;
  if constexpr (kK == 128) {
    if (many) {
      kernel = instance(std::true_type{});
      // (the attributes launch_scan_kernel sets, before the occupancy query: it counts with them)
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
      int per_sm = 0;
      C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem_bytes));
      resident = int64_t(std::max(per_sm, 1)) * at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
    }
  }
  const int64_t grid = split_item_grid(items, many, resident);
  TORCH_CHECK(!many || items + grid < (int64_t(1) << 31), "too many ", programs, " items: ",
              items);  // (the claims' int counter runs past the items by one claim per CTA)
  launch_scan_kernel(kernel, params, grid, threads, smem_bytes, stream, programs, overlap_previous);
}

}  // namespace mom_ops
