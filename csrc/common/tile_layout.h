// Where element (r, c) of a 16-bit shared-memory tile lives, for code that serves tiles of either layout.
#pragma once

#include "common/sw128_layout.h"
#include "common/sw64_layout.h"

namespace mom_ops {

// Rows of kLd elements (the tile's columns plus padding against bank conflicts), what ldmatrix / mma.sync read.
template <int kLd>
struct PaddedRows {
  static __host__ __device__ constexpr int at(int r, int c) { return r * kLd + c; }
};

// 64-column slabs of kSlabRows rows each, every slab in the 128-byte swizzle (common/sw128_layout.h): wgmma's
// operand layout (common/wgmma.cuh). Tiles of at most 64 columns are one slab of any row count.
template <int kSlabRows>
struct Sw128Slabs {
  static __host__ __device__ constexpr int at(int r, int c) {
    return (c / 64) * (kSlabRows * 64) + sw128_index(r, c % 64);
  }
};

// Rows of 32 columns in the 64-byte swizzle (common/sw64_layout.h): wgmma's operand layout for 32-column tiles.
struct Sw64Rows {
  static __host__ __device__ constexpr int at(int r, int c) { return sw64_index(r, c); }
};

}  // namespace mom_ops
