// Shim of csrc/common/stmatrix.cuh: stmatrix .x4 [.trans] emulated per warp (lanes 8 i .. 8 i + 7 address the rows
// of matrix i; every lane writes its own elements).
#pragma once
#include <cuda_runtime.h>
#include <cstdint>
namespace mom_ops {
namespace detail {
inline void stmatrix_x4(bool trans, const uint32_t (&r)[4], void* row) {
  auto& w = emu::warp(); const int l = emu::lane();
  w.addr[l] = row;
  emu::enter(w, 30 + trans);
  for (int i = 0; i < 32; ++i)
    if (reinterpret_cast<uintptr_t>(w.addr[i]) % 16 != 0 || !emu::in_smem(w.addr[i], 16))
      EMU_FAIL("stmatrix row address %p (lane %d) misaligned or outside smem", w.addr[i], i);
  for (int i = 0; i < 4; ++i)
    for (int e = 0; e < 2; ++e) {
      const uint16_t x = uint16_t(r[i] >> (16 * e));
      const int row_in = l / 4, col_in = 2 * (l % 4) + e;  // the element's place in matrix i
      auto* dst = static_cast<uint16_t*>(const_cast<void*>(w.addr[8 * i + (trans ? col_in : row_in)]));
      dst[trans ? row_in : col_in] = x;
    }
  emu::leave(w);
}
}  // namespace detail
inline void store_matrix_x4(const uint32_t (&r)[4], void* row) { detail::stmatrix_x4(false, r, row); }
inline void store_matrix_x4_trans(const uint32_t (&r)[4], void* row) { detail::stmatrix_x4(true, r, row); }
}  // namespace mom_ops
