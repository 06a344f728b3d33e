// CPU implementations of the routing ops: plain loops, the semantics every other implementation matches.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "common/cpu_math.h"
#include "routing/routing_checks.h"

namespace mom_ops {
namespace {

// Weights of the kept logits l[ids[0..k)] (ids[0] the largest): softmax over them in fp64, the rule the CUDA
// kernel follows too. Infinite top logit: +inf shares the weight among kept +inf entries; all -inf: equal.
template <typename T>
void kept_weights(const T* logit, const int32_t* ids, int64_t k, T* w) {
  const double top = double(logit[ids[0]]);
  auto e_of = [&](int64_t j) {  // exp(l_j - top), with the infinity rules
    const double l = double(logit[ids[j]]);
    if (std::isinf(top)) return top > 0 ? double(l == top) : 1.0;
    return std::exp(l - top);
  };
  double sum = 0;
  for (int64_t j = 0; j < k; ++j) sum += e_of(j);
  for (int64_t j = 0; j < k; ++j) w[j] = T(e_of(j) / sum);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> route_cpu(
    const at::Tensor& router_logits, int64_t topk, int64_t batch_size, const std::optional<at::Tensor>& cu_seqlens,
    const std::optional<at::Tensor>& token_mask, int64_t chunk_size) {
  check_route_args(router_logits, topk, batch_size, cu_seqlens, token_mask, chunk_size);
  const int64_t num_tokens = router_logits.size(0), num_memories = router_logits.size(1);
  // fp32 softmax (fp64 for fp64 logits: gradcheck); weights come out in that precision.
  const at::Tensor logits = router_logits.to(cpu_math_type(router_logits)).contiguous();
  at::Tensor nan_rows = logits.isnan().any(1);  // (masked tokens route nowhere: their logits may be anything)
  if (token_mask.has_value()) nan_rows = nan_rows.logical_and(token_mask->reshape({-1}));
  TORCH_CHECK_VALUE(!nan_rows.any().item<bool>(), "router_logits contains NaN");

  // Sequence of each token.
  std::vector<int64_t> seq_of(num_tokens);
  if (cu_seqlens.has_value()) {
    const at::Tensor cu = cu_seqlens->to(at::kLong).contiguous();
    const int64_t* c = cu.data_ptr<int64_t>();
    for (int64_t b = 0; b < batch_size; ++b)
      for (int64_t n = c[b]; n < c[b + 1]; ++n) seq_of[n] = b;
  } else {
    const int64_t seq_len = num_tokens / batch_size;
    for (int64_t n = 0; n < num_tokens; ++n) seq_of[n] = n / seq_len;
  }
  const bool* mask = nullptr;
  at::Tensor mask_c;
  if (token_mask.has_value()) {
    mask_c = token_mask->contiguous();
    mask = mask_c.data_ptr<bool>();
  }

  const int64_t num_segments = num_memories * batch_size, num_rows = num_tokens * topk;
  const auto i32 = logits.options().dtype(at::kInt);
  at::Tensor weights = at::zeros({num_tokens, topk}, logits.options());
  at::Tensor memory_ids = at::full({num_tokens, topk}, -1, i32);
  at::Tensor dst_row = at::full({num_tokens, topk}, -1, i32);
  at::Tensor src_pair = at::full({num_rows}, -1, i32);
  at::Tensor seg_cu = at::zeros({num_segments + 1}, i32);
  at::Tensor chunk_indices = at::full({max_chunks(num_rows, num_segments, chunk_size), 2}, -1, i32);
  int32_t* ids = memory_ids.data_ptr<int32_t>();

  // Router: the k largest logits (ties to the lower memory index), weights = softmax over them.
  std::vector<int64_t> count(num_segments, 0);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "route_cpu", [&] {
    scalar_t* w = weights.data_ptr<scalar_t>();
    for (int64_t n = 0; n < num_tokens; ++n) {
      if (mask != nullptr && !mask[n]) continue;
      const scalar_t* l = logits.data_ptr<scalar_t>() + n * num_memories;
      for (int64_t j = 0; j < topk; ++j) {
        int64_t best = -1;
        for (int64_t m = 0; m < num_memories; ++m) {
          bool taken = false;
          for (int64_t i = 0; i < j; ++i) taken |= (ids[n * topk + i] == m);
          if (!taken && (best < 0 || l[m] > l[best])) best = m;
        }
        ids[n * topk + j] = int32_t(best);
        count[best * batch_size + seq_of[n]] += 1;
      }
      kept_weights(l, ids + n * topk, topk, w + n * topk);
    }
  });

  // Plan: counting sort by segment s = m * B + b, tokens in time order inside a segment.
  int32_t* cu = seg_cu.data_ptr<int32_t>();
  for (int64_t s = 0; s < num_segments; ++s) cu[s + 1] = cu[s] + int32_t(count[s]);
  std::vector<int64_t> cursor(cu, cu + num_segments);
  int32_t* row = dst_row.data_ptr<int32_t>();
  int32_t* pair = src_pair.data_ptr<int32_t>();
  for (int64_t n = 0; n < num_tokens; ++n) {
    if (ids[n * topk] < 0) continue;
    for (int64_t j = 0; j < topk; ++j) {
      const int64_t r = cursor[ids[n * topk + j] * batch_size + seq_of[n]]++;
      row[n * topk + j] = int32_t(r);
      pair[r] = int32_t(n * topk + j);
    }
  }
  int32_t* chunk = chunk_indices.data_ptr<int32_t>();
  int64_t c = 0;
  for (int64_t s = 0; s < num_segments; ++s) {
    for (int64_t i = 0; i * chunk_size < cu[s + 1] - cu[s]; ++i, ++c) {
      chunk[2 * c] = int32_t(s);
      chunk[2 * c + 1] = int32_t(i);
    }
  }
  return {weights, memory_ids, dst_row, src_pair, seg_cu, chunk_indices};
}

at::Tensor permute_cpu(const at::Tensor& x, const at::Tensor& dst_row, const at::Tensor& src_pair) {
  CHECK_DIM(x, 2);
  CHECK_FLOATING(x);
  check_plan_tokens(x, dst_row, src_pair);
  check_plan_map_values(dst_row, src_pair, src_pair.size(0));
  const int64_t topk = dst_row.size(1);
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty({src_pair.size(0), x.size(1)}, x.options());
  const int64_t dim = x.size(1);
  const int32_t* pair = src_pair.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "permute_cpu", [&] {
    const scalar_t* in = xc.data_ptr<scalar_t>();
    scalar_t* out = y.data_ptr<scalar_t>();
    for (int64_t r = 0; r < y.size(0); ++r) {
      const int64_t p = pair[r];
      for (int64_t d = 0; d < dim; ++d) out[r * dim + d] = p < 0 ? scalar_t(0) : in[(p / topk) * dim + d];
    }
  });
  return y;
}

at::Tensor unpermute_cpu(const at::Tensor& y, const at::Tensor& dst_row, const at::Tensor& src_pair,
                         const std::optional<at::Tensor>& weights) {
  CHECK_DIM(y, 2);
  CHECK_FLOATING(y);
  check_plan_maps(dst_row, src_pair, y);
  TORCH_CHECK_VALUE(y.size(0) == dst_row.numel(), "y must have dst_row.numel() = ", dst_row.numel(),
                    " rows (tokens * topk), got ", y.size(0));
  check_plan_map_values(dst_row, src_pair, y.size(0));
  if (weights.has_value()) check_weights(*weights, dst_row, y);
  const int64_t num_tokens = dst_row.size(0), topk = dst_row.size(1), dim = y.size(1);
  const at::Tensor yc = y.contiguous();
  at::Tensor x = at::empty({num_tokens, dim}, y.options());
  const int32_t* row = dst_row.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "unpermute_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;  // fp32, or fp64 for fp64 data
    const at::Tensor wc = weights.has_value() ? weights->to(c10::CppTypeToScalarType<acc_t>::value) : at::Tensor();
    const acc_t* w = wc.defined() ? wc.data_ptr<acc_t>() : nullptr;
    std::vector<acc_t> acc(dim);
    const scalar_t* in = yc.data_ptr<scalar_t>();
    scalar_t* out = x.data_ptr<scalar_t>();
    for (int64_t n = 0; n < num_tokens; ++n) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t j = 0; j < topk; ++j) {
        const int64_t r = row[n * topk + j];
        if (r < 0) continue;
        const acc_t wj = w != nullptr ? w[n * topk + j] : acc_t(1);
        for (int64_t d = 0; d < dim; ++d) acc[d] += wj * acc_t(in[r * dim + d]);
      }
      for (int64_t d = 0; d < dim; ++d) out[n * dim + d] = scalar_t(acc[d]);
    }
  });
  return x;
}

