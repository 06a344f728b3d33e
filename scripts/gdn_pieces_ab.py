"""A / B of the gdn scan in pieces (csrc/gdn/scan_pieces.cuh, the default) against MOM_OPS_GDN_PIECES=0, in one
process, on the bench's n1 D128 inputs at several decays (the cut needs the decay: at g x 0.001 nothing is cut):
forward and forward + backward in alternating rounds; also o's relative RMS between the two (exact to fp32 rounding).
    python3 scripts/gdn_pieces_ab.py [T H n] [decay scale ...]      (default: 32768 16 1, scales 1 0.1 0.02 0.001)"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root

import torch

import mom_ops
from bench.gdn_inputs import gdn_inputs
from bench.run import time_ms

args = sys.argv[1:]
T, H, n = (int(x) for x in args[:3]) if len(args) >= 3 else (32768, 16, 1)
scales = [float(s) for s in args[3:]] or [1.0, 0.1, 0.02, 0.001]


def forward(inp, cu, pieces):
    os.environ["MOM_OPS_GDN_PIECES"] = "1" if pieces else "0"
    return mom_ops.chunk_gated_delta_rule(**inp, cu_seqlens=cu, use_qk_l2norm_in_kernel=True)[0]


def forward_backward(inp, cu, pieces, do):
    o = forward(inp, cu, pieces)
    o.backward(do)
    return o


def ab(label, fn):
    times = {False: [], True: []}
    for _ in range(3):
        for pieces in (False, True):
            times[pieces].append(time_ms(lambda: fn(pieces)))
    rounds = ", ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(times[False], times[True]))
    return f"{label} off {min(times[False]):.4f} ms, pieces {min(times[True]):.4f} ms (rounds {rounds})"


for s in scales:
    inp, cu = gdn_inputs(T, H, 128, n, s)
    o_off, o_on = forward(inp, cu, False), forward(inp, cu, True)
    rel = ((o_on.float() - o_off.float()).norm() / o_off.float().norm()).item()
    fwd = ab("fwd", lambda pieces: forward(inp, cu, pieces))
    leaves = {key: t.detach().requires_grad_(True) for key, t in inp.items()}
    do = torch.randn_like(o_off)
    fwdbwd = ab("fwdbwd", lambda pieces: forward_backward(leaves, cu, pieces, do))
    print(f"gdn_T{T}_H{H}_D128_n{n} g x {s}: {fwd}; {fwdbwd}; o rel {rel:.2e}", flush=True)
