// Argument checks of segment_conv (fwd, bwd), shared by the CPU and CUDA implementations.
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>

#include <utility>

#include "common/check.h"
#include "common/cu_seqlens.h"
#include "routing/routing_checks.h"

namespace mom_ops {

constexpr int64_t kConvMaxWidth = 8;

struct ConvDims {
  int64_t rows, channels, width, segments;
};

// With the plan's maps (dst_row [N, k], src_pair [R], int32: mom_ops.permute's arguments) the conv reads x [N, C]
// through them, as if on permute(x): its rows are the stream's R. Both maps or neither.
inline int64_t conv_rows(const at::Tensor& x, const std::optional<at::Tensor>& dst_row,
                         const std::optional<at::Tensor>& src_pair) {
  TORCH_CHECK_VALUE(dst_row.has_value() == src_pair.has_value(), "dst_row and src_pair (the plan's maps) go together: "
                    "got only ", dst_row.has_value() ? "dst_row" : "src_pair");
  if (!src_pair.has_value()) return x.size(0);
  check_plan_tokens(x, *dst_row, *src_pair);
  return src_pair->size(0);
}

inline ConvDims check_segment_conv_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& cu_seqlens,
                                        const std::optional<at::Tensor>& history,
                                        const std::optional<at::Tensor>& dst_row = std::nullopt,
                                        const std::optional<at::Tensor>& src_pair = std::nullopt) {
  CHECK_DIM(x, 2);
  CHECK_FLOATING(x);
  CHECK_DIM(weight, 2);
  CHECK_FLOATING(weight);
  CHECK_DEVICE(weight, x);
  const int64_t rows = conv_rows(x, dst_row, src_pair);
  const ConvDims d{rows, x.size(1), weight.size(1), cu_seqlens.dim() == 1 ? cu_seqlens.size(0) - 1 : 0};
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

// segment_conv_bwd_into's grad_x: [R, C] in x's dtype, on x's device, with dense channels (rows any stride apart),
// not sharing memory with x or grad_y (the kernel reads them while it writes grad_x; column slices of one buffer
// that interleave are not detected).
inline void check_conv_grad_x_out(const at::Tensor& grad_x, const at::Tensor& x, const at::Tensor& grad_y,
                                  const ConvDims& d) {
  for (const auto& [input, name] : {std::pair{&x, "x"}, std::pair{&grad_y, "grad_y"}}) {
    const at::MemOverlapStatus overlap = at::get_overlap_status(grad_x, *input);
    TORCH_CHECK_VALUE(overlap != at::MemOverlapStatus::Full && overlap != at::MemOverlapStatus::Partial,
                      "grad_x must not share memory with ", name);
  }
  CHECK_SHAPE(grad_x, d.rows, d.channels);
  CHECK_SAME_DTYPE(grad_x, x);
  CHECK_DEVICE(grad_x, x);
  TORCH_CHECK_VALUE(d.channels <= 1 || grad_x.stride(1) == 1, "grad_x must have dense channels (stride(1) == 1), got "
                    "strides ", grad_x.strides());
  TORCH_CHECK_VALUE(d.rows <= 1 || grad_x.stride(0) >= d.channels, "grad_x's rows must not overlap (stride(0) >= ",
                    d.channels, "), got strides ", grad_x.strides());
}

}  // namespace mom_ops
