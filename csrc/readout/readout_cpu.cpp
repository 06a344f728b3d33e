// CPU implementation of memory_mix (fwd, bwd) in fp32, as ATen expressions over the gathered rows.
//   o[n, h] = sum_j w[n, j] * o_routed[dst_row[n, j], h] + shared[n, h]
//   out = o * rstd * norm_weight * silu(gate),  rstd = rsqrt(mean_v(o^2) + eps)   (when norm_weight is given)
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/cpu_math.h"

#include "readout/readout_checks.h"

namespace mom_ops {
namespace {

// Gathered routed rows [N, k, H, V] in fp32 (zeros where dst_row < 0) and the mixed o [N, H, V].
std::pair<at::Tensor, at::Tensor> gather_and_mix(const at::Tensor& o_routed, const at::Tensor& dst_row,
                                                 const at::Tensor& weights, const std::optional<at::Tensor>& shared) {
  const at::ScalarType math = cpu_math_type(o_routed);
  const at::Tensor valid = dst_row.ge(0);
  const at::Tensor rows = at::where(valid, dst_row, at::zeros_like(dst_row)).to(at::kLong);
  at::Tensor gathered = o_routed.to(math).index_select(0, rows.flatten());
  gathered = gathered.view({dst_row.size(0), dst_row.size(1), o_routed.size(1), o_routed.size(2)});
  // where, not a product: a pair routed nowhere reads nothing (an inf / NaN in row 0 times 0 was NaN; CUDA skips it)
  const at::Tensor zero = at::zeros({}, gathered.options());
  gathered = at::where(valid.view({dst_row.size(0), dst_row.size(1), 1, 1}), gathered, zero);
  at::Tensor o = (gathered * weights.to(math).unsqueeze(-1).unsqueeze(-1)).sum(1);
  if (shared.has_value()) o = o + shared->to(math);
  return {gathered, o};
}

at::Tensor memory_mix_fwd_cpu(const at::Tensor& o_routed, const at::Tensor& dst_row, const at::Tensor& src_pair,
                              const at::Tensor& weights, const std::optional<at::Tensor>& shared,
                              const std::optional<at::Tensor>& norm_weight, const std::optional<at::Tensor>& gate,
                              double eps) {
  check_memory_mix_args(o_routed, dst_row, src_pair, weights, shared, norm_weight, gate, eps);
  check_plan_map_values(dst_row, src_pair, o_routed.size(0));
  at::Tensor o = gather_and_mix(o_routed, dst_row, weights, shared).second;
  if (norm_weight.has_value()) {
    o = o * at::rsqrt(o.square().mean(-1, true) + eps) * norm_weight->to(o.scalar_type());
    if (gate.has_value()) o = o * at::silu(gate->to(o.scalar_type()));
  }
  return o.to(o_routed.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> memory_mix_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& o_routed, const at::Tensor& dst_row, const at::Tensor& src_pair,
    const at::Tensor& weights, const std::optional<at::Tensor>& shared, const std::optional<at::Tensor>& norm_weight,
    const std::optional<at::Tensor>& gate, double eps) {
  const MixDims d = check_memory_mix_args(o_routed, dst_row, src_pair, weights, shared, norm_weight, gate, eps);
  check_plan_map_values(dst_row, src_pair, o_routed.size(0));
  CHECK_SHAPE(grad_out, d.tokens, d.heads, d.dim_v);
  const auto [gathered, o] = gather_and_mix(o_routed, dst_row, weights, shared);
  const at::Tensor dy = grad_out.to(o.scalar_type());
  // an output not asked for: an empty tensor of its own, as the CUDA op's (aliased outputs break the schema)
  const auto empty = [&] { return at::empty({0}, o.options().dtype(at::kFloat)); };
  at::Tensor do_ = dy, grad_norm_weight = empty(), grad_gate = empty();
  if (norm_weight.has_value()) {
    const at::Tensor rstd = at::rsqrt(o.square().mean(-1, true) + eps);
    const at::Tensor xhat = o * rstd, w = norm_weight->to(o.scalar_type());
    at::Tensor act = at::ones_like(xhat);
    if (gate.has_value()) {
      const at::Tensor z = gate->to(o.scalar_type()), s = at::sigmoid(z);
      act = z * s;
      grad_gate = (dy * xhat * w * s * (1 + z * (1 - s))).to(gate->scalar_type());
    }
    grad_norm_weight = (dy * xhat * act).sum(at::IntArrayRef{0, 1}).to(norm_weight->scalar_type());
    const at::Tensor dxhat = dy * w * act;
    do_ = rstd * (dxhat - xhat * (dxhat * xhat).mean(-1, true));
  }
  // Each used row r has exactly one pair p = src_pair[r]: grad_o_routed[r] = w[p] * do[p // k].
  const at::Tensor valid = src_pair.ge(0);
  const at::Tensor pairs = at::where(valid, src_pair, at::zeros_like(src_pair)).to(at::kLong);
  const at::Tensor token = at::floor_divide(pairs, d.topk);
  const at::Tensor row_scale = weights.to(o.scalar_type()).flatten().index_select(0, pairs);
  // unused rows get 0, not 0 * (a NaN in token 0's gradient)
  const at::Tensor scaled = do_.index_select(0, token) * row_scale.view({-1, 1, 1});
  const at::Tensor grad_o_routed = at::where(valid.view({-1, 1, 1}), scaled, at::zeros({}, do_.options()));
  const at::Tensor grad_weights = (gathered * do_.unsqueeze(1)).sum(at::IntArrayRef{2, 3}).to(weights.scalar_type());
  const at::Tensor grad_shared = shared.has_value() ? do_.to(shared->scalar_type()) : empty();
  // contiguous, as the CUDA op's (the elementwise results above follow their inputs' strides)
  return {grad_o_routed.to(o_routed.scalar_type()).contiguous(), grad_weights.contiguous(), grad_shared.contiguous(),
          grad_norm_weight.contiguous(), grad_gate.contiguous()};
}

}  // namespace

TORCH_LIBRARY_IMPL(mom_ops, CPU, m) {
  m.impl("memory_mix_fwd", &memory_mix_fwd_cpu);
  m.impl("memory_mix_bwd", &memory_mix_bwd_cpu);
}

}  // namespace mom_ops
