// Argument checks of mom_decode_step, shared by the CPU and CUDA implementations.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/check.h"

namespace mom_ops {

struct DecodeDims {
  int64_t tokens, slots, heads_qk, heads_v, dim_k, dim_v, pool;
  bool q_per_slot;  // q [N, J, H, K] (one query per slot) rather than [N, H, K]
};

inline DecodeDims check_decode_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                                    const at::Tensor& beta, const at::Tensor& weights, const at::Tensor& slots,
                                    const at::Tensor& state_pool, bool state_v_first) {
  CHECK_DIM(k, 4);
  CHECK_DIM(v, 4);
  CHECK_DIM(state_pool, 4);
  TORCH_CHECK_VALUE(q.dim() == 3 || q.dim() == 4, "q must be [N, H, K] or [N, J, H, K], got ", q.dim(), " dims");
  CHECK_FLOATING(q);
  CHECK_SAME_DTYPE(k, q);
  CHECK_SAME_DTYPE(v, q);
  CHECK_FLOATING(g);
  CHECK_FLOATING(beta);
  DecodeDims d{k.size(0), k.size(1), k.size(2), v.size(2), k.size(3), v.size(3), state_pool.size(0), q.dim() == 4};
  if (d.q_per_slot) {
    CHECK_SHAPE(q, d.tokens, d.slots, d.heads_qk, d.dim_k);
  } else {
    CHECK_SHAPE(q, d.tokens, d.heads_qk, d.dim_k);
  }
  TORCH_CHECK_VALUE(v.size(0) == d.tokens && v.size(1) == d.slots, "v must have shape (", d.tokens, ", ", d.slots,
                    ", HV, V), got ", v.sizes());
  TORCH_CHECK_VALUE(d.heads_qk > 0 && d.heads_v % d.heads_qk == 0, "the number of value heads (", d.heads_v,
                    ") must be a multiple of the number of q/k heads (", d.heads_qk, ")");
  // (an empty value head or dim gave the CUDA kernel an empty grid: a launch error)
  TORCH_CHECK_VALUE(d.heads_v > 0 && d.dim_v > 0, "v must have at least one value head and a value dim V >= 1, got "
                    "shape ", v.sizes());
  CHECK_SHAPE(g, d.tokens, d.slots, d.heads_v);
  CHECK_SHAPE(beta, d.tokens, d.slots, d.heads_v);
  CHECK_SHAPE(weights, d.tokens, d.slots);
  CHECK_DTYPE(weights, at::kFloat);
  CHECK_SHAPE(slots, d.tokens, d.slots);
  CHECK_INDEX(slots);
  CHECK_DTYPE(state_pool, at::kFloat);
  CHECK_CONTIGUOUS(state_pool);
  if (state_v_first) {
    CHECK_SHAPE(state_pool, d.pool, d.heads_v, d.dim_v, d.dim_k);
  } else {
    CHECK_SHAPE(state_pool, d.pool, d.heads_v, d.dim_k, d.dim_v);
  }
  CHECK_DEVICE(k, q);
  CHECK_DEVICE(v, q);
  CHECK_DEVICE(g, q);
  CHECK_DEVICE(beta, q);
  CHECK_DEVICE(weights, q);
  CHECK_DEVICE(slots, q);
  CHECK_DEVICE(state_pool, q);
  return d;
}

}  // namespace mom_ops
