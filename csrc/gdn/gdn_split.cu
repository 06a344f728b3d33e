// Launches of the split forward (gdn_split_kernels.cuh): chunk-local terms, the state chain, the outputs.
#include <type_traits>

#include "common/static_switch.h"
#include "gdn/gdn_fwd_launch.h"
#include "gdn/gdn_split_kernels.cuh"
#include "gdn/scan_launch.cuh"

namespace mom_ops {

void run_gdn_fwd_split(const GdnSplitParams& p, bool bf16, int dim_k, int64_t num_slots, bool bulk_loads,
                       cudaStream_t stream) {
  BOOL_SWITCH(bf16, kBf16, [&] {
    using T = std::conditional_t<kBf16, __nv_bfloat16, __half>;
    HEADDIM_SWITCH(dim_k, kK, [&] {
      using Prep = GdnPrepSmem<T, kK>;
      using Chain = GdnChainFwdSmem<T, kK>;
      using Out = GdnOutputSmem<T, kK>;
      static_assert(Chain::kBytes <= 227 * 1024, "shared memory of the split forward's chain kernel");
      const int64_t vblocks = p.dim_v / kSplitBV;
      launch_scan_kernel(gdn_prep_kernel<T, kK>, p, num_slots * p.heads_v, kGdnThreads, Prep::kBytes, stream,
                         "(chunk, head)");
      launch_scan_kernel(bulk_loads ? gdn_chain_kernel<T, kK, true> : gdn_chain_kernel<T, kK, false>, p,
                         int64_t(p.num_seqs) * p.heads_v * vblocks, kGdnThreads, Chain::kBytes, stream,
                         "(sequence, head, V-block)");
      launch_scan_kernel(gdn_output_kernel<T, kK>, p, num_slots * p.heads_v * vblocks, kGdnThreads, Out::kBytes,
                         stream, "(chunk, head, V-block)");
    });
  });
}

}  // namespace mom_ops
