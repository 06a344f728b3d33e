// Register reallocation between warpgroups (sm_90a setmaxnreg): a warp-specialised kernel launched with R registers
// per thread lets one warpgroup give registers back (dec) so that others can take more (inc); every warp of a
// warpgroup executes the same one, and the totals must fit the SM's register file.
#pragma once

namespace mom_ops {

template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

}  // namespace mom_ops
