// The 64-byte-swizzled layout of 16-bit tiles of at most 32 columns that wgmma reads (common/wgmma.cuh), shared by
// the device code and the CPU emulator's wgmma shim: rows of 32 elements (64 bytes), 8-row atoms of 512 bytes, the
// 16-byte chunk c of row r at chunk c ^ ((r / 2) % 4) (the byte offset's bits 4-5 ^= bits 7-8), tile bases 512-byte
// aligned. For tiles whose rows are 64 bytes (a 32-column V-block), where the 128-byte swizzle would need them padded
// to 128: the K = 256 grads kernel's V-block tiles. scripts/wgmma_probe checks it on the GPU.
#pragma once

#include <cstdint>

namespace mom_ops {

// Element index of (row r, column c) in such a tile.
__host__ __device__ constexpr int sw64_index(int r, int c) {
  return r * 32 + ((((c >> 3) ^ ((r >> 1) & 3)) << 3) | (c & 7));
}

// The wgmma descriptor of an operand at shared-memory byte address addr: 64-byte swizzle (bits 62-63 = 2), 512 bytes
// between 8-row atoms (SBO, bits 32-45, in 16-byte units), LBO unused (1), start address in 16-byte units (bits 0-13).
__host__ __device__ constexpr uint64_t sw64_desc_bits(uint64_t addr) {
  return ((addr & 0x3FFFF) >> 4) | (uint64_t(1) << 16) | (uint64_t(512 >> 4) << 32) | (uint64_t(2) << 62);
}

}  // namespace mom_ops
