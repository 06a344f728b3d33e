// Host stand-in for csrc/common/fast_math.cuh (its inline PTX has no host form): the exact sigmoid.
#pragma once

#include <cmath>

namespace mom_ops {

inline float fast_sigmoid(float z) { return 1.f / (1.f + std::exp(-z)); }

}  // namespace mom_ops
