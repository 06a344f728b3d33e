#!/usr/bin/env bash
# Set up mom_ops in ./.venv from scratch: a venv, torch (the CUDA 13.0 build: a CPU-only torch cannot build the
# CUDA kernels), the build and test tools, then the extension itself (CPU + CUDA for sm_90a when nvcc is there).
# Reuses an existing ./.venv. Env: PYTHON (default python3), TORCH_SPEC (default torch==2.14.1).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.14.1}"
.venv/bin/python -m pip install -q numpy pytest ninja matplotlib pytest-benchmark
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}"
.venv/bin/python -m pip install -q --no-build-isolation -e .
.venv/bin/python -c "import mom_ops; print('mom_ops', mom_ops.__version__, mom_ops.build_info())"
