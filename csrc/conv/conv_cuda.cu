// CUDA bindings of segment_conv (fwd, bwd). No host sync; the weight gradient is a fixed-order sum of per-CTA
// partials (common/column_sum.cuh).
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/aligned.h"
#include "common/column_sum.cuh"
#include "common/static_switch.h"
#include "conv/conv_checks.h"
#include "conv/conv_kernels.cuh"

namespace mom_ops {
namespace {

struct ConvInputs {
  at::Tensor x, weight, cu, history;  // weight [C, kW] fp32 zero-padded on the old side; cu int64
  int kw;
};

ConvInputs prepare(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& cu_seqlens,
                   const std::optional<at::Tensor>& history, const ConvDims& d) {
  CHECK_CUDA_FLOATING(x);
  TORCH_CHECK_VALUE(d.channels % kConvChannels == 0, "segment_conv on CUDA needs the channels (x.shape[1]) to be a "
                    "multiple of ", kConvChannels, ", got ", d.channels);
  ConvInputs in;
  in.kw = d.width <= 4 ? 4 : 8;
  in.x = contiguous_aligned16(x);
  in.weight = at::zeros({d.channels, in.kw}, x.options().dtype(at::kFloat));
  in.weight.narrow(1, in.kw - d.width, d.width).copy_(weight);
  in.cu = cu_seqlens.to(at::kLong).contiguous();
  if (history.has_value() && d.width > 1) in.history = contiguous_aligned16(history->to(x.scalar_type()));
  return in;
}

ConvParams make_params(const ConvInputs& in, const ConvDims& d, bool activation) {
  ConvParams p{};
  p.x = in.x.data_ptr();
  p.weight = in.weight.data_ptr<float>();
  p.cu = in.cu.data_ptr<int64_t>();
  p.history = in.history.defined() ? in.history.data_ptr() : nullptr;
  p.rows = d.rows;
  p.channels = d.channels;
  p.segments = int(d.segments);
  p.width = int(d.width);
  p.activation = activation;
  return p;
}

dim3 conv_grid(const ConvDims& d) {
  const int64_t vecs = d.channels / kConvChannels, tiles = (d.rows + kConvRows - 1) / kConvRows;
  return dim3(unsigned((vecs + kConvVecsX - 1) / kConvVecsX), unsigned((tiles + kConvTilesY - 1) / kConvTilesY));
}

template <typename Fn>
void dispatch_conv(at::ScalarType dtype, int kw, Fn&& fn) {
  FLOAT_SWITCH(dtype, elem_t, [&] {
    if (kw == 4) {
      fn.template operator()<elem_t, 4>();
    } else {
      fn.template operator()<elem_t, 8>();
    }
  });
}

at::Tensor segment_conv_fwd_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& cu_seqlens,
                                 const std::optional<at::Tensor>& history, bool activation) {
  const ConvDims d = check_segment_conv_args(x, weight, cu_seqlens, history);
  c10::cuda::CUDAGuard guard(x.device());
  const ConvInputs in = prepare(x, weight, cu_seqlens, history, d);
  at::Tensor y = at::empty_like(in.x);
  if (d.rows == 0 || d.channels == 0) return y;
  ConvParams p = make_params(in, d, activation);
  p.y = y.data_ptr();
  const dim3 grid = conv_grid(d), block(kConvVecsX, kConvTilesY);
  TORCH_CHECK(grid.y <= 65535u, "segment_conv: too many rows for one launch: ", d.rows);
  dispatch_conv(x.scalar_type(), in.kw, [&]<typename T, int kW>() {
    segment_conv_fwd_kernel<T, kW><<<grid, block, 0, at::cuda::getCurrentCUDAStream()>>>(p);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> segment_conv_bwd_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                                                    const at::Tensor& weight,
                                                                    const at::Tensor& cu_seqlens,
                                                                    const std::optional<at::Tensor>& history,
                                                                    bool activation) {
  const ConvDims d = check_segment_conv_args(x, weight, cu_seqlens, history);
  CHECK_SHAPE(grad_y, d.rows, d.channels);
  CHECK_DEVICE(grad_y, x);
  c10::cuda::CUDAGuard guard(x.device());
  const ConvInputs in = prepare(x, weight, cu_seqlens, history, d);
  const at::Tensor dy = contiguous_aligned16(grad_y.to(x.scalar_type()));
  at::Tensor grad_x = at::empty_like(in.x);
  at::Tensor grad_history = history.has_value() ? at::zeros({d.segments, d.width - 1, d.channels}, in.x.options())
                                                : at::empty({0}, x.options().dtype(at::kFloat));
  const dim3 grid = conv_grid(d), block(kConvVecsX, kConvTilesY);
  TORCH_CHECK(grid.y <= 65535u, "segment_conv: too many rows for one launch: ", d.rows);
  at::Tensor partial = at::zeros({std::max<int64_t>(grid.y, 1), d.channels, in.kw}, x.options().dtype(at::kFloat));
  if (d.rows > 0 && d.channels > 0) {
    ConvParams p = make_params(in, d, activation);
    p.grad_y = dy.data_ptr();
    p.grad_x = grad_x.data_ptr();
    p.grad_history = history.has_value() && d.width > 1 ? grad_history.data_ptr() : nullptr;
    p.grad_w_partial = partial.data_ptr<float>();
    dispatch_conv(x.scalar_type(), in.kw, [&]<typename T, int kW>() {
      segment_conv_bwd_kernel<T, kW><<<grid, block, 0, at::cuda::getCurrentCUDAStream()>>>(p);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  at::Tensor grad_w_padded = at::empty({d.channels, in.kw}, x.options().dtype(at::kFloat));
  if (d.channels > 0) {
    const int64_t cols = d.channels * in.kw;
    column_sum_kernel<float><<<unsigned((cols + 31) / 32), kColumnSumWarps * 32, 0, at::cuda::getCurrentCUDAStream()>>>(
        partial.data_ptr<float>(), partial.size(0), cols, grad_w_padded.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const at::Tensor grad_weight = grad_w_padded.narrow(1, in.kw - d.width, d.width).to(weight.scalar_type());
  if (history.has_value() && grad_history.scalar_type() != history->scalar_type()) {
    grad_history = grad_history.to(history->scalar_type());
  }
  return {grad_x, grad_weight, grad_history};
}

}  // namespace

TORCH_LIBRARY_IMPL(mom_ops, CUDA, m) {
  m.impl("segment_conv_fwd", &segment_conv_fwd_cuda);
  m.impl("segment_conv_bwd", &segment_conv_bwd_cuda);
}

}  // namespace mom_ops
