// Launch of the backward's state-gradient chain (gdn_bwd_chain_kernel.cuh) over dtype and head dim.
#include <type_traits>

#include "common/static_switch.h"
#include "gdn/gdn_bwd_chain_kernel.cuh"
#include "gdn/gdn_bwd_chain_ws_kernel.cuh"
#include "gdn/gdn_bwd_launch.h"
#include "gdn/gdn_bwd_split_kernels.cuh"
#include "gdn/scan_launch.cuh"

namespace mom_ops {

namespace {

template <typename T, int kK, int kBV>
void launch_chain(const GdnBwdParams& p, cudaStream_t stream) {
  using L = GdnChainSmem<T, kK, kBV>;
  static_assert(L::kBytes <= kSmemPerCta, "shared memory of the chain kernel");
  launch_scan_kernel(gdn_bwd_chain_kernel<T, kK, kBV>, p, int64_t(p.num_seqs) * p.heads_v * p.num_vblocks,
                     kGdnThreads, L::kBytes, stream, "(sequence, head, V-block)");
}

template <typename T, int kK, int kBV>
void launch_chain_split_kernel(const GdnBwdSplitParams& p, cudaStream_t stream) {
  if constexpr (chain_on_wgmma_fits<kK, kBV>()) {
    if (gdn_chain_on_wgmma()) {
      using Chain = GdnBwdChainSplitSmem<T, kK, kBV, true>;
      static_assert(Chain::kBytes <= kSmemPerCta, "shared memory of the split backward chain on wgmma");
      launch_scan_kernel(gdn_bwd_chain_split_wgmma_kernel<T, kK, kBV>, p,
                         int64_t(p.num_seqs) * p.heads_v * (p.dim_v / kBV), ChainStages::kThreads, Chain::kBytes,
                         stream, "(sequence, head, V-block)");
      return;
    }
  }
  using Chain = GdnBwdChainSplitSmem<T, kK, kBV>;
  static_assert(Chain::kBytes <= kSmemPerCta, "shared memory of the split backward chain");
  launch_scan_kernel(gdn_bwd_chain_split_kernel<T, kK, kBV>, p, int64_t(p.num_seqs) * p.heads_v * (p.dim_v / kBV),
                     ChainStages::kThreads, Chain::kBytes, stream, "(sequence, head, V-block)");
}

// The split chain's two launches: prep, then the chain with chain_bv columns (16, 32 or 64; at K = 256 16 or 32, as
// two stages with 64 columns do not fit in shared memory).
template <typename T, int kK>
void launch_chain_split(const GdnBwdSplitParams& p, int64_t num_slots, int chain_bv, cudaStream_t stream) {
  using Prep = GdnBwdPrepSmem<T, kK>;
  launch_scan_kernel(gdn_bwd_prep_kernel<T, kK>, p, num_slots * p.heads_v, kGdnThreads, Prep::kBytes, stream,
                     "(chunk, head)");
  if constexpr (kK == 256) {
    TORCH_CHECK(chain_bv == 16 || chain_bv == 32, "the split backward chain at K = 256 takes 16 or 32 columns, got ",
                chain_bv);
    BOOL_SWITCH(chain_bv == 32, kWide, [&] { launch_chain_split_kernel<T, kK, kWide ? 32 : 16>(p, stream); });
  } else {
    CHAIN_BV_SWITCH(chain_bv, kBV, [&] { launch_chain_split_kernel<T, kK, kBV>(p, stream); });
  }
}

// backward_chain_width_choice (gdn_bwd_cuda.cu) simulates one CTA per SM at either width.
static_assert(kChainCtasPerSm<__nv_bfloat16, 256, 32> == 1 && kChainCtasPerSm<__nv_bfloat16, 256, 64> == 1 &&
                  kChainCtasPerSm<__half, 256, 32> == 1 && kChainCtasPerSm<__half, 256, 64> == 1,
              "one chain CTA per SM at K = 256");

}  // namespace

// bv: the forward's choice (gdn_value_block): narrow (64, 32 at K = 256) or wide (twice that) blocks; wide ones
// repeat the chunk-local loads and P half as often, narrow ones give more chains for few sequences.
void run_gdn_bwd_chain(const GdnBwdParams& p, bool bf16, int dim_k, int bv, cudaStream_t stream) {
  BOOL_SWITCH(bf16, kBf16, [&] {
    using T = std::conditional_t<kBf16, __nv_bfloat16, __half>;
    HEADDIM_SWITCH(dim_k, kK, [&] {
      constexpr int kNarrow = kK == 256 ? 32 : 64;
      if constexpr (kK == 64) {
        launch_chain<T, kK, kNarrow>(p, stream);
      } else if (bv == 2 * kNarrow) {
        launch_chain<T, kK, 2 * kNarrow>(p, stream);
      } else {
        launch_chain<T, kK, kNarrow>(p, stream);
      }
    });
  });
}

void run_gdn_bwd_chain_ws(const GdnBwdParams& p, bool bf16, int dim_k, cudaStream_t stream) {
  TORCH_CHECK(dim_k == 128 || dim_k == 256, "the warp-specialised backward chain takes K = 128 or 256, got ", dim_k);
  BOOL_SWITCH(bf16, kBf16, [&] {
    using T = std::conditional_t<kBf16, __nv_bfloat16, __half>;
    if (p.pieces.chunks > 0) {  // K = 128 only
      TORCH_CHECK(dim_k == 128, "the backward chain in pieces takes K = 128, got ", dim_k);
      const int64_t slots = piece_slots(p.total_rows, p.num_seqs, p.pieces.chunks);
      launch_scan_kernel(gdn_bwd_chain_ws_kernel<T, 128, true>, p, slots * p.heads_v * p.num_vblocks, kBwdWsThreads,
                         GdnBwdWsSmem<T, 128>::kBytes, stream, "(piece, head, V-block)");
      return;
    }
    BOOL_SWITCH(dim_k == 256, kK256, [&] {
      constexpr int kK = kK256 ? 256 : 128;
      launch_scan_kernel(gdn_bwd_chain_ws_kernel<T, kK>, p, int64_t(p.num_seqs) * p.heads_v * p.num_vblocks,
                         kBwdWsThreads, GdnBwdWsSmem<T, kK>::kBytes, stream, "(sequence, head, V-block)");
    });
  });
}

void run_gdn_bwd_chain_split(const GdnBwdSplitParams& p, bool bf16, int dim_k, int64_t num_slots, int chain_bv,
                             cudaStream_t stream) {
  TORCH_INTERNAL_ASSERT(num_slots == chunk_slots(p.total_rows, p.num_seqs));  // (split_slots() in the kernels)
  BOOL_SWITCH(bf16, kBf16, [&] {
    using T = std::conditional_t<kBf16, __nv_bfloat16, __half>;
    HEADDIM_SWITCH(dim_k, kK, [&] { launch_chain_split<T, kK>(p, num_slots, chain_bv, stream); });
  });
}

}  // namespace mom_ops
