"""Kernel times of the gdn scan in pieces at n1 D128 (bench inputs) for several decays and piece sizes
(MOM_OPS_GDN_PIECE_CHUNKS): where the plan's cost goes when nothing can be cut.
    python3 scripts/gdn_pieces_profile.py [scale ...] (default 1 0.02 0.001)
With --flag NAME first, NAME=0 / 1 instead of the piece sizes (e.g. --flag MOM_OPS_GDN_SPLIT_ITEMS); --flag NAME=a,b
for other values."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root

import torch
from torch.profiler import ProfilerActivity, profile

import mom_ops
from bench.gdn_inputs import gdn_inputs

args = sys.argv[1:]
flag, values = "MOM_OPS_GDN_PIECE_CHUNKS", ("16", "auto")
if args[:1] == ["--flag"]:  # --flag NAME (0 / 1) or --flag NAME=a,b
    flag, values, args = args[1], ("0", "1"), args[2:]
    if "=" in flag:
        flag, values = flag.split("=")[0], tuple(flag.split("=")[1].split(","))
scales = [float(s) for s in args] or [1.0, 0.02, 0.001]


def forward(inp, cu):
    return mom_ops.chunk_gated_delta_rule(**inp, cu_seqlens=cu, use_qk_l2norm_in_kernel=True)[0]


def kernel_times(fn, calls=10):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    rows = [(e.key, e.device_time_total / calls) for e in prof.key_averages() if e.device_time_total > 0]
    return sorted(rows, key=lambda r: -r[1])


for s in scales:
    inp, cu = gdn_inputs(32768, 16, 128, 1, s)
    leaves = {key: t.detach().requires_grad_(True) for key, t in inp.items()}
    do = torch.randn_like(inp["v"])
    for size in values:
        os.environ[flag] = size
        fwdbwd = lambda: torch.autograd.grad(forward(leaves, cu), tuple(leaves.values()), do)  # (as the bench)
        for mode, fn in (("fwd", lambda: forward(inp, cu)), ("fwdbwd", fwdbwd)):
            rows = kernel_times(fn)
            total = sum(t for _, t in rows)
            print(f"g x {s} {flag}={size} {mode}: kernels {total:.1f} us per call")
            for key, t in rows:
                if t >= 2.0:
                    print(f"   {t:8.1f} us  {key[:110]}")
        torch.cuda.synchronize()
