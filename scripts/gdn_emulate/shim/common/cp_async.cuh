// Shim of csrc/common/cp_async.cuh: deferred (at wait_group) or eager 16-byte copies.
#pragma once
#include <cstdint>
#include "common/mma.cuh"
namespace mom_ops {
inline void cp_async16(void* dst, const void* src, bool valid) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || !emu::in_smem(dst, 16)) EMU_FAIL("cp.async dst %p not 16B in smem", dst);
  if (valid && (reinterpret_cast<uintptr_t>(src) % 16 != 0 || !emu::in_global(src, 16)))
    EMU_FAIL("cp.async src %p misaligned or outside buffers", src);
  emu::Copy c{dst, src, valid};
  if (emu::g_eager) emu::do_copy(c); else emu::g_cur->open.push_back(c);
}
inline void cp_async_commit() { emu::g_cur->groups.push_back(std::move(emu::g_cur->open)); emu::g_cur->open.clear(); }
template <int kPending> inline void cp_async_wait() {
  auto& gs = emu::g_cur->groups;
  while (int(gs.size()) > kPending) { for (auto& c : gs.front()) emu::do_copy(c); gs.pop_front(); }
}
}  // namespace mom_ops
