// The 128-byte-swizzled layout of 16-bit tiles that wgmma reads (common/wgmma.cuh), shared by the device code and the
// CPU emulator's wgmma shim: rows of 64 elements (128 bytes), 8-row atoms of 1 KB, the 16-byte chunk c of row r at
// chunk c ^ (r % 8), tile bases 1024-byte aligned.
#pragma once

#include <cstdint>

namespace mom_ops {

// Element index of (row r, column c) in such a tile.
__host__ __device__ constexpr int sw128_index(int r, int c) { return r * 64 + ((((c >> 3) ^ (r & 7)) << 3) | (c & 7)); }

// The wgmma descriptor of an operand at shared-memory byte address addr: 128-byte swizzle (bits 62-63 = 1), 1 KB
// between 8-row atoms (SBO, bits 32-45, in 16-byte units), LBO unused (1), start address in 16-byte units (bits 0-13).
__host__ __device__ constexpr uint64_t sw128_desc_bits(uint64_t addr) {
  return ((addr & 0x3FFFF) >> 4) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 62);
}

}  // namespace mom_ops
