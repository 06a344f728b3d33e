// Checks of a cu_seqlens argument. Shape and dtype are checked everywhere; the values only where they can be
// read without a host sync (CPU tensors). CUDA kernels clamp bad values instead of reading out of bounds.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/check.h"

namespace mom_ops {

// cu_seqlens: [N+1] int32/int64, first 0, non-decreasing, last == total (or <= total when allow_tail).
inline void check_cu_seqlens(const at::Tensor& cu_seqlens, const at::Tensor& ref, int64_t total,
                             const char* name = "cu_seqlens", bool allow_tail = false) {
  TORCH_CHECK_VALUE(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 2, name,
                    " must be 1-D with at least 2 entries, got shape ", cu_seqlens.sizes());
  TORCH_CHECK_VALUE(cu_seqlens.scalar_type() == at::kInt || cu_seqlens.scalar_type() == at::kLong, name,
                    " must be int32 or int64, got ", cu_seqlens.scalar_type());
  TORCH_CHECK_VALUE(cu_seqlens.device() == ref.device(), name, " must be on ", ref.device(), ", got ",
                    cu_seqlens.device());
  if (!cu_seqlens.is_cpu()) return;
  const at::Tensor cu = cu_seqlens.to(at::kLong).contiguous();
  const int64_t* p = cu.data_ptr<int64_t>();
  const int64_t n = cu.size(0);
  TORCH_CHECK_VALUE(p[0] == 0, name, "[0] must be 0, got ", p[0]);
  for (int64_t i = 1; i < n; ++i) {
    TORCH_CHECK_VALUE(p[i] >= p[i - 1], name, " must be non-decreasing, got ", p[i - 1], " then ", p[i],
                      " at index ", i);
  }
  if (allow_tail) {
    TORCH_CHECK_VALUE(p[n - 1] <= total, name, "[-1] must be <= ", total, ", got ", p[n - 1]);
  } else {
    TORCH_CHECK_VALUE(p[n - 1] == total, name, "[-1] must equal the number of tokens ", total, ", got ", p[n - 1]);
  }
}

}  // namespace mom_ops
