// Bulk asynchronous global -> shared copies (sm_90: cp.async.bulk, the TMA unit's 1D form) completing on a
// shared-memory mbarrier, so that one thread moves whole rows and the other warps issue no copy instructions.
// Pattern: one thread arms the barrier with the bytes it expects, bulk copies (16-byte multiples, 16-byte aligned)
// deliver them, and every consumer waits for the barrier's phase to flip (phase parity 0, 1, 0, ... per use).
#pragma once

#include <cstdint>

#include "common/mma.cuh"

namespace mom_ops {

// The barrier at `bar` expects one arrival per phase (the arming thread's).
__device__ __forceinline__ void mbarrier_init(uint64_t* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(smem_addr(bar)));
}

// Makes the initialised barriers visible to the bulk-copy unit (then a __syncthreads for the other threads).
__device__ __forceinline__ void mbarrier_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }

// Arrives on `bar` and adds `bytes` to the transfer count its current phase waits for.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}

// Blocks until the phase of `bar` with parity `parity` has completed.
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}

// bytes (a multiple of 16) from global src to shared dst (both 16-byte aligned), counted on `bar`.
__device__ __forceinline__ void bulk_copy_g2s(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                   smem_addr(dst)),
               "l"(src), "r"(bytes), "r"(smem_addr(bar))
               : "memory");
}

}  // namespace mom_ops
