// L2 prefetch of a byte range by one thread (sm_90's bulk prefetch): no registers held, no completion to wait for.
// Streaming kernels that keep only a chunk or two of rows in registers use it to have more bytes in flight.
#pragma once

#include <cstdint>

namespace mom_ops {

// Prefetches [p, p + bytes) into L2 in 16-byte granules (the instruction's): the start rounded down (allocations
// start 16-byte aligned), the end rounded down too, so that no byte past p + bytes is touched (a prefetch may miss
// a few; it changes no value). A no-op before sm_90.
__device__ __forceinline__ void prefetch_l2_bulk(const void* p, int bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const uint64_t a = reinterpret_cast<uint64_t>(p), start = a & ~uint64_t(15);
  const uint64_t end = (a + uint64_t(bytes)) & ~uint64_t(15);
  if (end > start) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(start), "r"(uint32_t(end - start)));
  }
#endif
}

}  // namespace mom_ops
