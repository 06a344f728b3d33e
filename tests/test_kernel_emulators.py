"""The gdn CUDA kernels run on the CPU through scripts/gdn_emulate's shim (one fiber per CUDA thread; ldmatrix,
mma.sync, wgmma, cp.async and TMA emulated; named barriers and mbarriers checked), against fp64 references:
EMU_QUICK's subset of run.sh (forward: fused, split, ws, pieces, K = 256) and run_bwd.sh (backward: chain + grads,
ws chain, split chain), random warp speeds and TMA boxes landing at issue among them; and segment_conv's kernels
(scripts/conv_emulate, its whole suite). No GPU is needed: this is what checks the kernels' logic in CI (~2.5 min on
two cores); the full gdn suites are run.sh / run_bwd.sh without EMU_QUICK."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts" / "gdn_emulate"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="the emulator is built with g++")
@pytest.mark.parametrize("suite", ["run.sh", "run_bwd.sh"])
def test_gdn_kernels_in_the_cpu_emulator(suite, tmp_path):
    out = subprocess.run(["bash", str(SCRIPTS / suite)], capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "EMU_QUICK": "1", "PYTHON": sys.executable, "TMPDIR": str(tmp_path)})
    lines = [line for line in out.stdout.splitlines() if line.startswith(("ok:", "FAIL:"))]
    assert out.returncode == 0 and lines and all(line.startswith("ok:") for line in lines), (
        out.stdout[-4000:] + out.stderr[-4000:])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="the emulator is built with g++")
def test_conv_kernels_in_the_cpu_emulator(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "conv_emulate" / "run.py")], capture_output=True,
                         text=True, timeout=1200, env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path),
                                                      # (the build's ninja: the venv's where the system has none)
                                                      "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert out.returncode == 0 and " 0 failures" in out.stdout, out.stdout[-4000:] + out.stderr[-4000:]
