// Launch of the warp-specialised forward (gdn_fwd_ws_kernel.cuh): K = 128, V a multiple of 128; with p.save_s0 (the
// training forward) the variant that also writes the saves; with p.pieces.chunks > 0 a CTA per piece slot.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "common/static_switch.h"
#include "gdn/gdn_fwd_launch.h"
#include "gdn/gdn_fwd_ws_kernel.cuh"
#include "gdn/scan_launch.cuh"

namespace mom_ops {

void run_gdn_fwd_ws(const GdnFwdParams& p, bool bf16, cudaStream_t stream) {
  BOOL_SWITCH(bf16, kBf16, [&] {
    using T = std::conditional_t<kBf16, __nv_bfloat16, __half>;
    const int64_t ranks = p.pieces.chunks > 0 ? piece_slots(p.total_rows, p.num_seqs, p.pieces.chunks) : p.num_seqs;
    const int64_t blocks = ranks * p.heads_v * p.num_vblocks;
    if (p.save_s0 != nullptr && p.pieces.chunks > 0) {
      launch_scan_kernel(gdn_fwd_ws_kernel<T, true, true>, p, blocks, kGdnWsThreads, GdnWsSmem<T, true>::kBytes,
                         stream, "(piece, head, V-block)");
    } else if (p.save_s0 != nullptr) {
      launch_scan_kernel(gdn_fwd_ws_kernel<T, true>, p, blocks, kGdnWsThreads, GdnWsSmem<T, true>::kBytes, stream,
                         "(sequence, head, V-block)");
    } else if (p.pieces.chunks > 0) {
      launch_scan_kernel(gdn_fwd_ws_kernel<T, false, true>, p, blocks, kGdnWsThreads, GdnWsSmem<T, false>::kBytes,
                         stream, "(piece, head, V-block)");
    } else {
      launch_scan_kernel(gdn_fwd_ws_kernel<T, false>, p, blocks, kGdnWsThreads, GdnWsSmem<T, false>::kBytes, stream,
                         "(sequence, head, V-block)");
    }
  });
}

}  // namespace mom_ops
