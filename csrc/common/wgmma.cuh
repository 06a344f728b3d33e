// Warpgroup MMA (sm_90a wgmma.mma_async) on 16-bit operands in shared memory, fp32 accumulation, for tiles stored in
// the 128-byte swizzle: rows of 64 16-bit elements (128 bytes), 8-row atoms of 1 KB, the 16-byte chunk c of row r at
// chunk c ^ (r % 8) (common/sw128_layout.h). One such tile serves as either operand role:
//   K-major  (A [m][k], B [n][k] stored by rows of k):    element (mn, k) at row mn, column k
//   MN-major (A [k][m], B [k][n] stored by rows of m / n): element (mn, k) at row k,  column mn
// with MN <= 64 per instruction (one atom wide), so the descriptor needs only the 1 KB stride between 8-row atoms.
// An n32 B operand may start at column 32 of an MN-major tile (64 bytes into the row) or at row 32 of a K-major one.
// Accumulators (m64nN): warp w of the warpgroup holds rows 16 w .. 16 w + 15; per n8 tile j, d[j][0 .. 3] are
// the mma.sync C fragment ((g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1), g = lane / 4, t = lane % 4).
// Order: st.shared writes -> fence_async_smem() -> wgmma_fence() -> wgmma_* ... -> wgmma_commit() -> wgmma_wait<n>().
// scripts/wgmma_probe checks these layouts on the GPU and in the CPU emulator.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/mma.cuh"
#include "common/sw128_layout.h"
#include "common/sw64_layout.h"

namespace mom_ops {

// Descriptor of the operand whose (row 0, column 0) is at p: 128-byte swizzle, 1 KB between 8-row atoms (SBO),
// LBO unused (1). p may sit 32 * s bytes into a row (k-step s of a K-major operand: the swizzle applies to the
// address bits, so the hardware finds the chunks) or 1 KB * j into the tile (rows 8 j..).
__device__ __forceinline__ uint64_t sw128_desc(const void* p) {
  return sw128_desc_bits(smem_addr(p));
}

// The same for a tile in the 64-byte swizzle (common/sw64_layout.h: 32-column rows, 512 bytes between 8-row atoms):
// an MN-major operand at most 32 wide per instruction (one row), a K-major one of any row count (rows step by the
// 512-byte SBO); p may sit 32 * s bytes into a row (K-major k-step s) or 512 * j bytes into the tile.
__device__ __forceinline__ uint64_t sw64_desc(const void* p) {
  return sw64_desc_bits(smem_addr(p));
}

// Generic-proxy shared-memory writes (st.shared, cp.async landed) made visible to the async proxy that wgmma reads.
__device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// After wgmma_wait: ties the accumulators to this point, so that the compiler cannot move a read of them above the
// wait (whose asm names no registers; ptxas then serialises the wgmma, C7514). CUTLASS's warpgroup_fence_operand.
template <int kTiles>
__device__ __forceinline__ void wgmma_fence_acc(float (&d)[kTiles][4]) {
#pragma unroll
  for (int j = 0; j < kTiles; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[j][e])::"memory");
}

#define MOM_OPS_WGMMA_D4(j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define MOM_OPS_WGMMA_D8 MOM_OPS_WGMMA_D4(0), MOM_OPS_WGMMA_D4(1)
#define MOM_OPS_WGMMA_D16 MOM_OPS_WGMMA_D4(0), MOM_OPS_WGMMA_D4(1), MOM_OPS_WGMMA_D4(2), MOM_OPS_WGMMA_D4(3)
#define MOM_OPS_WGMMA_D32 MOM_OPS_WGMMA_D16, MOM_OPS_WGMMA_D4(4), MOM_OPS_WGMMA_D4(5), MOM_OPS_WGMMA_D4(6), \
                          MOM_OPS_WGMMA_D4(7)
#define MOM_OPS_WGMMA_IN "l"(desc_a), "l"(desc_b), "r"(int(accumulate)), "n"(int(kTransA)), "n"(int(kTransB))
// m64n16k16 / m64n32k16 / m64n64k16 for 16-bit operand type ab ("bf16" or "f16").
#define MOM_OPS_WGMMA_N16(ab)                                                                              \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"                                              \
               "wgmma.mma_async.sync.aligned.m64n16k16.f32." ab "." ab " "                                  \
               "{%0, %1, %2, %3, %4, %5, %6, %7}, "                                                       \
               "%8, %9, p, 1, 1, %11, %12;\n}\n"                                                          \
               : MOM_OPS_WGMMA_D8 : MOM_OPS_WGMMA_IN)
