// Empty: the host shim (common/vec.cuh here) defines what the kernels use from the CUDA runtime.
