// Launch of the backward's chunk-parallel gradients (gdn_bwd_grads_kernel.cuh) over dtype and head dim.
#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <type_traits>

#include "common/env_flag.h"
#include "common/static_switch.h"
#include "gdn/gdn_bwd_grads_kernel.cuh"
#include "gdn/gdn_bwd_launch.h"
#include "gdn/scan_launch.cuh"

namespace mom_ops {

// CTAs of the grads kernel for `items` items: one per SM, each taking every grid-th item (the next item's loads then
// run under the current one's chunk end), or one per item with MOM_OPS_GDN_GRADS_ITEMS=0 or for an instance without
// room for those loads (kPrefetchNext false: its kernel runs one item).
inline int64_t gdn_grads_grid(int64_t items, bool prefetch_next) {
  if (!prefetch_next || env_is("MOM_OPS_GDN_GRADS_ITEMS", "0")) return items;
  return std::min(items, int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount));
}

template <typename T, int kK, bool kExactEnds>
void launch_gdn_bwd_grads(const GdnBwdParams& p, int64_t num_slots, cudaStream_t stream) {
  constexpr int kBV = kK == 256 ? 32 : 64;
  using L = GdnGradsSmem<T, kK, kBV, kExactEnds>;
  static_assert(L::kBytes <= kSmemPerCta, "shared memory of the grads kernel");
  static_assert(2 * (L::kBytes + 1024) > kSmemPerSm, "one CTA per SM (gdn_grads_grid)");
  TORCH_INTERNAL_ASSERT(num_slots == chunk_slots(p.total_rows, p.num_seqs));  // (split_slots() in the kernel)
  launch_scan_kernel(gdn_bwd_grads_kernel<T, kK, kBV, kExactEnds>, p,
                     gdn_grads_grid(num_slots * p.heads_v, L::kPrefetchNext), L::kWarps * 32, L::kBytes, stream,
                     "(chunk, head)");
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
