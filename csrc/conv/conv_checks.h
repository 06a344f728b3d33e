// Argument checks of segment_conv (fwd, bwd), shared by the CPU and CUDA implementations.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/check.h"
#include "common/cu_seqlens.h"

namespace mom_ops {

constexpr int64_t kConvMaxWidth = 8;

struct ConvDims {
  int64_t rows, channels, width, segments;
};

inline ConvDims check_segment_conv_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& cu_seqlens,
                                        const std::optional<at::Tensor>& history) {
  CHECK_DIM(x, 2);
  CHECK_FLOATING(x);
  CHECK_DIM(weight, 2);
  CHECK_FLOATING(weight);
  CHECK_DEVICE(weight, x);
  const ConvDims d{x.size(0), x.size(1), weight.size(1), cu_seqlens.dim() == 1 ? cu_seqlens.size(0) - 1 : 0};
  TORCH_CHECK_VALUE(weight.size(0) == d.channels, "weight must have shape (", d.channels, ", W) (x has ", d.channels,
                    " channels), got ", weight.sizes());
  TORCH_CHECK_VALUE(d.width >= 1 && d.width <= kConvMaxWidth, "weight's width W = weight.shape[1] must be in [1, ",
                    kConvMaxWidth, "], got ", d.width);
  check_cu_seqlens(cu_seqlens, x, d.rows, "cu_seqlens", /*allow_tail=*/true);  // rows past the last segment: y = 0
  if (history.has_value()) {
    CHECK_SHAPE(*history, d.segments, d.width - 1, d.channels);
    CHECK_FLOATING(*history);
    CHECK_DEVICE(*history, x);
  }
  return d;
}

}  // namespace mom_ops
