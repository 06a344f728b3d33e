// Argument checks of the routing ops, shared by the CPU and CUDA implementations.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/check.h"
#include "common/cu_seqlens.h"

namespace mom_ops {

inline void check_route_args(const at::Tensor& router_logits, int64_t topk, int64_t batch_size,
                             const std::optional<at::Tensor>& cu_seqlens, const std::optional<at::Tensor>& token_mask,
                             int64_t chunk_size) {
  CHECK_DIM(router_logits, 2);
  CHECK_FLOATING(router_logits);
  const int64_t num_tokens = router_logits.size(0), num_memories = router_logits.size(1);
  TORCH_CHECK_VALUE(num_memories >= 1, "router_logits must have at least one memory column");
  TORCH_CHECK_VALUE(topk >= 1 && topk <= num_memories, "topk must be in [1, num_memories=", num_memories,
                    "], got ", topk);
  TORCH_CHECK_VALUE(batch_size >= 1, "batch_size must be >= 1, got ", batch_size);
  TORCH_CHECK_VALUE(batch_size < ((int64_t(1) << 31) - 1) / num_memories, "batch_size (", batch_size,
                    ") x num_memories (", num_memories, ") segments must fit in int32");
  TORCH_CHECK_VALUE(chunk_size >= 1, "chunk_size must be >= 1, got ", chunk_size);
  TORCH_CHECK_VALUE(num_tokens * topk < (int64_t(1) << 31), "router_logits has too many tokens (", num_tokens,
                    " x topk ", topk, " rows must fit in int32)");
  if (cu_seqlens.has_value()) {
    check_cu_seqlens(*cu_seqlens, router_logits, num_tokens);
    TORCH_CHECK_VALUE(cu_seqlens->size(0) == batch_size + 1, "cu_seqlens must have batch_size + 1 = ",
                      batch_size + 1, " entries, got ", cu_seqlens->size(0));
  } else {
    TORCH_CHECK_VALUE(num_tokens % batch_size == 0, "router_logits rows (", num_tokens,
                      ") must be a multiple of batch_size (", batch_size, ") when cu_seqlens is None");
  }
  if (token_mask.has_value()) {
    CHECK_SHAPE(*token_mask, num_tokens);
    CHECK_DTYPE(*token_mask, at::kBool);
    CHECK_DEVICE(*token_mask, router_logits);
  }
}

// The plan's two index maps: dst_row [N, k] and src_pair [N * k], int32, on ref's device.
inline void check_plan_maps(const at::Tensor& dst_row, const at::Tensor& src_pair, const at::Tensor& ref) {
  CHECK_DIM(dst_row, 2);
  CHECK_DTYPE(dst_row, at::kInt);
  CHECK_DEVICE(dst_row, ref);
  CHECK_CONTIGUOUS(dst_row);
  CHECK_SHAPE(src_pair, dst_row.numel());
  CHECK_DTYPE(src_pair, at::kInt);
  CHECK_DEVICE(src_pair, ref);
  CHECK_CONTIGUOUS(src_pair);
}

// The plan's maps for x [N, D], one row per token of the plan (permute's input).
inline void check_plan_tokens(const at::Tensor& x, const at::Tensor& dst_row, const at::Tensor& src_pair) {
  check_plan_maps(dst_row, src_pair, x);
  TORCH_CHECK_VALUE(x.size(0) == dst_row.size(0), "x must have one row per token of the plan (", dst_row.size(0),
                    "), got ", x.size(0));
}

// CPU only (reads the maps; on CUDA that would be a host sync, so the kernels trust the plan as torch's index ops
// do): every dst_row entry is -1 or a row < num_rows, every src_pair entry is -1 or a pair < dst_row.numel().
inline void check_plan_map_values(const at::Tensor& dst_row, const at::Tensor& src_pair, int64_t num_rows) {
  const int32_t* row = dst_row.data_ptr<int32_t>();
  for (int64_t i = 0; i < dst_row.numel(); ++i)
    TORCH_CHECK_VALUE(row[i] >= -1 && row[i] < num_rows, "dst_row[", i / dst_row.size(1), ", ", i % dst_row.size(1),
                      "] = ", row[i], " is out of range: must be -1 or a row in [0, ", num_rows, ")");
  const int32_t* pair = src_pair.data_ptr<int32_t>();
  for (int64_t i = 0; i < src_pair.numel(); ++i)
    TORCH_CHECK_VALUE(pair[i] >= -1 && pair[i] < dst_row.numel(), "src_pair[", i, "] = ", pair[i],
                      " is out of range: must be -1 or a (token, slot) pair in [0, ", dst_row.numel(), ")");
}

// Router weights [N, k]: fp32, or fp64 with fp64 data (CPU gradcheck).
inline void check_weights(const at::Tensor& weights, const at::Tensor& dst_row_like, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(weights.sizes() == dst_row_like.sizes(), "weights must have shape ", dst_row_like.sizes(),
                    " (tokens, topk), got ", weights.sizes());
  TORCH_CHECK_VALUE(weights.scalar_type() == at::kFloat ||
                        (weights.scalar_type() == at::kDouble && ref.scalar_type() == at::kDouble),
                    "weights must be float32, got ", weights.scalar_type());
  CHECK_DEVICE(weights, ref);
  CHECK_CONTIGUOUS(weights);
}

// route_backward's inputs: weights and grad_weights [N, k] fp32 (fp64 on CPU), memory_ids [N, k] int32, all on one
// device, contiguous; k <= num_memories; dtype a floating type.
inline void check_route_backward_args(const at::Tensor& grad_weights, const at::Tensor& weights,
                                      const at::Tensor& memory_ids, int64_t num_memories, at::ScalarType dtype) {
  CHECK_DIM(memory_ids, 2);
  CHECK_DTYPE(memory_ids, at::kInt);
  CHECK_CONTIGUOUS(memory_ids);
  check_weights(weights, memory_ids, weights);
  CHECK_SHAPE(grad_weights, weights.size(0), weights.size(1));
  CHECK_SAME_DTYPE(grad_weights, weights);
  CHECK_DEVICE(grad_weights, weights);
  CHECK_DEVICE(memory_ids, weights);
  TORCH_CHECK_VALUE(num_memories >= weights.size(1), "num_memories (", num_memories,
                    ") must be at least topk = weights.shape[1] (", weights.size(1), ")");
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kDouble,
                    "dtype must be a floating type, got ", dtype);
}

// Upper bound on the number of chunks over all segments: sum ceil(L_s / C) <= floor(R / C) + S.
inline int64_t max_chunks(int64_t rows, int64_t segments, int64_t chunk_size) {
  return rows / chunk_size + segments;
}

}  // namespace mom_ops
