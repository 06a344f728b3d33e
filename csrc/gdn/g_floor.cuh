// The floor every gdn kernel reads g through (the chunked kernels and the pieces' plan; the decode step and the CPU op
// run the recurrence itself, which needs none).
#pragma once

namespace mom_ops {

// g below -110 acts as g = -inf does for fp32 (e^-110 == 0, so every decay over an interval that holds the step is 0
// either way), but keeps G = cumsum(g) finite. g = -inf made G_i - G_j and G_last - G_i into -inf + inf = NaN (and
// the scan's incl - pair a NaN G even before the step); g ~ -1e9 or torch.finfo(float32).min (masked_fill's usual
// fill) absorbed the other g of the chunk into G (decays of 1 after the step, and the prefix lost by incl - pair
// before it). A NaN stays NaN.
constexpr float kGdnGFloor = -110.f;
__host__ __device__ __forceinline__ float gdn_floor_g(float g) { return g < kGdnGFloor ? kGdnGFloor : g; }

}  // namespace mom_ops