std::tuple<at::Tensor, at::Tensor> unpermute_backward_cpu(const at::Tensor& grad_x, const at::Tensor& y,
                                                          const at::Tensor& dst_row, const at::Tensor& src_pair,
                                                          const std::optional<at::Tensor>& weights,
                                                          bool need_grad_weights) {
  CHECK_DIM(y, 2);
  CHECK_FLOATING(y);
  check_plan_maps(dst_row, src_pair, y);
  const int64_t num_tokens = dst_row.size(0), topk = dst_row.size(1), dim = y.size(1);
  CHECK_SHAPE(grad_x, num_tokens, dim);
  CHECK_SAME_DTYPE(grad_x, y);
  TORCH_CHECK_VALUE(y.size(0) == dst_row.numel(), "y must have dst_row.numel() = ", dst_row.numel(),
                    " rows (tokens * topk), got ", y.size(0));
  check_plan_map_values(dst_row, src_pair, y.size(0));
  if (weights.has_value()) check_weights(*weights, dst_row, y);
  const at::Tensor gx = grad_x.contiguous(), yc = y.contiguous();
  at::Tensor grad_y = at::empty_like(yc);
  const auto w_opts = y.options().dtype(cpu_math_type(y));
  at::Tensor grad_w = need_grad_weights ? at::zeros({num_tokens, topk}, w_opts) : at::empty({0}, w_opts);
  const int32_t* pair = src_pair.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "unpermute_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor wc = weights.has_value() ? weights->to(w_opts.dtype()) : at::Tensor();
    const acc_t* w = wc.defined() ? wc.data_ptr<acc_t>() : nullptr;
    const scalar_t* g = gx.data_ptr<scalar_t>();
    const scalar_t* in = yc.data_ptr<scalar_t>();
    scalar_t* gy = grad_y.data_ptr<scalar_t>();
    for (int64_t r = 0; r < y.size(0); ++r) {
      const int64_t p = pair[r];
      if (p < 0) {
        for (int64_t d = 0; d < dim; ++d) gy[r * dim + d] = scalar_t(0);
        continue;
      }
      const int64_t n = p / topk;
      const acc_t wp = w != nullptr ? w[p] : acc_t(1);
      acc_t dot = 0;
      for (int64_t d = 0; d < dim; ++d) {
        gy[r * dim + d] = scalar_t(wp * acc_t(g[n * dim + d]));
        dot += acc_t(g[n * dim + d]) * acc_t(in[r * dim + d]);
      }
      if (need_grad_weights) grad_w.data_ptr<acc_t>()[p] = dot;
    }
  });
  return {grad_y, grad_w};
}

