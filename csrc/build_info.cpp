// mom_ops.build_info(): the small non-tensor surface, through pybind11. Tensor ops stay dispatcher ops.
#include <Python.h>
#include <pybind11/pybind11.h>
#include <torch/version.h>

#ifdef MOM_OPS_WITH_CUDA
#include <cuda_runtime_api.h>

#include "common/other_gpus.h"
#endif

#define MOM_OPS_STR_(...) #__VA_ARGS__
#define MOM_OPS_STR(...) MOM_OPS_STR_(__VA_ARGS__)

namespace py = pybind11;

namespace mom_ops {

void add_build_info(PyObject* module) {
  py::module_ m = py::reinterpret_borrow<py::module_>(module);
  m.def(
      "build_info",
      []() {
        py::dict info;
        info["torch"] = TORCH_VERSION;
#ifdef MOM_OPS_WITH_CUDA
        info["cuda"] = true;
        info["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
        info["cuda_archs"] = MOM_OPS_STR(MOM_OPS_CUDA_ARCHS);
#else
        info["cuda"] = false;
        info["cuda_version"] = py::none();
        info["cuda_archs"] = "";
#endif
#ifdef MOM_OPS_DEBUG
        info["debug"] = true;
#else
        info["debug"] = false;
#endif
        return info;
      },
      "Compile-time facts about this build of mom_ops._C (torch and CUDA versions, GPU archs).");
#ifdef MOM_OPS_WITH_CUDA
  m.def(
      "cuda_kernels_run_on",
      [](int device) { return cuda_kernels_run_on(c10::Device(c10::DeviceType::CUDA, c10::DeviceIndex(device))); },
      "Whether this build's CUDA kernels run on CUDA device `device` (else its ops take their Triton fallbacks).");
#endif
}

}  // namespace mom_ops
