// Named CTA barriers (bar.sync / bar.arrive with an id and a thread count, a multiple of 32): for kernels whose warps
// have different roles, where __syncthreads (barrier 0, all threads) would make every warp wait for every other.
// bar.arrive does not wait and orders the arriving thread's earlier memory operations (its completed cp.async
// copies included) before the reads of the threads that bar.sync on the same barrier.
#pragma once

namespace mom_ops {

__device__ __forceinline__ void named_bar_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

__device__ __forceinline__ void named_bar_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

}  // namespace mom_ops
