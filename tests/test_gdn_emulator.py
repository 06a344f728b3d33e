"""The gdn CUDA kernels run on the CPU through scripts/gdn_emulate's shim (one fiber per CUDA thread; ldmatrix, mma.sync,
wgmma, cp.async and TMA emulated; named barriers and mbarriers checked), against fp64 references: EMU_QUICK's subset of
run.sh (forward: fused, split, ws, pieces, K = 256) and run_bwd.sh (backward: chain + grads, ws chain, split chain),
random warp speeds and TMA boxes landing at issue among them. No GPU is needed: this is what checks the kernels'
logic in CI (~3 min on two cores); the full suites are run.sh / run_bwd.sh."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts" / "gdn_emulate"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="the emulator is built with g++")
@pytest.mark.parametrize("suite", ["run.sh", "run_bwd.sh"])
def test_gdn_kernels_in_the_cpu_emulator(suite, tmp_path):
    out = subprocess.run(["bash", str(SCRIPTS / suite)], capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "EMU_QUICK": "1", "PYTHON": sys.executable, "TMPDIR": str(tmp_path)})
    lines = [line for line in out.stdout.splitlines() if line.startswith(("ok:", "FAIL:"))]
    assert out.returncode == 0 and lines and all(line.startswith("ok:") for line in lines), (
        out.stdout[-4000:] + out.stderr[-4000:])
