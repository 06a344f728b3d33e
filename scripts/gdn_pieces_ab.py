"""A / B of the inference forward in pieces (csrc/gdn/scan_pieces.cuh, the default) against MOM_OPS_GDN_PIECES=0, in
one process, on the bench's n1 D128 inputs at several decays (the cut needs the decay: at g x 0.001 nothing is cut),
in alternating rounds; also o's relative RMS between the two (the cut is exact to fp32 rounding).
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


for s in scales:
    inp, cu = gdn_inputs(T, H, 128, n, s)
    o_off, o_on = forward(inp, cu, False), forward(inp, cu, True)
    rel = ((o_on.float() - o_off.float()).norm() / o_off.float().norm()).item()
    times = {False: [], True: []}
    for _ in range(3):
        for pieces in (False, True):
            times[pieces].append(time_ms(lambda: forward(inp, cu, pieces)))
    print(f"gdn_T{T}_H{H}_D128_n{n} g x {s}: default {min(times[False]):.4f} ms, pieces {min(times[True]):.4f} ms "
          f"(rounds {', '.join(f'{a:.3f}/{b:.3f}' for a, b in zip(times[False], times[True]))}), o rel {rel:.2e}",
          flush=True)
