// Tensors for kernels that read whole 16-byte vectors.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace mom_ops {

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// A contiguous tensor whose data starts 16-byte aligned: t itself when it is one, else a copy (a view with a
// storage offset, e.g. a slice of a larger buffer, may start anywhere).
inline at::Tensor contiguous_aligned16(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return aligned16(c.data_ptr()) ? c : c.clone();
}

}  // namespace mom_ops
