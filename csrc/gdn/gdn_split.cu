// Launches of the split forward (gdn_split_kernels.cuh): chunk-local terms, the state chain, the outputs.
#include <ATen/cuda/CUDAContext.h>

#include <cstdlib>
#include <string>
#include <type_traits>

#include "common/static_switch.h"
#include "gdn/gdn_fwd_launch.h"
#include "gdn/gdn_output_wgmma_kernel.cuh"
#include "gdn/gdn_split_kernels.cuh"
#include "gdn/scan_launch.cuh"

namespace mom_ops {

int forced_split_chain_value_block() {
  if (const char* env = std::getenv("MOM_OPS_GDN_CHAIN_BV")) {
    for (const int bv : {16, 32, 64})
      if (std::string(env) == std::to_string(bv)) return bv;
  }
  return 0;
}

int split_chain_value_block(int64_t num_seqs, int64_t heads_v, int64_t dim_v) {
  if (const int bv = forced_split_chain_value_block()) return bv;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  int bv = kSplitBV;
  while (bv > 16 && num_seqs * heads_v * (dim_v / (bv / 2)) <= sms) bv /= 2;
  return bv;
}

namespace {

// With the outputs beside it (p.chunk_ready set), a 16-column chain that fits beside an output CTA takes the variant
// with less shared memory and registers.
template <typename T, int kK, int kBV>
void launch_chain(const GdnSplitParams& p, cudaStream_t stream) {
  const int64_t blocks = int64_t(p.num_seqs) * p.heads_v * (p.dim_v / kBV);
  if constexpr (chain_fits_beside_output<T, kK, kBV>()) {
    if (p.chunk_ready != nullptr) {
      constexpr int kBudget = chain_budget_beside_output<T, kK>();
      launch_scan_kernel(gdn_chain_beside_output_kernel<T, kK, kBV, kBudget>, p, blocks, ChainStages::kThreads,
                         GdnChainFwdSmem<T, kK, kBV, kBudget>::kBytes, stream, "(sequence, head, V-block)");
      return;
    }
  }
  if constexpr (chain_on_wgmma_fits<kK, kBV>()) {
    if (gdn_chain_on_wgmma()) {
      using Chain = GdnChainFwdSmem<T, kK, kBV, kSmemPerCta, true>;
      static_assert(Chain::kBytes <= kSmemPerCta, "shared memory of the split forward's wgmma chain kernel");
      launch_scan_kernel(gdn_chain_wgmma_kernel<T, kK, kBV>, p, blocks, ChainStages::kThreads, Chain::kBytes, stream,
                         "(sequence, head, V-block)");
      return;
    }
  }
  using Chain = GdnChainFwdSmem<T, kK, kBV, kSmemPerCta>;
  static_assert(Chain::kBytes <= kSmemPerCta, "shared memory of the split forward's chain kernel");
  launch_scan_kernel(gdn_chain_kernel<T, kK, kBV>, p, blocks, ChainStages::kThreads, Chain::kBytes, stream,
                     "(sequence, head, V-block)");
}

// Beside the chain (p.chunk_ready set), a programmatic dependent launch.
template <typename T, int kK, int kBV>
void launch_output(const GdnSplitParams& p, int64_t num_slots, cudaStream_t stream) {
  const bool overlap = p.chunk_ready != nullptr;
  const char* programs = "(chunk, head, V-block)";
  if constexpr (kBV == 128) {
    if (gdn_output_on_wgmma()) {
      launch_split_items_kernel<kK>(
          [](auto many) {
            if constexpr (decltype(many)::value) return gdn_output_wgmma_items_kernel<T, kK>;
            else return gdn_output_wgmma_kernel<T, kK>;
          },
          p,
          num_slots * p.heads_v * (p.dim_v / 128), kGdnOutputWgThreads, GdnOutputWgSmem<T, kK>::kBytes, stream,
          programs, overlap);
      return;
    }
  }
  launch_split_items_kernel<kK>([](auto many) { return gdn_output_kernel<T, kK, kBV, decltype(many)::value>; }, p,
                                num_slots * p.heads_v * (p.dim_v / kBV), kGdnThreads,
                                GdnOutputSmem<T, kK, kBV>::kBytes, stream, programs, overlap);
}

// forward_chain_width_choice (gdn_cuda.cu) simulates one chain CTA per SM at either width (K = 256).
static_assert(2 * GdnChainFwdSmem<__nv_bfloat16, 256, 32, kSmemPerCta>::kBytes > kSmemPerCta &&
                  2 * GdnChainFwdSmem<__half, 256, 32, kSmemPerCta>::kBytes > kSmemPerCta &&
                  2 * GdnChainFwdSmem<__nv_bfloat16, 256, 32, kSmemPerCta, true>::kBytes > kSmemPerCta,
              "one split chain CTA per SM at K = 256");

}  // namespace

void run_gdn_fwd_split(const GdnSplitParams& p, bool bf16, int dim_k, int64_t num_slots, int chain_bv,
                       cudaStream_t stream) {
  TORCH_INTERNAL_ASSERT(num_slots == chunk_slots(p.total_rows, p.num_seqs));  // (split_slots() in the kernels)
  BOOL_SWITCH(bf16, kBf16, [&] {
    using T = std::conditional_t<kBf16, __nv_bfloat16, __half>;
    HEADDIM_SWITCH(dim_k, kK, [&] {
      using Prep = GdnPrepSmem<T, kK>;
      launch_scan_kernel(gdn_prep_kernel<T, kK>, p, num_slots * p.heads_v, kGdnThreads, Prep::kBytes, stream,
                         "(chunk, head)");
      if (p.chain_width != nullptr) {  // both widths (chain_bv and half of it); the order kernel's flag picks one
        for (const int id : {0, 1}) {
          GdnSplitParams width_p = p;
          width_p.chain_width_id = id;
          CHAIN_BV_SWITCH(id == 1 ? chain_bv / 2 : chain_bv, kBV, [&] { launch_chain<T, kK, kBV>(width_p, stream); });
        }
      } else {
        CHAIN_BV_SWITCH(chain_bv, kBV, [&] { launch_chain<T, kK, kBV>(p, stream); });
      }
      if (gdn_output_value_block(p.dim_v) == 128) {
        launch_output<T, kK, 128>(p, num_slots, stream);
      } else {
        launch_output<T, kK, 64>(p, num_slots, stream);
      }
    });
  });
}

}  // namespace mom_ops
