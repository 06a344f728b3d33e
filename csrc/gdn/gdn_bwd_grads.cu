// Launch of the backward's chunk-parallel gradients (gdn_bwd_grads_kernel.cuh) over dtype and head dim.
#include <type_traits>

#include "common/static_switch.h"
#include "gdn/gdn_bwd_grads_kernel.cuh"
#include "gdn/gdn_bwd_launch.h"
#include "gdn/scan_launch.cuh"

namespace mom_ops {

template <typename T, int kK, bool kExactEnds>
void launch_gdn_bwd_grads(const GdnBwdParams& p, int64_t num_slots, cudaStream_t stream) {
  constexpr int kBV = kK == 256 ? 32 : 64;
  using L = GdnGradsSmem<T, kK, kBV, kExactEnds>;
  static_assert(L::kBytes <= kSmemPerCta, "shared memory of the grads kernel");
  launch_scan_kernel(gdn_bwd_grads_kernel<T, kK, kBV, kExactEnds>, p, num_slots * p.heads_v, L::kWarps * 32,
                     L::kBytes, stream, "(chunk, head)");
}

// h0 / dht as hi + lo pairs ("exact ends") as gdn_grads_exact_ends says (the instance with them is slower at K = 256,
// gdn_bwd_grads_kernel.cuh). A template, so that K <= 128 compiles one instance.
template <typename T, int kK>
void launch_gdn_bwd_grads(const GdnBwdParams& p, int64_t num_slots, cudaStream_t stream) {
  if constexpr (kK == 256) {
    if (!gdn_grads_exact_ends(kK, p)) return launch_gdn_bwd_grads<T, kK, false>(p, num_slots, stream);
  }
  launch_gdn_bwd_grads<T, kK, true>(p, num_slots, stream);
}

void run_gdn_bwd_grads(const GdnBwdParams& p, bool bf16, int dim_k, int64_t num_slots, cudaStream_t stream) {
  BOOL_SWITCH(bf16, kBf16, [&] {
    using T = std::conditional_t<kBf16, __nv_bfloat16, __half>;
    HEADDIM_SWITCH(dim_k, kK, [&] { launch_gdn_bwd_grads<T, kK>(p, num_slots, stream); });
  });
}

}  // namespace mom_ops
