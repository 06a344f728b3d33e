// GPUs this build's CUDA kernels do not run on. The kernels are built for sm_90a (wgmma, TMA, setmaxnreg: H100,
// H200, GH200) and nothing else, so on another GPU (an A100, a B200) a launch would fail with "no kernel image".
// Each op's CUDA entry checks its arguments as everywhere, then, on such a GPU, hands them to the op's Triton
// fallback `mom_ops::<op>_triton` (same schema; defined and registered by mom_ops/_other_gpus.py when Triton is
// installed), or raises an error that names the GPU and what the build runs on:
//
//   if (!cuda_kernels_run_on(q.device()))
//     return call_other_gpu_fallback<decltype(gdn_fwd_cuda)>("chunk_gated_delta_rule_fwd", q.device(), q, k, ...);
//
// MOM_OPS_TRITON_FALLBACK=1 treats every GPU as such a GPU (so that the H100 tests the fallbacks too).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/Device.h>
#include <c10/cuda/CUDAGuard.h>

#include <utility>

namespace mom_ops {

// Whether this build has a kernel image for `device` (a CUDA device; cached per device).
bool cuda_kernels_run_on(const c10::Device& device);

// The op's Triton fallback, or a RuntimeError naming the device, the build's archs and whether Triton is missing.
c10::OperatorHandle other_gpu_fallback(const char* op, const c10::Device& device);

// Calls the fallback with the CUDA entry's own arguments (Fn: the entry's function type, the op's schema) on the
// arguments' device: Triton launches on the current device's current stream.
template <class Fn, class... Args>
decltype(auto) call_other_gpu_fallback(const char* op, const c10::Device& device, Args&&... args) {
  const c10::OperatorHandle fallback = other_gpu_fallback(op, device);
  c10::cuda::CUDAGuard guard(device);
  return fallback.typed<Fn>().call(std::forward<Args>(args)...);
}

}  // namespace mom_ops
