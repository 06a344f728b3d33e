// Runtime choices -> template parameters (after flash-attention's static_switch.h).
// Usage: BOOL_SWITCH(flag, kFlag, [&] { run<kFlag>(params); });
#pragma once

#include <c10/util/Exception.h>

#define BOOL_SWITCH(COND, CONST_NAME, ...)      \
  [&] {                                         \
    if (COND) {                                 \
      constexpr static bool CONST_NAME = true;  \
      return __VA_ARGS__();                     \
    } else {                                    \
      constexpr static bool CONST_NAME = false; \
      return __VA_ARGS__();                     \
    }                                           \
  }()

// FLOAT_SWITCH(dtype, elem_t, [&] { ... }) for the three input dtypes the kernels take.
#define FLOAT_SWITCH(DTYPE, TYPE_NAME, ...)                                      \
  [&] {                                                                          \
    if ((DTYPE) == at::kBFloat16) {                                              \
      using TYPE_NAME = at::BFloat16;                                            \
      return __VA_ARGS__();                                                      \
    } else if ((DTYPE) == at::kHalf) {                                           \
      using TYPE_NAME = at::Half;                                                \
      return __VA_ARGS__();                                                      \
    } else if ((DTYPE) == at::kFloat) {                                          \
      using TYPE_NAME = float;                                                   \
      return __VA_ARGS__();                                                      \
    } else {                                                                     \
      TORCH_CHECK_VALUE(false, "unsupported dtype ", (DTYPE));                   \
    }                                                                            \
  }()

// HEADDIM_SWITCH(d, kD, [&] { ... }) for the head dims with compiled kernels.
#define HEADDIM_SWITCH(HEADDIM, CONST_NAME, ...)                                 \
  [&] {                                                                          \
    if ((HEADDIM) == 64) {                                                       \
      constexpr static int CONST_NAME = 64;                                      \
      return __VA_ARGS__();                                                      \
    } else if ((HEADDIM) == 128) {                                               \
      constexpr static int CONST_NAME = 128;                                     \
      return __VA_ARGS__();                                                      \
    } else if ((HEADDIM) == 256) {                                               \
      constexpr static int CONST_NAME = 256;                                     \
      return __VA_ARGS__();                                                      \
    } else {                                                                     \
      TORCH_CHECK_VALUE(false, "head dim must be 64, 128 or 256, got ", HEADDIM); \
    }                                                                            \
  }()
