// CUDA bindings of segment_conv (fwd, bwd). No host sync; the weight gradient is a fixed-order sum of per-CTA
// partials (common/column_sum.cuh).
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <cstdlib>

#include "common/column_sum.cuh"
#include "common/env_flag.h"
#include "common/other_gpus.h"
#include "common/static_switch.h"
#include "common/strided_rows.h"
#include "conv/conv_checks.h"
#include "conv/conv_kernels.cuh"

namespace mom_ops {
namespace {

// The small inputs as the kernels read them: weight contiguous in fp32 or x's dtype (read as is, no cast launch),
// history in fp32, contiguous; cu_seqlens contiguous.
struct ConvInputs {
  at::Tensor weight, history, cu;
};

// x's dtype on CUDA (every entry, before the hand-over to another GPU's fallback too).
void check_cuda_x(const at::Tensor& x) { CHECK_CUDA_FLOATING(x); }

ConvInputs prepare(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& cu_seqlens,
                   const std::optional<at::Tensor>& history, const ConvDims& d) {
  TORCH_CHECK_VALUE(d.channels < (int64_t(1) << 31) / kConvMaxWidth, "x has too many channels for CUDA: ", d.channels);
  TORCH_CHECK_VALUE(d.segments < (int64_t(1) << 31) - 1, "cu_seqlens has too many segments for CUDA: ", d.segments);
  ConvInputs in;
  const bool as_is = weight.scalar_type() == at::kFloat || weight.scalar_type() == x.scalar_type();
  in.weight = (as_is ? weight : weight.to(at::kFloat)).contiguous();
  if (history.has_value()) in.history = history->to(at::kFloat).contiguous();
  in.cu = cu_seqlens.contiguous();
  return in;
}

// The grid's axes (conv_grid_of): MOM_OPS_CONV_TILES_FIRST=1 / 0 forces them (read once), else kConvTilesFirst
// (tiles first); run blocks along y only while they fit there (65535).
bool conv_tiles_first(int64_t run_blocks) {
  static const bool forced_on = env_is("MOM_OPS_CONV_TILES_FIRST", "1");
  static const bool forced_off = env_is("MOM_OPS_CONV_TILES_FIRST", "0");
  const bool first = forced_on || (kConvTilesFirst && !forced_off);
  return first && run_blocks <= 65535;
}

// MOM_OPS_CONV_RUN_ROWS=n (1 .. kConvMaxRunRows, read at each call) forces the rows per run; 0 when unset.
int conv_forced_run_rows() {
  const char* env = std::getenv("MOM_OPS_CONV_RUN_ROWS");
  if (env == nullptr || *env == '\0') return 0;
  const int n = std::atoi(env);
  TORCH_CHECK_VALUE(n >= 1 && n <= kConvMaxRunRows, "MOM_OPS_CONV_RUN_ROWS must be in [1, ", kConvMaxRunRows,
                    "], got '", env, "'");
  return n;
}

ConvParams make_params(const at::Tensor& x, const ConvInputs& in, const ConvDims& d, bool activation,
                       const std::optional<at::Tensor>& dst_row, const std::optional<at::Tensor>& src_pair) {
  ConvParams p{};
  p.x = x.data_ptr();
  if (src_pair.has_value()) {  // the conv of permute(x): rows through the plan (checked by conv_rows)
    p.src_pair = src_pair->data_ptr<int>();
    p.src_pairs = dst_row->numel();
    p.topk = int(dst_row->size(1));
  }
  p.weight = in.weight.data_ptr();
  p.weight_f32 = in.weight.scalar_type() == at::kFloat;
  p.history = in.history.defined() ? in.history.data_ptr<float>() : nullptr;
  p.cu_seqlens = in.cu.data_ptr();
  p.cu_int64 = in.cu.scalar_type() == at::kLong;
  p.rows = d.rows;
  p.x_row_stride = x.stride(0);
  p.channels = int(d.channels);
  p.segments = int(d.segments);
  p.activation = activation;
  return p;
}

// Calls fn.template operator()<T, kVec, kW>() for x's dtype and the width: kConvVec channels per thread (8- or
// 16-byte accesses) when C and every row pointer allow them (rows stride elements apart), single elements otherwise.
template <typename Fn>
void dispatch_conv(const at::Tensor& x, const ConvDims& d, std::initializer_list<const at::Tensor*> row_tensors,
                   Fn&& fn) {
  FLOAT_SWITCH(x.scalar_type(), elem_t, [&] {
    constexpr int kBytes = kConvVec * sizeof(elem_t);
    bool aligned = d.channels % kConvVec == 0;
    for (const at::Tensor* t : row_tensors) {
      aligned = aligned && reinterpret_cast<uintptr_t>(t->data_ptr()) % kBytes == 0 && t->stride(0) % kConvVec == 0;
    }
    BOOL_SWITCH(aligned, kAligned, [&] {
      WIDTH_SWITCH(d.width, kW, [&] { fn.template operator()<elem_t, kAligned ? kConvVec : 1, kW>(); });
    });
  });
}

// CTAs of kConvWarps runs times 32 vectors of kVec channels (conv_grid_of orders the axes); run_blocks: the rows of
// the bwd's grad_w partials. The run length fills whole waves of this kernel's resident CTAs (conv_run_rows), so it
// depends on the GPU: y and grad_x do not (each row's sums have one order), grad_w's partial sums do.
struct ConvGrid {
  int64_t run_blocks;
  dim3 grid;
};
template <auto kKernel>
ConvGrid conv_grid(const ConvDims& d, int vec, ConvParams& p) {
  static const int ctas_per_sm = [] {  // a property of the instance and the architecture: asked once
    int n = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kKernel, kConvThreads, 0));
    return n > 0 ? n : 1;
  }();
  const int64_t tiles = (d.channels + 32 * vec - 1) / (32 * vec);
  const int64_t slots = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * ctas_per_sm;
  const int forced = conv_forced_run_rows();
  p.run_rows = forced > 0 ? forced : conv_run_rows(d.rows, tiles, slots);
  const int64_t run_blocks = conv_run_blocks(d.rows, p.run_rows);
  p.tiles_first = conv_tiles_first(run_blocks);
  TORCH_CHECK_VALUE(tiles <= 65535 && (p.tiles_first || run_blocks < (int64_t(1) << 31)),
                    "x has too many channels or rows for CUDA: ", d.channels, ", ", d.rows);
  return {run_blocks, conv_grid_of(unsigned(run_blocks), unsigned(tiles), p.tiles_first)};
}

