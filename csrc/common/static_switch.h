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

// WIDTH_SWITCH(w, kW, [&] { ... }) for the short-conv widths 1..8 (segment_conv).
#define WIDTH_SWITCH(WIDTH, CONST_NAME, ...)                                         \
  [&] {                                                                              \
    switch (WIDTH) {                                                                 \
      case 1: { constexpr static int CONST_NAME = 1; return __VA_ARGS__(); }         \
      case 2: { constexpr static int CONST_NAME = 2; return __VA_ARGS__(); }         \
      case 3: { constexpr static int CONST_NAME = 3; return __VA_ARGS__(); }         \
      case 4: { constexpr static int CONST_NAME = 4; return __VA_ARGS__(); }         \
      case 5: { constexpr static int CONST_NAME = 5; return __VA_ARGS__(); }         \
      case 6: { constexpr static int CONST_NAME = 6; return __VA_ARGS__(); }         \
      case 7: { constexpr static int CONST_NAME = 7; return __VA_ARGS__(); }         \
      case 8: { constexpr static int CONST_NAME = 8; return __VA_ARGS__(); }         \
      default: TORCH_CHECK_VALUE(false, "conv width must be in [1, 8], got ", WIDTH); \
    }                                                                                \
  }()

// CHAIN_BV_SWITCH(bv, kBV, [&] { ... }) for the split chains' V-block widths (split_chain_value_block).
#define CHAIN_BV_SWITCH(BV, CONST_NAME, ...)                                          \
  [&] {                                                                               \
    switch (BV) {                                                                     \
      case 16: { constexpr static int CONST_NAME = 16; return __VA_ARGS__(); }        \
      case 32: { constexpr static int CONST_NAME = 32; return __VA_ARGS__(); }        \
      case 64: { constexpr static int CONST_NAME = 64; return __VA_ARGS__(); }        \
      default: TORCH_CHECK(false, "split chain V-block must be 16, 32 or 64, got ", BV); \
    }                                                                                 \
  }()
