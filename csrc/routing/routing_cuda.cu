// CUDA bindings of the routing ops: check inputs, fill params, launch on the current stream. No host sync.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/aligned.h"
#include "common/other_gpus.h"
#include "common/static_switch.h"
#include "common/strided_rows.h"
#include "routing/routing_checks.h"
#include "routing/routing_kernels.cuh"

namespace mom_ops {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> route_cuda(
    const at::Tensor& router_logits, int64_t topk, int64_t batch_size, const std::optional<at::Tensor>& cu_seqlens,
    const std::optional<at::Tensor>& token_mask, int64_t chunk_size) {
  check_route_args(router_logits, topk, batch_size, cu_seqlens, token_mask, chunk_size);
  CHECK_CUDA_FLOATING(router_logits);
  const int64_t N = router_logits.size(0), M = router_logits.size(1);
  TORCH_CHECK_VALUE(M <= 64, "the CUDA router supports at most 64 memories, router_logits has ", M);
  TORCH_CHECK_VALUE(M * batch_size < (int64_t(1) << 31), "num_memories * batch_size must fit in int32");
  if (!cuda_kernels_run_on(router_logits.device())) {
    return call_other_gpu_fallback<decltype(route_cuda)>(
        "route", router_logits.device(), router_logits, topk, batch_size, cu_seqlens, token_mask, chunk_size);
  }
  c10::cuda::CUDAGuard guard(router_logits.device());
  const at::Tensor logits = router_logits.contiguous();
  const int64_t R = N * topk, S = M * batch_size, max_chunks_ = max_chunks(R, S, chunk_size);
  TORCH_CHECK_VALUE(2 * max_chunks_ < (int64_t(1) << 31), "route on CUDA: the chunk table of ", R, " rows in chunks "
                    "of ", chunk_size, " has more than 2^30 entries (the kernels index it in 32 bits)");
  const int num_tiles = int(std::max<int64_t>((N + kRouteTile - 1) / kRouteTile, 1));
  const auto i32 = logits.options().dtype(at::kInt);
  at::Tensor weights = at::empty({N, topk}, logits.options().dtype(at::kFloat));
  at::Tensor memory_ids = at::empty({N, topk}, i32), dst_row = at::empty({N, topk}, i32);
  at::Tensor src_pair = at::empty({R}, i32), seg_cu = at::empty({S + 1}, i32);  // (zeroed by router_kernel)
  at::Tensor chunk_indices = at::empty({max_chunks_, 2}, i32);
  at::Tensor workspace = at::empty({int64_t(num_tiles) * M + S + 1}, i32);
  const at::Tensor mask = token_mask.has_value() ? token_mask->contiguous() : at::Tensor();
  const at::Tensor cu = cu_seqlens.has_value() ? cu_seqlens->contiguous() : at::Tensor();

  RouteParams p{};
  p.logits = logits.data_ptr();
  p.mask = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  p.cu_in = cu.defined() ? cu.data_ptr() : nullptr;
  p.cu_in_is_int64 = cu.defined() && cu.scalar_type() == at::kLong;
  p.num_tokens = int(N);
  p.num_memories = int(M);
  p.topk = int(topk);
  p.batch = int(batch_size);
  p.seqlen = int(N / batch_size);
  // a chunk at least as long as every segment (all R rows) gives the same table: clamped, so that it fits the
  // kernel's int for a chunk_size near or past 2^31 (its chunk counts are formed in int64)
  p.chunk_size = int(std::min<int64_t>(chunk_size, std::max<int64_t>(R, 1)));
  p.num_tiles = num_tiles;
  p.max_chunks = int(max_chunks_);
  p.weights = weights.data_ptr<float>();
  p.memory_ids = memory_ids.data_ptr<int>();
  p.dst_row = dst_row.data_ptr<int>();
  p.src_pair = src_pair.data_ptr<int>();
  p.seg_cu = seg_cu.data_ptr<int>();
  p.chunk_indices = chunk_indices.data_ptr<int>();
  p.tile_counts = workspace.data_ptr<int>();
  p.chunk_offsets = p.tile_counts + int64_t(num_tiles) * M;

  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  FLOAT_SWITCH(logits.scalar_type(), elem_t, [&] {
    router_kernel<elem_t><<<num_tiles, kRouteTile, 0, stream>>>(p);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  plan_kernel<<<num_tiles, kRouteTile, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  chunk_table_kernel<1024><<<1, 1024, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {weights, memory_ids, dst_row, src_pair, seg_cu, chunk_indices};
}

// Launches kernel<T, kVec> with one warp per row: 16-byte accesses when the row size and pointers allow.
template <template <typename, int> class Launch>
void launch_rows(const at::Tensor& data, int64_t rows, PermuteParams& p) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  constexpr int kThreads = 256;
  const int64_t blocks = std::max<int64_t>((rows * 32 + kThreads - 1) / kThreads, 1);
  TORCH_CHECK(blocks < (int64_t(1) << 31), "too many rows for one launch: ", rows);
  FLOAT_SWITCH(data.scalar_type(), elem_t, [&] {
    constexpr int kVec = 16 / sizeof(elem_t);
    const bool aligned = p.dim % kVec == 0 && p.in_row_stride % kVec == 0 &&
                         aligned16(p.in) && aligned16(p.out) && (p.other == nullptr || aligned16(p.other));
    BOOL_SWITCH(aligned, kAligned, [&] {
      Launch<elem_t, kAligned ? kVec : 1>::run(blocks, kThreads, stream, p);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int kVec>
struct PermuteLaunch {
  static void run(int64_t blocks, int threads, cudaStream_t stream, const PermuteParams& p) {
    permute_kernel<T, kVec><<<blocks, threads, 0, stream>>>(p);
  }
};
template <typename T, int kVec>
struct UnpermuteLaunch {
  static void run(int64_t blocks, int threads, cudaStream_t stream, const PermuteParams& p) {
    unpermute_kernel<T, kVec><<<blocks, threads, 0, stream>>>(p);
  }
};
template <typename T, int kVec>
struct UnpermuteBackwardLaunch {
  static void run(int64_t blocks, int threads, cudaStream_t stream, const PermuteParams& p) {
    unpermute_backward_kernel<T, kVec><<<blocks, threads, 0, stream>>>(p);
  }
};

PermuteParams plan_params(const at::Tensor& dst_row, const at::Tensor& src_pair, int64_t dim) {
  PermuteParams p{};
  p.dst_row = dst_row.data_ptr<int>();
  p.src_pair = src_pair.data_ptr<int>();
  p.num_tokens = dst_row.size(0);
  p.topk = int(dst_row.size(1));
  p.num_rows = src_pair.size(0);
  p.dim = dim;
  p.in_row_stride = dim;
  return p;
}

at::Tensor permute_cuda(const at::Tensor& x, const at::Tensor& dst_row, const at::Tensor& src_pair) {
  CHECK_DIM(x, 2);
  CHECK_CUDA_FLOATING(x);
  check_plan_tokens(x, dst_row, src_pair);
  if (!cuda_kernels_run_on(x.device())) {
    return call_other_gpu_fallback<decltype(permute_cuda)>("permute", x.device(), x, dst_row, src_pair);
  }
  c10::cuda::CUDAGuard guard(x.device());
  // Rows with dense columns are read in place at their stride (a column slice of a wider projection, say; rows are
  // only read, so any stride(0) will do, 0 included).
  const at::Tensor xc = dense_last_dim(x);
  at::Tensor y = at::empty({src_pair.size(0), x.size(1)}, x.options());
  PermuteParams p = plan_params(dst_row, src_pair, x.size(1));
  p.in = xc.data_ptr();
  p.in_row_stride = row_stride(xc);
  p.out = y.data_ptr();
  launch_rows<PermuteLaunch>(xc, std::max(p.num_rows, p.num_tokens), p);
  return y;
}

at::Tensor unpermute_cuda(const at::Tensor& y, const at::Tensor& dst_row, const at::Tensor& src_pair,
                          const std::optional<at::Tensor>& weights) {
  CHECK_DIM(y, 2);
  CHECK_CUDA_FLOATING(y);
  check_plan_maps(dst_row, src_pair, y);
  TORCH_CHECK_VALUE(y.size(0) == dst_row.numel(), "y must have dst_row.numel() = ", dst_row.numel(),
                    " rows (tokens * topk), got ", y.size(0));
  if (weights.has_value()) check_weights(*weights, dst_row, y);
  if (!cuda_kernels_run_on(y.device())) {
    return call_other_gpu_fallback<decltype(unpermute_cuda)>("unpermute", y.device(), y, dst_row, src_pair, weights);
  }
  c10::cuda::CUDAGuard guard(y.device());
  const at::Tensor yc = y.contiguous();
  const at::Tensor w = weights.has_value() ? weights->contiguous() : at::Tensor();
  at::Tensor x = at::empty({dst_row.size(0), y.size(1)}, y.options());
  PermuteParams p = plan_params(dst_row, src_pair, y.size(1));
  p.in = yc.data_ptr();
  p.out = x.data_ptr();
  p.weights = w.defined() ? w.data_ptr<float>() : nullptr;
  launch_rows<UnpermuteLaunch>(yc, p.num_tokens, p);
  return x;
}

std::tuple<at::Tensor, at::Tensor> unpermute_backward_cuda(const at::Tensor& grad_x, const at::Tensor& y,
                                                           const at::Tensor& dst_row, const at::Tensor& src_pair,
                                                           const std::optional<at::Tensor>& weights,
                                                           bool need_grad_weights) {
  CHECK_DIM(y, 2);
  CHECK_CUDA_FLOATING(y);
  check_plan_maps(dst_row, src_pair, y);
  CHECK_SHAPE(grad_x, dst_row.size(0), y.size(1));
  CHECK_SAME_DTYPE(grad_x, y);
  CHECK_DEVICE(grad_x, y);
  TORCH_CHECK_VALUE(y.size(0) == dst_row.numel(), "y must have dst_row.numel() = ", dst_row.numel(),
                    " rows (tokens * topk), got ", y.size(0));
  if (weights.has_value()) check_weights(*weights, dst_row, y);
  if (!cuda_kernels_run_on(y.device())) {
    return call_other_gpu_fallback<decltype(unpermute_backward_cuda)>(
        "unpermute_backward", y.device(), grad_x, y, dst_row, src_pair, weights, need_grad_weights);
  }
  c10::cuda::CUDAGuard guard(y.device());
  const at::Tensor gx = grad_x.contiguous(), yc = y.contiguous();
  const at::Tensor w = weights.has_value() ? weights->contiguous() : at::Tensor();
  at::Tensor grad_y = at::empty_like(yc);
  const auto f32 = y.options().dtype(at::kFloat);
  // Pairs of masked tokens own no row and keep a zero gradient.
  at::Tensor grad_w = need_grad_weights ? at::zeros(dst_row.sizes(), f32) : at::empty({0}, f32);
  PermuteParams p = plan_params(dst_row, src_pair, y.size(1));
  p.in = gx.data_ptr();
  p.other = yc.data_ptr();
  p.out = grad_y.data_ptr();
  p.weights = w.defined() ? w.data_ptr<float>() : nullptr;
  p.grad_weights = need_grad_weights ? grad_w.data_ptr<float>() : nullptr;
  launch_rows<UnpermuteBackwardLaunch>(yc, p.num_rows, p);
  return {grad_y, grad_w};
}

at::Tensor route_backward_cuda(const at::Tensor& grad_weights, const at::Tensor& weights, const at::Tensor& memory_ids,
                               int64_t num_memories, at::ScalarType dtype) {
  check_route_backward_args(grad_weights, weights, memory_ids, num_memories, dtype);
  CHECK_DTYPE(weights, at::kFloat);
  TORCH_CHECK_VALUE(dtype != at::kDouble, "dtype must be float32, float16 or bfloat16 on CUDA, got ", dtype);
  TORCH_CHECK_VALUE(num_memories < (int64_t(1) << 31), "num_memories must fit in int32, got ", num_memories);
  if (!cuda_kernels_run_on(weights.device())) {
    return call_other_gpu_fallback<decltype(route_backward_cuda)>(
        "route_backward", weights.device(), grad_weights, weights, memory_ids, num_memories, dtype);
  }
  c10::cuda::CUDAGuard guard(weights.device());
  const int64_t N = weights.size(0);
  at::Tensor grad = at::empty({N, num_memories}, weights.options().dtype(dtype));
  if (grad.numel() == 0) return grad;
  // autograd hands the layer's weights gradient as a column slice: rows any stride apart, read in place
  const at::Tensor g = dense_last_dim(grad_weights);
  constexpr int kThreads = 256;
  FLOAT_SWITCH(dtype, T, [&] {
    route_backward_kernel<T><<<unsigned((N + kThreads - 1) / kThreads), kThreads, 0,
                               at::cuda::getCurrentCUDAStream()>>>(
        g.data_ptr<float>(), row_stride(g), weights.data_ptr<float>(), memory_ids.data_ptr<int>(), N,
        int(weights.size(1)), int(num_memories), grad.data_ptr<T>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(mom_ops, CUDA, m) {
  m.impl("route", &route_cuda);
  m.impl("permute", &permute_cuda);
  m.impl("unpermute", &unpermute_cuda);
  m.impl("unpermute_backward", &unpermute_backward_cuda);
  m.impl("route_backward", &route_backward_cuda);
}

}  // namespace mom_ops
