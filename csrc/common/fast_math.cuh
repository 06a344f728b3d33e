// Approximate fp32 math for element-wise epilogues whose outputs are rounded to 16 bits anyway.
#pragma once

namespace mom_ops {

// 1 / (1 + 2^(-z log2 e)) with the approximate ex2 and rcp, flushing denormals: __expf's and __fdividef's range
// handling cost ~4 extra instructions per element. Relative error ~1e-7; 0 for z below ~-88 (1 + e^-z = inf) and
// 1 for large z, NaN for NaN.
__device__ __forceinline__ float fast_sigmoid(float z) {
  float e, r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(z * -1.4426950408889634f));
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(1.f + e));
  return r;
}

}  // namespace mom_ops
