"""Triton implementations of every op family: references for the CUDA kernels, and the fallback on GPUs the
CUDA kernels do not cover. Each module mirrors the public mom_ops function of its family."""
