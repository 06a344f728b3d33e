// common/other_gpus.h: whether the kernels run on a device, and the Triton fallback (or the error) where they don't.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <string>

#include "common/env_flag.h"
#include "common/other_gpus.h"

#define MOM_OPS_OTHER_GPUS_STR_(...) #__VA_ARGS__
#define MOM_OPS_OTHER_GPUS_STR(...) MOM_OPS_OTHER_GPUS_STR_(__VA_ARGS__)

namespace mom_ops {
namespace {

// Compiled with the same -gencode flags as every kernel: it has an image for a device iff they all do.
__global__ void kernel_image_probe() {}

// Per device: 0 not asked yet, 1 the kernels run there, 2 they don't.
std::array<std::atomic<int>, C10_COMPILE_TIME_MAX_GPUS> device_state{};

c10::DeviceIndex index_of(const c10::Device& device) {
  return device.has_index() ? device.index() : c10::cuda::current_device();
}

bool probe(c10::DeviceIndex index) {
  c10::cuda::CUDAGuard guard(index);
  cudaFuncAttributes attributes;
  const cudaError_t err = cudaFuncGetAttributes(&attributes, kernel_image_probe);
  if (err == cudaSuccess) return true;
  (void)cudaGetLastError();
  // No image for this device: the fallbacks. Anything else (a driver too old, a lost device) is the real error, not
  // a reason to fall back silently for the rest of the process.
  if (err == cudaErrorInvalidDeviceFunction || err == cudaErrorNoKernelImageForDevice) return false;
  C10_CUDA_CHECK(err);
  return false;
}

}  // namespace

bool cuda_kernels_run_on(const c10::Device& device) {
  TORCH_INTERNAL_ASSERT(device.is_cuda());
  if (env_is("MOM_OPS_TRITON_FALLBACK", "1")) return false;
  const c10::DeviceIndex index = index_of(device);
  std::atomic<int>& state = device_state.at(index);
  if (state.load(std::memory_order_relaxed) == 0) state.store(probe(index) ? 1 : 2, std::memory_order_relaxed);
  return state.load(std::memory_order_relaxed) == 1;
}

c10::OperatorHandle other_gpu_fallback(const char* op, const c10::Device& device) {
  const std::string name = std::string("mom_ops::") + op + "_triton";
  const auto handle = c10::Dispatcher::singleton().findOp({name, ""});
  if (handle.has_value() && handle->hasKernelForDispatchKey(c10::DispatchKey::CUDA)) return *handle;
  const c10::DeviceIndex index = index_of(device);
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(index);
  const bool forced = env_is("MOM_OPS_TRITON_FALLBACK", "1");
  TORCH_CHECK(false, "mom_ops::", op, ": this build's CUDA kernels are for ",
              MOM_OPS_OTHER_GPUS_STR(MOM_OPS_CUDA_ARCHS), " (compute capability 9.0: H100, H200, GH200) and ",
              forced ? "MOM_OPS_TRITON_FALLBACK=1 keeps them off " : "have no image for ", "cuda:", int(index), " (",
              prop->name, ", compute capability ", prop->major, ".", prop->minor, "); ",
              handle.has_value() ? std::string("its Triton fallback needs Triton, which is not installed")
                                 : std::string("it has no Triton fallback"),
              ". mom_ops.build_info()['triton_fallbacks'] lists the ops that have one; the others run on H100-class "
              "GPUs and on the CPU.");
}

}  // namespace mom_ops
