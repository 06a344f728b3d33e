#!/usr/bin/env bash
# scripts/wgmma_probe/probe.cu on the CPU through the gdn emulator's shim (scripts/gdn_emulate/shim): checks that the
# shim's wgmma reads the operands the way probe.cu's host reference expects. Whether the GPU agrees is the same
# program built with nvcc (see probe.cu).
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-../../.venv/bin/python}"
TORCH_INC=$("$PY" -c "import torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))" 2>/dev/null)
BIN="${TMPDIR:-/tmp}/mom_ops_wgmma_probe"
g++ -std=c++20 -O2 -fno-strict-aliasing -DMOM_OPS_EMULATE -x c++ -I../gdn_emulate/shim -I../../csrc $TORCH_INC probe.cu -o "$BIN"
"$BIN"
