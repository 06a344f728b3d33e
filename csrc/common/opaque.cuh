// A value the compiler cannot see through.
#pragma once

namespace mom_ops {

// x, as the compiler cannot see it: addresses derived from it are formed where it is taken (per loop iteration)
// instead of hoisted out of the loop, where they can outlive the registers and be spilled.
__device__ __forceinline__ int opaque(int x) {
  asm volatile("" : "+r"(x));
  return x;
}

}  // namespace mom_ops
