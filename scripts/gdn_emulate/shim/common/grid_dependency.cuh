// Shim of csrc/common/grid_dependency.cuh: the emulator runs kernels one after another, so a producer has raised
// every counter before its consumer starts; a count other than the target is an error.
#pragma once
namespace mom_ops {
inline void launch_dependents() {}
inline void release_add(int* counter) { ++*counter; }
inline void release_add_each(int* counter, int64_t stride, int n) {
  for (int i = 0; i < n; ++i) ++counter[i * stride];
}
inline void acquire_wait(const int* counter, int target) {  // exactly: a count past the target is a bug as well
  if (*counter != target) EMU_FAIL("acquire_wait: counter %d, not %d, after its producer ran", *counter, target);
}
}  // namespace mom_ops
