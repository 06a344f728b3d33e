// Launch of the backward's state-gradient chain (gdn_bwd_chain_kernel.cuh) over dtype and head dim.
#include <c10/cuda/CUDAException.h>

#include <type_traits>

#include "common/static_switch.h"
#include "gdn/gdn_bwd_chain_kernel.cuh"
#include "gdn/gdn_bwd_launch.h"

namespace mom_ops {

void run_gdn_bwd_chain(const GdnBwdParams& p, bool bf16, int dim_k, cudaStream_t stream) {
  BOOL_SWITCH(bf16, kBf16, [&] {
    using T = std::conditional_t<kBf16, __nv_bfloat16, __half>;
    HEADDIM_SWITCH(dim_k, kK, [&] {
      constexpr int kBV = kK == 256 ? 32 : 64;
      using L = GdnChainSmem<T, kK, kBV>;
      auto kernel = gdn_bwd_chain_kernel<T, kK, kBV>;
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(L::kBytes)));
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
      const int64_t blocks = int64_t(p.num_seqs) * p.heads_v * p.num_vblocks;
      TORCH_CHECK(blocks < (int64_t(1) << 31), "too many (sequence, head, V-block) programs: ", blocks);
      kernel<<<unsigned(blocks), kGdnThreads, L::kBytes, stream>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace mom_ops