at::Tensor segment_conv_fwd_cuda(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& cu_seqlens,
                                 const std::optional<at::Tensor>& history, bool activation,
                                 const std::optional<at::Tensor>& dst_row, const std::optional<at::Tensor>& src_pair) {
  const ConvDims d = check_segment_conv_args(x_in, weight, cu_seqlens, history, dst_row, src_pair);
  check_cuda_x(x_in);
  if (!cuda_kernels_run_on(x_in.device())) {
    return call_other_gpu_fallback<decltype(segment_conv_fwd_cuda)>(
        "segment_conv_fwd", x_in.device(), x_in, weight, cu_seqlens, history, activation, dst_row, src_pair);
  }
  c10::cuda::CUDAGuard guard(x_in.device());
  const ConvInputs in = prepare(x_in, weight, cu_seqlens, history, d);
  const at::Tensor x = dense_last_dim(x_in);
  at::Tensor y = at::empty({d.rows, d.channels}, x.options());
  if (d.rows == 0 || d.channels == 0) return y;
  ConvParams p = make_params(x, in, d, activation, dst_row, src_pair);
  p.y = y.data_ptr();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_conv(x, d, {&x, &y}, [&]<typename T, int kVec, int kW>() {
    constexpr auto kernel = segment_conv_fwd_kernel<T, kVec, kW>;
    const ConvGrid g = conv_grid<kernel>(d, kVec, p);
    kernel<<<g.grid, kConvThreads, 0, stream>>>(p);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

void check_grad_y(const at::Tensor& grad_y, const at::Tensor& x, const ConvDims& d) {
  CHECK_SHAPE(grad_y, d.rows, d.channels);
  CHECK_DEVICE(grad_y, x);
}

// The bwd into a given grad_x [R, C] (dense channels, any row stride, x's dtype); returns grad_weight, grad_history.
std::tuple<at::Tensor, at::Tensor> conv_bwd(const at::Tensor& grad_y_in, const at::Tensor& x_in,
                                            const at::Tensor& weight, const at::Tensor& cu_seqlens,
                                            const std::optional<at::Tensor>& history, bool activation,
                                            const at::Tensor& grad_x, const ConvDims& d,
                                            const std::optional<at::Tensor>& dst_row = std::nullopt,
                                            const std::optional<at::Tensor>& src_pair = std::nullopt) {
  c10::cuda::CUDAGuard guard(x_in.device());
  const ConvInputs in = prepare(x_in, weight, cu_seqlens, history, d);
  const at::Tensor x = dense_last_dim(x_in), grad_y = dense_last_dim(grad_y_in.to(x_in.scalar_type()));
  const auto f32 = x.options().dtype(at::kFloat);
  // Every slot of a non-empty segment is written by the kernel; empty segments keep these zeros.
  at::Tensor grad_history = history.has_value() ? at::zeros({d.segments, d.width - 1, d.channels}, f32)
                                                : at::empty({0}, f32);
  at::Tensor partial;  // [run blocks, C, W] from the launch; one row of zeros when nothing runs
  if (d.rows > 0 && d.channels > 0) {
    ConvParams p = make_params(x, in, d, activation, dst_row, src_pair);
    p.grad_y = grad_y.data_ptr();
    p.grad_y_row_stride = grad_y.stride(0);
    p.grad_x = grad_x.data_ptr();
    p.grad_x_row_stride = grad_x.stride(0);
    p.grad_history = history.has_value() ? grad_history.data_ptr<float>() : nullptr;
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    dispatch_conv(x, d, {&x, &grad_y, &grad_x}, [&]<typename T, int kVec, int kW>() {
      constexpr auto kernel = segment_conv_bwd_kernel<T, kVec, kW>;
      const ConvGrid g = conv_grid<kernel>(d, kVec, p);
      partial = at::empty({g.run_blocks, d.channels, d.width}, f32);  // every entry written
      p.grad_w_partial = partial.data_ptr<float>();
      kernel<<<g.grid, kConvThreads, 0, stream>>>(p);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    partial = at::zeros({1, d.channels, d.width}, f32);
  }
  at::Tensor grad_w = column_sums(partial, {d.channels, d.width}, weight.scalar_type());
  if (history.has_value()) grad_history = grad_history.to(history->scalar_type());
  return {grad_w, grad_history};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> segment_conv_bwd_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                                                    const at::Tensor& weight,
                                                                    const at::Tensor& cu_seqlens,
                                                                    const std::optional<at::Tensor>& history,
                                                                    bool activation,
                                                                    const std::optional<at::Tensor>& dst_row,
                                                                    const std::optional<at::Tensor>& src_pair) {
  const ConvDims d = check_segment_conv_args(x, weight, cu_seqlens, history, dst_row, src_pair);
  check_grad_y(grad_y, x, d);
  check_cuda_x(x);
  if (!cuda_kernels_run_on(x.device())) {
    return call_other_gpu_fallback<decltype(segment_conv_bwd_cuda)>(
        "segment_conv_bwd", x.device(), grad_y, x, weight, cu_seqlens, history, activation, dst_row, src_pair);
  }
  at::Tensor grad_x = at::empty({d.rows, d.channels}, x.options());  // the conv's input rows (the stream's R)
  auto [grad_w, grad_history] =
      conv_bwd(grad_y, x, weight, cu_seqlens, history, activation, grad_x, d, dst_row, src_pair);
  return {grad_x, grad_w, grad_history};
}

std::tuple<at::Tensor, at::Tensor> segment_conv_bwd_into_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                                             const at::Tensor& weight, const at::Tensor& cu_seqlens,
                                                             const std::optional<at::Tensor>& history,
                                                             bool activation, at::Tensor& grad_x) {
  const ConvDims d = check_segment_conv_args(x, weight, cu_seqlens, history);
  check_conv_grad_x_out(grad_x, x, grad_y, d);
  check_grad_y(grad_y, x, d);
  check_cuda_x(x);
  if (!cuda_kernels_run_on(x.device())) {
    return call_other_gpu_fallback<decltype(segment_conv_bwd_into_cuda)>(
        "segment_conv_bwd_into", x.device(), grad_y, x, weight, cu_seqlens, history, activation, grad_x);
  }
  return conv_bwd(grad_y, x, weight, cu_seqlens, history, activation, grad_x, d);
}

}  // namespace

TORCH_LIBRARY_IMPL(mom_ops, CUDA, m) {
  m.impl("segment_conv_fwd", &segment_conv_fwd_cuda);
  m.impl("segment_conv_bwd", &segment_conv_bwd_cuda);
  m.impl("segment_conv_bwd_into", &segment_conv_bwd_into_cuda);
}

}  // namespace mom_ops
