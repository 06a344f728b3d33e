// Argument checks of memory_mix, shared by the CPU and CUDA implementations.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/check.h"
#include "routing/routing_checks.h"

namespace mom_ops {

struct MixDims {
  int64_t tokens, topk, heads, dim_v;
};

inline MixDims check_memory_mix_args(const at::Tensor& o_routed, const at::Tensor& dst_row, const at::Tensor& src_pair,
                                     const at::Tensor& weights,
                                     const std::optional<at::Tensor>& shared,
                                     const std::optional<at::Tensor>& norm_weight,
                                     const std::optional<at::Tensor>& gate, double eps) {
  CHECK_DIM(o_routed, 3);
  CHECK_FLOATING(o_routed);
  check_plan_maps(dst_row, src_pair, o_routed);
  const MixDims d{dst_row.size(0), dst_row.size(1), o_routed.size(1), o_routed.size(2)};
  TORCH_CHECK_VALUE(o_routed.size(0) == d.tokens * d.topk, "o_routed must have tokens * topk = ", d.tokens * d.topk,
                    " rows (the plan's packed stream), got ", o_routed.size(0));
  check_weights(weights, dst_row, o_routed);
  if (shared.has_value()) {
    CHECK_SHAPE(*shared, d.tokens, d.heads, d.dim_v);
    CHECK_SAME_DTYPE(*shared, o_routed);
    CHECK_DEVICE(*shared, o_routed);
  }
  if (norm_weight.has_value()) {
    CHECK_SHAPE(*norm_weight, d.dim_v);
    CHECK_FLOATING(*norm_weight);
    CHECK_DEVICE(*norm_weight, o_routed);
    TORCH_CHECK_VALUE(eps >= 0, "eps must be >= 0, got ", eps);
  }
  if (gate.has_value()) {
    TORCH_CHECK_VALUE(norm_weight.has_value(), "gate needs norm_weight (the gate belongs to the gated RMSNorm)");
    CHECK_SHAPE(*gate, d.tokens, d.heads, d.dim_v);
    CHECK_SAME_DTYPE(*gate, o_routed);  // (on every device: the CUDA kernel reads both as one type)
    CHECK_DEVICE(*gate, o_routed);
  }
  return d;
}

}  // namespace mom_ops
