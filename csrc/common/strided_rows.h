// 2-D inputs read in place at their row stride (column slices of a wider tensor: the layer's projection rows), for
// the bindings whose kernels take a row stride and need only the last dim dense.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace mom_ops {

// t itself when its last dim is dense (or has at most one element), else a contiguous copy.
inline at::Tensor dense_last_dim(const at::Tensor& t) {
  return t.size(-1) <= 1 || t.stride(-1) == 1 ? t : t.contiguous();
}

// Elements between the rows of a 2-D t with a dense last dim; a single row counts as packed (size(1) apart).
inline int64_t row_stride(const at::Tensor& t) { return t.size(0) > 1 ? t.stride(0) : t.size(1); }

}  // namespace mom_ops
