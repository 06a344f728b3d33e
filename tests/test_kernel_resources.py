"""Register budgets of kernels whose speed rests on their CTAs per SM, read from the built extension's cubins
(cuobjdump -res-usage): no GPU needed, so CI checks them after its CUDA build.

A kernel launched without a minimum-CTAs launch bound takes the registers ptxas likes; one more index product can
cost a whole CTA per SM without a word (session 47's int64 token0 took the decode step from 128 to 144 registers and
decode_N256_H16_D128 from 0.195 to 0.245 ms on the H100, csrc/decode/NOTES.md).
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import mom_ops

# kernel name (as mangled, a substring) -> (max registers a thread, why)
REGISTER_BUDGETS = {
    "mom_decode_step_kernel": (128, "256 threads, two CTAs per SM (65536 registers)"),
    "fused_recurrent_kernel": (128, "256 threads, two CTAs per SM (65536 registers)"),
}


def _cuobjdump():
    candidates = [Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "cuobjdump"]
    try:
        import triton

        candidates.append(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    except ImportError:
        pass
    found = shutil.which("cuobjdump")
    candidates += [Path(found)] if found else []
    return next((str(c) for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="module")
def kernel_resources():
    """{mangled kernel name: {"REG": n, "STACK": n, ...}} of every kernel in mom_ops._C's sm_90a cubins (one
    cuobjdump run for the module's tests)."""
    if not mom_ops.build_info().get("cuda"):
        pytest.skip("mom_ops was built without CUDA kernels")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (CUDA_HOME/bin or triton's nvidia backend)")
    library = mom_ops._C.__file__
    text = subprocess.run([tool, "-res-usage", library], capture_output=True, text=True, check=True).stdout
    resources, name = {}, None
    for line in text.splitlines():
        if (m := re.match(r"\s*Function (\S+):", line)) is not None:
            name = m.group(1)
        elif name is not None and "REG:" in line:
            resources[name] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}
            name = None
    assert resources, f"cuobjdump listed no kernels in {library}"
    return resources


@pytest.mark.parametrize("kernel", sorted(REGISTER_BUDGETS))
def test_register_budget(kernel, kernel_resources):
    budget, why = REGISTER_BUDGETS[kernel]
    instances = {name: r for name, r in kernel_resources.items() if kernel in name}
    assert instances, f"{kernel} is not in the built extension"
    over = {name: r["REG"] for name, r in instances.items() if r["REG"] > budget}
    assert not over, f"{kernel}: more than {budget} registers ({why}): {over}"
    spilled = {name: r["STACK"] for name, r in instances.items() if r["STACK"] > 0}
    assert not spilled, f"{kernel}: a stack frame (spills): {spilled}"