#define MOM_OPS_WGMMA_N32(ab)                                                                              \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"                                              \
               "wgmma.mma_async.sync.aligned.m64n32k16.f32." ab "." ab " "                                  \
               "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "                 \
               "%16, %17, p, 1, 1, %19, %20;\n}\n"                                                         \
               : MOM_OPS_WGMMA_D16 : MOM_OPS_WGMMA_IN)
#define MOM_OPS_WGMMA_N64(ab)                                                                              \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                              \
               "wgmma.mma_async.sync.aligned.m64n64k16.f32." ab "." ab " "                                  \
               "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                  \
               "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "       \
               "%32, %33, p, 1, 1, %35, %36;\n}\n"                                                         \
               : MOM_OPS_WGMMA_D32 : MOM_OPS_WGMMA_IN)

// d (+)= A B, m64 x kN x k16 (kN = 16, 32 or 64): d[j] is the accumulator fragment of n8 tile j (see above); accumulate
// = false overwrites d. kTransA / kTransB: the operand is MN-major.
template <typename T, int kN, bool kTransA, bool kTransB>
__device__ __forceinline__ void wgmma_m64k16(float (&d)[kN / 8][4], uint64_t desc_a, uint64_t desc_b,
                                             bool accumulate) {
  static_assert(sizeof(T) == 2, "16-bit operands");
  static_assert(kN == 16 || kN == 32 || kN == 64, "n16, n32 or n64");
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  if constexpr (kN == 16 && kBf16) {
    MOM_OPS_WGMMA_N16("bf16");
  } else if constexpr (kN == 16) {
    MOM_OPS_WGMMA_N16("f16");
  } else if constexpr (kN == 32 && kBf16) {
    MOM_OPS_WGMMA_N32("bf16");
  } else if constexpr (kN == 32) {
    MOM_OPS_WGMMA_N32("f16");
  } else if constexpr (kBf16) {
    MOM_OPS_WGMMA_N64("bf16");
  } else {
    MOM_OPS_WGMMA_N64("f16");
  }
}

// The A operand from registers ("RS"): a[4] holds the warp's 16 rows of the m64 x k16 A tile in the mma.sync A
// fragment layout ((g, 2t..), (g + 8, 2t..), (g, 2t + 8..), (g + 8, 2t + 8..), two 16-bit elements per register),
// so an accumulator's n8 tiles 2 s, 2 s + 1 turned to 16 bits (acc_to_a) are k-step s of the next product's A.
#define MOM_OPS_WGMMA_RS_IN \
  "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(int(accumulate)), "n"(int(kTransB))
#define MOM_OPS_WGMMA_RS_N64(ab)                                                                           \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                              \
               "wgmma.mma_async.sync.aligned.m64n64k16.f32." ab "." ab " "                                  \
               "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                  \
               "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "       \
               "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"                                           \
               : MOM_OPS_WGMMA_D32 : MOM_OPS_WGMMA_RS_IN)

// d (+)= A B, m64 x n64 x k16, A from registers (above), B from shared memory (MN-major when kTransB).
template <typename T, bool kTransB>
__device__ __forceinline__ void wgmma_m64n64k16_rs(float (&d)[8][4], const uint32_t (&a)[4], uint64_t desc_b,
                                                   bool accumulate) {
  static_assert(sizeof(T) == 2, "16-bit operands");
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    MOM_OPS_WGMMA_RS_N64("bf16");
  } else {
    MOM_OPS_WGMMA_RS_N64("f16");
  }
}

#undef MOM_OPS_WGMMA_RS_N64
#undef MOM_OPS_WGMMA_RS_IN
#undef MOM_OPS_WGMMA_N64
#undef MOM_OPS_WGMMA_N32
#undef MOM_OPS_WGMMA_N16
#undef MOM_OPS_WGMMA_IN
#undef MOM_OPS_WGMMA_D32
#undef MOM_OPS_WGMMA_D16
#undef MOM_OPS_WGMMA_D8
#undef MOM_OPS_WGMMA_D4

}  // namespace mom_ops