// grad_logits[n, memory_ids[n, j]] = w_j (g_j - sum_i w_i g_i) for kept slots (memory_ids >= 0), 0 elsewhere.
at::Tensor route_backward_cpu(const at::Tensor& grad_weights, const at::Tensor& weights, const at::Tensor& memory_ids,
                              int64_t num_memories, at::ScalarType dtype) {
  check_route_backward_args(grad_weights, weights, memory_ids, num_memories, dtype);
  const int64_t N = weights.size(0), k = weights.size(1);
  at::Tensor grad = at::zeros({N, num_memories}, weights.options());
  const int* ids = memory_ids.data_ptr<int>();
  const at::Tensor grad_w = grad_weights.contiguous();  // autograd may hand a column slice
  AT_DISPATCH_FLOATING_TYPES(weights.scalar_type(), "route_backward_cpu", [&] {
    const scalar_t* w = weights.data_ptr<scalar_t>();
    const scalar_t* g = grad_w.data_ptr<scalar_t>();
    scalar_t* out = grad.data_ptr<scalar_t>();
    for (int64_t n = 0; n < N; ++n) {
      scalar_t dot = 0;
      for (int64_t j = 0; j < k; ++j) dot += w[n * k + j] * g[n * k + j];
      for (int64_t j = 0; j < k; ++j) {
        const int m = ids[n * k + j];
        if (m >= 0 && m < num_memories) out[n * num_memories + m] = w[n * k + j] * (g[n * k + j] - dot);
      }
    }
  });
  return grad.to(dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(mom_ops, CPU, m) {
  m.impl("route", &route_cpu);
  m.impl("permute", &permute_cpu);
  m.impl("unpermute", &unpermute_cpu);
  m.impl("unpermute_backward", &unpermute_backward_cpu);
  m.impl("route_backward", &route_backward_cpu);
}

}  // namespace mom_ops
