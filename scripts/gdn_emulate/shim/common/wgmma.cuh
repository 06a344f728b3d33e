// Shim of csrc/common/wgmma.cuh: every thread computes its own accumulators from shared memory when the group holding
// the wgmma completes (wgmma_wait), so reading them earlier sees the old values, as on the GPU. Operands are read
// through the address function the descriptors stand for (csrc/common/wgmma.cuh), with the 128-byte swizzle applied
// to the byte offset from the start of shared memory (bits 4-6 ^= bits 7-9; tiles 1024-byte aligned):
//   K-major  (mn, k): start + (mn / 8) SBO + (mn % 8) 128 + 2 k
//   MN-major (mn, k): start + (k / 8) SBO + (k % 8) 128 + 2 mn
// or the 64-byte swizzle (descriptor layout type 2: rows of 64 bytes, bits 4-5 ^= bits 7-8; tiles 512-byte aligned),
// the same with 64 for 128. scripts/wgmma_probe checks these against the GPU.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>
#include <deque>
#include <map>
#include <vector>
#include "common/mma.cuh"
#include "common/sw128_layout.h"  // csrc's
#include "common/sw64_layout.h"   // csrc's
namespace mom_ops {

inline uint64_t smem_offset_for_desc(const void* p) {
  const auto* c = static_cast<const unsigned char*>(p);
  if (c < emu::g_smem_lo || c >= emu::g_smem_hi) EMU_FAIL("wgmma descriptor of %p: not in shared memory", p);
  const uint64_t addr = uint64_t(c - emu::g_smem_lo);
  if (addr % 16 != 0) EMU_FAIL("wgmma descriptor of %p: not 16-byte aligned", p);
  return addr;
}
inline uint64_t sw128_desc(const void* p) { return sw128_desc_bits(smem_offset_for_desc(p)); }
inline uint64_t sw64_desc(const void* p) { return sw64_desc_bits(smem_offset_for_desc(p)); }

namespace detail {
// A from registers (wgmma_m64n64k16_rs): every thread of the warpgroup deposits its fragment into the op's shared
// table at issue; a thread computing its accumulators waits (yields) until all 128 have.
struct RegA {
  float a[64][16];
  int deposits = 0, done = 0;
};
struct WgmmaOp {
  float* d;  // [n_tiles][4]
  int n_tiles;
  uint64_t desc_a, desc_b;
  bool trans_a, trans_b, accumulate;
  float (*to_float)(uint16_t);
  RegA* reg_a = nullptr;
};
struct WgmmaState {
  std::vector<WgmmaOp> open;
  std::deque<std::vector<WgmmaOp>> groups;
  uint64_t rs_issued = 0;  // register-A ops this thread has issued
};
inline std::map<const emu::Fiber*, WgmmaState> g_wgmma;
inline std::map<std::pair<int, uint64_t>, RegA> g_reg_a;  // (warpgroup, op number) -> table

// Element (mn, k) of the operand described by desc (MN-major when trans).
inline float wgmma_operand(uint64_t desc, bool trans, int mn, int k, float (*to_float)(uint16_t)) {
  const uint64_t layout = desc >> 62;  // 1: 128-byte swizzle, 2: 64-byte swizzle
  if (layout != 1 && layout != 2) EMU_FAIL("wgmma descriptor: only the 128- and 64-byte swizzles are emulated");
  const uint64_t row = layout == 1 ? 128 : 64, mask = layout == 1 ? 7 : 3;
  const uint64_t start = (desc & 0x3FFF) << 4, sbo = ((desc >> 32) & 0x3FFF) << 4;
  if (start % row + 2 * uint64_t(trans ? mn : k) + 2 > row)
    EMU_FAIL("wgmma operand (%d, %d): past the end of its %d-byte swizzled row", mn, k, int(row));
  const uint64_t byte = trans ? start + (k / 8) * sbo + (k % 8) * row + 2 * mn
                              : start + (mn / 8) * sbo + (mn % 8) * row + 2 * k;
  const uint64_t phys = byte ^ (((byte >> 7) & mask) << 4);
  const unsigned char* at = emu::g_smem_lo + phys;
  if (!emu::in_smem(at, 2)) EMU_FAIL("wgmma operand (%d, %d) at byte %llu outside shared memory", mn, k, (unsigned long long)phys);
  uint16_t u;
  std::memcpy(&u, at, 2);
  return to_float(u);
}

// This thread's accumulators of d (+)= A B, m64 x (8 n_tiles) x k16.
inline void wgmma_run(const WgmmaOp& op) {
  const int warp_rank = int(emu::g_cur->tid.x / 32) % 4, l = int(emu::g_cur->tid.x % 32), g = l / 4, t = l % 4;
  for (int j = 0; j < op.n_tiles; ++j)
    for (int e = 0; e < 4; ++e) {
      const int m = 16 * warp_rank + g + (e >= 2 ? 8 : 0), n = 8 * j + 2 * t + (e & 1);
      double s = op.accumulate ? op.d[4 * j + e] : 0.0;
      for (int k = 0; k < 16; ++k)
        s += double(op.reg_a ? op.reg_a->a[m][k] : wgmma_operand(op.desc_a, op.trans_a, m, k, op.to_float)) *
             double(wgmma_operand(op.desc_b, op.trans_b, n, k, op.to_float));
      op.d[4 * j + e] = float(s);
    }
}
}  // namespace detail

inline void fence_async_smem() {}
inline void wgmma_fence() {}
template <int kTiles> inline void wgmma_fence_acc(float (&)[kTiles][4]) {}
inline void wgmma_commit() {
  auto& st = detail::g_wgmma[emu::g_cur];
  st.groups.push_back(std::move(st.open));
  st.open.clear();
}
template <int kPending> inline void wgmma_wait() {
  auto& st = detail::g_wgmma[emu::g_cur];
  if (!st.open.empty()) EMU_FAIL("wgmma_wait with uncommitted wgmma");
  while (int(st.groups.size()) > kPending) {
    for (const auto& op : st.groups.front()) {
      if (op.reg_a) {
        while (op.reg_a->deposits < 128) emu::yield();
      }
      detail::wgmma_run(op);
      if (op.reg_a && ++op.reg_a->done == 128) {
        for (auto it = detail::g_reg_a.begin(); it != detail::g_reg_a.end(); ++it)
          if (&it->second == op.reg_a) { detail::g_reg_a.erase(it); break; }
      }
    }
    st.groups.pop_front();
  }
}
template <typename T, int kN, bool kTransA, bool kTransB>
inline void wgmma_m64k16(float (&d)[kN / 8][4], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  static_assert(kN == 16 || kN == 32 || kN == 64, "n16, n32 or n64");
  detail::g_wgmma[emu::g_cur].open.push_back(
      {&d[0][0], kN / 8, desc_a, desc_b, kTransA, kTransB, accumulate,
       [](uint16_t u) { return emu::bits_to_f<T>(u); }});
}
template <typename T, bool kTransB>
inline void wgmma_m64n64k16_rs(float (&d)[8][4], const uint32_t (&a)[4], uint64_t desc_b, bool accumulate) {
  auto& st = detail::g_wgmma[emu::g_cur];
  const int tid = int(emu::g_cur->tid.x), warp_rank = (tid / 32) % 4, l = tid % 32, g = l / 4, t = l % 4;
  detail::RegA& ra = detail::g_reg_a[{tid / 128, st.rs_issued++}];
  const int m0 = 16 * warp_rank + g;
  const int rows[4] = {m0, m0 + 8, m0, m0 + 8}, cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
  for (int r = 0; r < 4; ++r) {
    ra.a[rows[r]][cols[r]] = emu::bits_to_f<T>(uint16_t(a[r] & 0xFFFF));
    ra.a[rows[r]][cols[r] + 1] = emu::bits_to_f<T>(uint16_t(a[r] >> 16));
  }
  ++ra.deposits;
  ++emu::g_progress;  // threads yielding in wgmma_wait for the deposits are not stuck
  st.open.push_back({&d[0][0], 8, 0, desc_b, false, kTransB, accumulate,
                     [](uint16_t u) { return emu::bits_to_f<T>(u); }, &ra});
}
}  // namespace mom_ops
