// Launch of the backward's chunk-parallel gradients (gdn_bwd_grads_kernel.cuh) over dtype and head dim.
#include <type_traits>

#include "common/static_switch.h"
#include "gdn/gdn_bwd_grads_kernel.cuh"
#include "gdn/gdn_bwd_launch.h"
#include "gdn/scan_launch.cuh"

namespace mom_ops {

void run_gdn_bwd_grads(const GdnBwdParams& p, bool bf16, int dim_k, int64_t num_slots, cudaStream_t stream) {
  BOOL_SWITCH(bf16, kBf16, [&] {
    using T = std::conditional_t<kBf16, __nv_bfloat16, __half>;
    HEADDIM_SWITCH(dim_k, kK, [&] {
      constexpr int kBV = kK == 256 ? 32 : 64;
      using L = GdnGradsSmem<T, kK, kBV>;
      static_assert(L::kBytes <= kSmemPerCta, "shared memory of the grads kernel");
      launch_scan_kernel(gdn_bwd_grads_kernel<T, kK, kBV>, p, num_slots * p.heads_v, L::kWarps * 32, L::kBytes, stream,
                         "(chunk, head)");
    });
  });
}

}  // namespace mom_ops
