// cp.async of a tile of rows from global memory into a shared-memory layout, with one address computation per
// thread and constant steps after it (per-copy 64-bit index math cost ~28 instructions per 16-byte copy).
#pragma once

#include <cstdint>

#include "common/cp_async.cuh"

namespace mom_ops {

// dst (laid out as Rows: PaddedRows or Sw128Slabs, common/tile_layout.h) rows r < kRows, 16-bit columns 0 .. kCols - 1
// <- src_row0 + r * src_stride (elements) for r < len, zeros for the rows past len (their source not read). All
// kThreads threads call it; no commit. Thread tid copies the 16-byte column chunk tid % (kCols / 8) of rows
// tid / (kCols / 8) + kStep i: rows kStep apart (a multiple of 8) sit Rows::at(kStep, 0) apart in both layouts.
template <int kRows, int kCols, typename Rows, int kThreads, typename T>
__device__ __forceinline__ void copy_rows_async(T* dst, const T* src_row0, int64_t src_stride, int len, int tid) {
  constexpr int kChunks = kCols / 8, kStep = kThreads / kChunks;
  static_assert(kCols % 8 == 0 && kThreads % kChunks == 0 && kStep % 8 == 0, "copy shape");
  static_assert(kRows % kStep == 0 || kStep % kRows == 0, "rows: a multiple or a divisor of the rows per step");
  const int r = tid / kChunks, c = (tid % kChunks) * 8;
  if constexpr (kStep > kRows) {  // more threads than chunks: the last ones copy nothing
    if (r >= kRows) return;
  }
  T* to = dst + Rows::at(r, c);
  const T* from = src_row0 + int64_t(r) * src_stride + c;
  const int64_t from_step = int64_t(kStep) * src_stride;
#pragma unroll
  for (int i = 0; i < (kRows + kStep - 1) / kStep; ++i) {
    const bool valid = r + kStep * i < len;
    cp_async16(to + i * Rows::at(kStep, 0), valid ? from : src_row0, valid);
    from += from_step;
  }
}

}  // namespace mom_ops
