// Two kernels of one stream that overlap (sm_90 programmatic dependent launch): the first calls launch_dependents()
// so that the second, launched with cudaLaunchAttributeProgrammaticStreamSerialization, may start while it runs; the
// second never waits for the whole first grid (griddepcontrol.wait) but for per-item counters in global memory that
// the first raises as it finishes items (release_add after a barrier over the item's writers; acquire_wait by one
// thread, then a barrier). Whatever the consumers after the second kernel read of the first one's output must be
// behind a counter the second kernel waited for.
#pragma once

namespace mom_ops {

__device__ __forceinline__ void launch_dependents() {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}

// counter += 1 after every write that precedes the caller in this CTA's barrier order (cumulative release).
__device__ __forceinline__ void release_add(int* counter) {
  __threadfence();
  atomicAdd(counter, 1);
}

// Returns once counter >= target (acquire: the writes released before it are visible to this CTA after the caller's
// next barrier). Traps after ~17 s rather than hanging.
__device__ __forceinline__ void acquire_wait(const int* counter, int target) {
  for (long long spin = 0;; ++spin) {
    int value;
    asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(value) : "l"(counter) : "memory");
    if (value >= target) return;
    if (spin > (1ll << 26)) __trap();
    __nanosleep(256);
  }
}

}  // namespace mom_ops
