"""Times the gdn scan at a shape the bench cases do not cover (for choosing launch defaults, e.g. at K = V = 64):
    python3 scripts/gdn_time.py T H D n [fwd|fwdbwd ...]
prints ms per mode (bench/run.py's timing, the bench cases' inputs)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root

from bench.cases import _gdn_case
from bench.run import time_ms

T, H, D, n = (int(x) for x in sys.argv[1:5])
case = _gdn_case(T, H, D, n)
for mode in sys.argv[5:] or ["fwd", "fwdbwd"]:
    bench = case.build("mom_ops", mode)
    print(f"{case.name} {mode} {time_ms(bench.fn):.3f} ms", flush=True)
