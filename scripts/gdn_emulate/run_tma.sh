#!/usr/bin/env bash
# The emulator's TMA shim (shim/common/tma.cuh) on tma_check.cpp's cases, in every schedule, landing at the first wait
# and at issue (EMU_TMA_EAGER=1). From the repository root, with .venv: bash scripts/gdn_emulate/run_tma.sh
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-../../.venv/bin/python}"
TORCH_INC=$("$PY" -c "import torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))")
BIN="${TMPDIR:-/tmp}/mom_ops_gdn_emulate"
mkdir -p "$BIN"
g++ -std=c++20 -O2 -fno-strict-aliasing -Wno-psabi -Ishim -I../../csrc $TORCH_INC tma_check.cpp -o "$BIN/tma_check"
failed=0
for eager in 0 1; do
  for order in 0 1 2 3; do
    if out=$(EMU_TMA_EAGER=$eager EMU_ORDER=$order "$BIN/tma_check" 2>&1) \
        && [ "$(echo "$out" | tail -1)" = OK ]; then
      echo "ok: eager $eager order $order"
    else
      echo "FAIL: eager $eager order $order"; echo "$out"; failed=1
    fi
  done
done
exit $failed
