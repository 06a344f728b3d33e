// Shim of csrc/common/named_barrier.cuh.
#pragma once
namespace mom_ops {
inline void named_bar_sync(int id, int threads) { emu::named_barrier(id, threads, true); }
inline void named_bar_arrive(int id, int threads) { emu::named_barrier(id, threads, false); }
}  // namespace mom_ops
