// Launch of the backward's chunk-parallel gradients (gdn_bwd_grads_kernel.cuh) over dtype and head dim.
#include <c10/cuda/CUDAException.h>

#include <type_traits>

#include "common/static_switch.h"
#include "gdn/gdn_bwd_grads_kernel.cuh"
#include "gdn/gdn_bwd_launch.h"

namespace mom_ops {

void run_gdn_bwd_grads(const GdnBwdParams& p, bool bf16, int dim_k, int64_t num_slots, cudaStream_t stream) {
  BOOL_SWITCH(bf16, kBf16, [&] {
    using T = std::conditional_t<kBf16, __nv_bfloat16, __half>;
    HEADDIM_SWITCH(dim_k, kK, [&] {
      constexpr int kBV = kK == 256 ? 32 : 64;
      using L = GdnGradsSmem<T, kK, kBV>;
      static_assert(L::kBytes <= 227 * 1024, "shared memory of the grads kernel");
      auto kernel = gdn_bwd_grads_kernel<T, kK, kBV>;
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(L::kBytes)));
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
      const int64_t blocks = num_slots * p.heads_v;
      TORCH_CHECK(blocks < (int64_t(1) << 31), "too many (chunk, head) programs: ", blocks);
      kernel<<<unsigned(blocks), kGdnThreads, L::kBytes, stream>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace mom_ops
