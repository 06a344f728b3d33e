"""Times the gdn scan at a shape the bench cases do not cover (for choosing launch defaults, e.g. at K = V = 64):
    python3 scripts/gdn_time.py T H D n|L1,L2,... [fwd|fwdbwd ...]
n: the bench cases' n random-length sequences; L1,L2,...: sequences of exactly these lengths (summing to T).
Prints ms per mode (bench/run.py's timing, the bench cases' inputs)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root

import torch

import bench.cases as cases
from bench.run import time_ms

T, H, D = (int(x) for x in sys.argv[1:4])
seqs = sys.argv[4]
if "," in seqs:  # explicit lengths: the bench inputs, with these cu_seqlens
    lengths = [int(x) for x in seqs.split(",")]
    assert sum(lengths) == T, f"the lengths sum to {sum(lengths)}, not T = {T}"
    random_inputs = cases._gdn_inputs

    def fixed_inputs(T, H, D, n, *decay_scale):
        inp, _ = random_inputs(T, H, D, n, *decay_scale)
        return inp, torch.tensor([0] + lengths, device="cuda").cumsum(0).to(torch.int32)

    cases._gdn_inputs = fixed_inputs
    case = cases._gdn_case(T, H, D, len(lengths))
else:
    case = cases._gdn_case(T, H, D, int(seqs))
for mode in sys.argv[5:] or ["fwd", "fwdbwd"]:
    bench = case.build("mom_ops", mode)
    print(f"{case.name} {seqs if ',' in seqs else ''} {mode} {time_ms(bench.fn):.3f} ms", flush=True)
