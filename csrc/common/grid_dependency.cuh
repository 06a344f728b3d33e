// Two kernels of one stream that overlap (sm_90 programmatic dependent launch): the first calls launch_dependents()
// so that the second, launched with cudaLaunchAttributeProgrammaticStreamSerialization, may start while it runs; the
// second never waits for the whole first grid (griddepcontrol.wait) but for per-item counters in global memory that
// the first raises as it finishes items (release_add after a barrier over the item's writers; acquire_wait by one
// thread, then a barrier). Whatever the consumers after the second kernel read of the first one's output must be
// behind a counter the second kernel waited for.
#pragma once

#include <cstdint>

namespace mom_ops {

__device__ __forceinline__ void launch_dependents() {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}

// counter[i * stride] += 1 for i in [0, n) after every write that precedes the caller in this CTA's barrier order (a
// cumulative release: fence acq_rel at gpu scope, then relaxed reductions; lighter than __threadfence's fence.sc).
// The fence is the cost: it stalls the caller's warp until its memory operations are done, and the rest of its CTA
// at the next barrier, so several counters share one.
__device__ __forceinline__ void release_add_each(int* counter, int64_t stride, int n) {
  asm volatile("fence.acq_rel.gpu;\n" ::: "memory");
  for (int i = 0; i < n; ++i) {
    asm volatile("red.relaxed.gpu.global.add.s32 [%0], 1;\n" ::"l"(counter + i * stride) : "memory");
  }
}

// counter += 1, the same way.
__device__ __forceinline__ void release_add(int* counter) { release_add_each(counter, 0, 1); }

// Returns once counter >= target (acquire: the writes released before it are visible to this CTA after the caller's
// next barrier). Traps after 60 s of waiting (by the global timer) rather than hanging.
__device__ __forceinline__ void acquire_wait(const int* counter, int target) {
  uint64_t start = 0;
  for (bool first = true;; first = false) {
    int value;
    asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(value) : "l"(counter) : "memory");
    if (value >= target) return;
    uint64_t now;
    asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(now));
    if (first) start = now;
    if (now - start > 60ull * 1000 * 1000 * 1000) __trap();
    __nanosleep(256);
  }
}

}  // namespace mom_ops
