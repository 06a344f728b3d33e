// Argument checks of the gated-delta-rule ops, shared by the CPU and CUDA implementations.
// Messages follow fla's chunk_gated_delta_rule where it has one.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/check.h"
#include "common/cu_seqlens.h"

namespace mom_ops {

// Sizes of one scan call. Tokens are rows of the flattened [B * T] axis; sequence i covers rows
// [i * T, (i + 1) * T) without cu_seqlens, [cu[i], cu[i + 1]) with it (then B == 1).
struct GdnDims {
  int64_t batch, seqlen, heads_qk, heads_v, dim_k, dim_v, num_seqs;
};

inline GdnDims check_gdn_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                              const at::Tensor& beta, const std::optional<at::Tensor>& initial_state,
                              bool state_v_first, const std::optional<at::Tensor>& cu_seqlens,
                              const std::optional<at::Tensor>& chunk_indices) {
  CHECK_DIM(q, 4);
  CHECK_DIM(v, 4);
  CHECK_FLOATING(q);
  CHECK_SAME_DTYPE(k, q);
  CHECK_SAME_DTYPE(v, q);
  CHECK_FLOATING(g);
  CHECK_FLOATING(beta);
  GdnDims d{q.size(0), q.size(1), q.size(2), v.size(2), q.size(3), v.size(3), q.size(0)};
  CHECK_SHAPE(k, d.batch, d.seqlen, d.heads_qk, d.dim_k);
  TORCH_CHECK_VALUE(v.size(0) == d.batch && v.size(1) == d.seqlen, "v must have shape (", d.batch, ", ", d.seqlen,
                    ", HV, V) like q, got ", v.sizes());
  TORCH_CHECK_VALUE(d.heads_qk > 0 && d.heads_v % d.heads_qk == 0, "the number of value heads (", d.heads_v,
                    ") must be a multiple of the number of q/k heads (", d.heads_qk, ")");
  // (an empty value head or dim gave the CUDA kernels an empty grid: a launch error)
  TORCH_CHECK_VALUE(d.heads_v > 0 && d.dim_v > 0, "v must have at least one value head and a value dim V >= 1, got "
                    "shape ", v.sizes());
  CHECK_SHAPE(g, d.batch, d.seqlen, d.heads_v);
  CHECK_SHAPE(beta, d.batch, d.seqlen, d.heads_v);
  CHECK_DEVICE(k, q);
  CHECK_DEVICE(v, q);
  CHECK_DEVICE(g, q);
  CHECK_DEVICE(beta, q);
  if (cu_seqlens.has_value()) {
    TORCH_CHECK_VALUE(d.batch == 1, "The batch size is expected to be 1 rather than ", d.batch,
                      " when using `cu_seqlens`. Please flatten variable-length inputs before processing.");
    check_cu_seqlens(*cu_seqlens, q, d.seqlen, "cu_seqlens", /*allow_tail=*/true);
    d.num_seqs = cu_seqlens->size(0) - 1;
  }
  if (initial_state.has_value()) {
    const at::Tensor& h0 = *initial_state;
    TORCH_CHECK_VALUE(h0.scalar_type() == at::kFloat || (h0.scalar_type() == at::kDouble && q.scalar_type() == at::kDouble),
                      "initial_state must be float32 (float64 only with float64 inputs), got ", h0.scalar_type());
    TORCH_CHECK_VALUE(h0.device() == q.device(), "initial_state must be on ", q.device(), ", got ", h0.device());
    const std::vector<int64_t> expected = {d.num_seqs, d.heads_v, state_v_first ? d.dim_v : d.dim_k,
                                           state_v_first ? d.dim_k : d.dim_v};
    TORCH_CHECK_VALUE(h0.sizes() == at::IntArrayRef(expected), "initial_state must have shape ",
                      at::IntArrayRef(expected), state_v_first ? " (N, HV, V, K)" : " (N, HV, K, V)", ", got ",
                      h0.sizes());
  }
  if (chunk_indices.has_value()) {
    TORCH_CHECK_VALUE(cu_seqlens.has_value(), "chunk_indices needs cu_seqlens");
    TORCH_CHECK_VALUE(chunk_indices->dim() == 2 && chunk_indices->size(1) == 2,
                      "chunk_indices must have shape (num_chunks, 2), got ", chunk_indices->sizes());
    CHECK_INDEX(*chunk_indices);
    CHECK_DEVICE(*chunk_indices, q);
  }
  return d;
}

}  // namespace mom_ops
