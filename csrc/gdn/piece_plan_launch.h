// The plan of the scan in pieces for one call (the forward in gdn_cuda.cu, the backward's chain in gdn_bwd_cuda.cu):
// the pieces' size (piece_size.h), the plan's workspace, its missing flags zeroed, and gdn_piece_plan_kernel.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "gdn/gdn_checks.h"
#include "gdn/gdn_piece_plan.cuh"
#include "gdn/piece_size.h"
#include "gdn/scan_pieces.cuh"

namespace mom_ops {

struct PiecePlan {
  at::Tensor workspace;  // [piece slots, HV] chain starts, [N, HV] missing flags, the counters (int32)
  ScanPieces pieces{};   // into workspace
};

// backward: warm-ups over the chunks after each piece (the backward's chain runs from the end).
inline PiecePlan launch_piece_plan(const ScanParams& params, const GdnDims& d, int64_t rows, bool backward,
                                   const at::TensorOptions& options, cudaStream_t stream) {
  const PieceSize size =
      gdn_piece_size(rows, d.heads_v, d.dim_v / 128, at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  const int64_t slots = piece_slots(rows, d.num_seqs, size.chunks), heads = d.num_seqs * d.heads_v;
  PiecePlan plan;
  plan.workspace = at::empty({slots * d.heads_v + heads + kPieceCounters}, options.dtype(at::kInt));
  int* start = plan.workspace.data_ptr<int>();
  int* missing = start + slots * d.heads_v;
  int* counters = missing + heads;
  C10_CUDA_CHECK(cudaMemsetAsync(missing, 0, (heads + kPieceCounters) * sizeof(int), stream));
  gdn_piece_plan_kernel<<<unsigned(slots), kPiecePlanThreads, kPiecePlanSmem, stream>>>(
      PiecePlanParams{params, start, missing, counters + kAnyMissing, size.chunks, size.max_warmup, backward});
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  plan.pieces = ScanPieces{start, missing, size.chunks, counters};
  return plan;
}

}  // namespace mom_ops
