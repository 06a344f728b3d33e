"""Runs one bench case once (after a warm-up) so that `ncu` can profile its kernels:
    ncu --kernel-name regex:<name> --launch-skip 1 --launch-count 1 python3 scripts/ncu_case.py <case> <mode>
With `--set full --import-source yes -o report`, scripts/ncu_phases.py splits the kernel's samples by barrier phase."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root

import torch

from bench.cases import CASES

name, mode = sys.argv[1], sys.argv[2]
case = next(c for c in CASES if c.name == name)
bench = case.build("mom_ops", mode)
for _ in range(2):
    bench.fn()
torch.cuda.synchronize()
