// Shim of csrc/common/tma.cuh: mbarriers and TMA box loads. A barrier's state lives beside the emulator (keyed by its
// shared-memory address, reset per block); a load reads its box at issue (16-bit elements, zeros outside the
// tensor), swizzled as the map says, and lands in shared memory when a thread first waits on the barrier (or at
// issue with EMU_TMA_EAGER=1: a buffer refilled while still read shows up then), completing its bytes on the barrier.
#pragma once
#include <cuda.h>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <vector>
#include "common/mma.cuh"
#include "common/tma_host.h"
namespace emu {
inline void check_mbarrier_address(const void* bar) {
  if (reinterpret_cast<uintptr_t>(bar) % 8 != 0 || !in_smem(bar, 8)) EMU_FAIL("mbarrier %p not 8B in smem", bar);
}
inline MBarrier& mbarrier_at(const void* bar) {
  check_mbarrier_address(bar);
  auto it = g_mbarriers.find(bar);
  if (it == g_mbarriers.end() || it->second.count == 0) EMU_FAIL("mbarrier %p used before mbarrier_init", bar);
  return it->second;
}
inline void mbarrier_settle(MBarrier& m) {
  if (m.pending == 0 && m.tx == 0) {
    ++m.phases, m.pending = m.count, ++g_progress;
  }
}
inline void tma_land(MBarrier& m) {
  for (auto& l : m.landings) {
    std::memcpy(l.dst, l.bytes.data(), l.bytes.size());
    m.tx -= int64_t(l.bytes.size());
  }
  m.landings.clear();
  if (m.tx < 0) EMU_FAIL("mbarrier: more bytes landed than expected");
  mbarrier_settle(m);
}
inline bool tma_eager() {
  static const bool eager = std::getenv("EMU_TMA_EAGER") && std::strcmp(std::getenv("EMU_TMA_EAGER"), "1") == 0;
  return eager;
}
}  // namespace emu
namespace mom_ops {
inline void mbarrier_init(uint64_t* bar, uint32_t count) {
  if (count == 0) EMU_FAIL("mbarrier_init with count 0");
  emu::check_mbarrier_address(bar);
  emu::g_mbarriers[bar] = emu::MBarrier{count, count};
}
inline void fence_mbarrier_init() {}
inline void mbarrier_expect_tx(uint64_t* bar, uint32_t bytes) {
  auto& m = emu::mbarrier_at(bar);
  m.tx += bytes;
  if (m.pending == 0) EMU_FAIL("mbarrier %p: more arrivals than its count", static_cast<void*>(bar));
  --m.pending, ++emu::g_progress;  // (an arrival is progress for the launcher's deadlock check)
  emu::mbarrier_settle(m);
  emu::yield();
}
inline void mbarrier_arrive(uint64_t* bar) {
  auto& m = emu::mbarrier_at(bar);
  if (m.pending == 0) EMU_FAIL("mbarrier %p: more arrivals than its count", static_cast<void*>(bar));
  --m.pending, ++emu::g_progress;  // (an arrival is progress for the launcher's deadlock check)
  emu::mbarrier_settle(m);
  emu::yield();
}
inline void mbarrier_wait(uint64_t* bar, uint32_t parity) {
  while (true) {
    auto& m = emu::mbarrier_at(bar);
    if (m.phases % 2 != parity % 2) return;  // the phase of that parity has completed
    if (!m.landings.empty()) emu::tma_land(m); else emu::yield();
  }
}
inline void tma_load_3d(void* dst, const CUtensorMap* map, int c0, int c1, int c2, uint64_t* bar) {
  emu::TensorMap3d t;
  std::memcpy(&t, map, sizeof(t));
  const int row_bytes = int(t.box[0]) * 2, rows = int(t.box[2]), bytes = row_bytes * rows;
  const int align = t.swizzle_bytes == 0 ? 128 : 8 * t.swizzle_bytes;  // the swizzle atom (8 rows of its width)
  if (t.swizzle_bytes != 0 && row_bytes != t.swizzle_bytes)
    EMU_FAIL("TMA box rows of %d bytes in the %d-byte swizzle: not emulated", row_bytes, t.swizzle_bytes);
  if (reinterpret_cast<uintptr_t>(dst) % align != 0 || !emu::in_smem(dst, bytes))
    EMU_FAIL("TMA destination %p not %d-byte aligned in smem (box %d bytes)", dst, align, bytes);
  std::vector<unsigned char> box(bytes);
  for (int i2 = 0; i2 < rows; ++i2) {
    for (int i0 = 0; i0 < int(t.box[0]); ++i0) {
      const int64_t g0 = int64_t(c0) + i0, g1 = c1, g2 = int64_t(c2) + i2;
      uint16_t v = 0;
      if (g0 >= 0 && g1 >= 0 && g2 >= 0 && g0 < int64_t(t.dims[0]) && g1 < int64_t(t.dims[1]) &&
          g2 < int64_t(t.dims[2])) {
        const char* src = t.base + g2 * t.strides[1] + g1 * t.strides[0] + g0 * 2;
        if (!emu::in_global(src, 2)) EMU_FAIL("TMA source %p outside the buffers", static_cast<const void*>(src));
        std::memcpy(&v, src, 2);
      }
      // the box row-major (dim 0 innermost); the swizzle XORs the 16-byte chunk with the 128-byte line's low bits
      int off = i2 * row_bytes + i0 * 2;
      if (t.swizzle_bytes != 0) off ^= ((off >> 7) & (t.swizzle_bytes / 16 - 1)) << 4;
      std::memcpy(&box[off], &v, 2);
    }
  }
  auto& m = emu::mbarrier_at(bar);
  m.landings.push_back({dst, std::move(box)});
  ++emu::g_progress;
  if (emu::tma_eager()) emu::tma_land(m);
}
}  // namespace mom_ops
