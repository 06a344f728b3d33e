// Shim of csrc/common/bulk_copy.cuh: mbarriers with a transfer count and bulk copies that land late (when a thread
// first waits on their barrier) or, with eager copies, at issue. Checks alignment, bounds, a phase completing only
// after its arrival and all its bytes, waits on a barrier that was never initialised, and copies left pending.
#pragma once
#include <cstdint>
#include "common/mma.cuh"
namespace mom_ops {
inline void mbarrier_init(uint64_t* bar) {
  if (reinterpret_cast<uintptr_t>(bar) % 8 != 0 || !emu::in_smem(bar, 8)) EMU_FAIL("mbarrier %p not 8B in smem", bar);
  emu::g_mbarriers[bar] = emu::MBarrier{};
}
inline void mbarrier_init_fence() {}
inline void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  auto& b = emu::mbarrier(bar);
  if (b.pending <= 0) EMU_FAIL("mbarrier %p: arrival beyond the expected count", bar);
  b.tx += bytes;
  --b.pending;
  emu::mbarrier_try_complete(b);
}
inline void mbarrier_wait(uint64_t* bar, uint32_t parity) {
  for (;;) {
    auto& b = emu::mbarrier(bar);
    if (b.pending == 0) emu::mbarrier_land(b), emu::mbarrier_try_complete(b);  // armed: its copies land now
    if ((b.phase & 1u) != parity) return;
    emu::yield();
  }
}
inline void bulk_copy_g2s(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  if (bytes == 0 || bytes % 16 != 0) EMU_FAIL("bulk copy of %u bytes", bytes);
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || !emu::in_smem(dst, int(bytes))) EMU_FAIL("bulk copy dst %p", dst);
  if (reinterpret_cast<uintptr_t>(src) % 16 != 0 || !emu::in_global(src, int(bytes))) EMU_FAIL("bulk copy src %p", src);
  auto& b = emu::mbarrier(bar);
  if (emu::g_eager) {
    std::memcpy(dst, src, bytes);
    b.tx -= bytes;
    emu::mbarrier_try_complete(b);
  } else {
    b.copies.push_back({{dst, src}, bytes});
  }
}
}  // namespace mom_ops
