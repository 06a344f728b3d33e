// Fragment stores to shared memory (sm_90 stmatrix), the inverse of ldmatrix .x4: register i of every lane holds two
// 16-bit elements of 8 x 8 matrix i, row lane / 4, columns 2 (lane % 4) and + 1 (an mma / wgmma accumulator's n8
// tile, packed); lane 8 i + r gives the 16-byte-aligned shared address of matrix i's row r. With .trans each matrix
// lands transposed (its element (row, column) in memory row `column`, column `row`). One instruction replaces eight
// 32-bit (four transposed: sixteen 16-bit) stores per lane, and needs one address register per lane.
#pragma once

#include <cstdint>

namespace mom_ops {

__device__ __forceinline__ void store_matrix_x4(const uint32_t (&r)[4], void* row) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r[0]),
               "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
}

__device__ __forceinline__ void store_matrix_x4_trans(const uint32_t (&r)[4], void* row) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r[0]),
               "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
}

}  // namespace mom_ops
