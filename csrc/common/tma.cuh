// Tensor-memory-accelerator loads (sm_90 cp.async.bulk.tensor) into shared memory, completed on an mbarrier. A tensor
// map (common/tma_host.h) describes the global tensor and the box one load copies; with CU_TENSOR_MAP_SWIZZLE_128B
// and a box 64 16-bit elements wide the box lands as one 128-byte-swizzled slab (Sw128Slabs, common/tile_layout.h),
// the layout wgmma reads. Elements outside the tensor land as zeros.
// Order: one thread mbarrier_init(bar, 1), fence_mbarrier_init(), __syncthreads(); per phase one thread
// mbarrier_expect_tx(bar, bytes of all its loads) and issues them; every reader mbarrier_wait(bar, phase % 2).
// Users: the split chains' q / k / W stages (gdn_split_kernels.cuh, gdn_bwd_split_kernels.cuh). scripts/tma_probe
// checks these on a GPU (mbarrier_arrive: compiled, not yet run there), scripts/gdn_emulate/run_tma.sh their emulator
// shim on the CPU.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "common/mma.cuh"

namespace mom_ops {

__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}

// Makes the initialised barrier visible to the async proxy (the TMA unit); a barrier follows.
__device__ __forceinline__ void fence_mbarrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// One arrival that also expects `bytes` of transfers to complete on the barrier before the phase ends.
__device__ __forceinline__ void mbarrier_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}

// One arrival (a consumer handing a buffer back to the thread that refills it).
__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}

// Waits until the barrier's phase with the given parity (0, 1, 0, ...) has completed.
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
  } while (!done);
}

// The box of `map` at coordinates (c0 innermost, c1, c2) -> dst (1024-byte aligned for the 128-byte swizzle);
// completes `bar`'s expected transfer bytes.
__device__ __forceinline__ void tma_load_3d(void* dst, const CUtensorMap* map, int c0, int c1, int c2, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
      "[%5];\n" ::"r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(smem_addr(bar))
      : "memory");
}

}  // namespace mom_ops
