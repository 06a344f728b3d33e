// Shim of csrc/common/setmaxnreg.cuh: registers are not emulated.
#pragma once
namespace mom_ops {
template <int kRegs> inline void setmaxnreg_inc() {}
template <int kRegs> inline void setmaxnreg_dec() {}
}  // namespace mom_ops
