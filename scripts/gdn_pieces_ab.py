"""A / B of the gdn scan in pieces (csrc/gdn/scan_pieces.cuh) in one process, on the bench's n1 D128 inputs at
several decays (the cut needs the decay: at g x 0.001 nothing is cut), in alternating rounds: the forward with
MOM_OPS_GDN_PIECES=0 / 1, the forward + backward (forward in pieces) with MOM_OPS_GDN_BWD_PIECES=0 / 1, and both
with MOM_OPS_GDN_PIECE_CHUNKS=16 / auto (csrc/gdn/piece_size.h); also o's relative RMS between the two forwards and
the gradients' between the two backwards (0 or bf16-rounding level: csrc/gdn/NOTES.md).
    python3 scripts/gdn_pieces_ab.py [T H n] [decay scale ...]      (default: 32768 16 1, scales 1 0.1 0.02 0.001)
With --flag NAME first, only NAME=0 / 1 for the forward and the forward + backward (pieces as by default), e.g.
--flag MOM_OPS_GDN_SPLIT_ITEMS; --flag NAME=a,b for other values."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root

import torch

import mom_ops
from bench.gdn_inputs import gdn_inputs
from bench.run import time_ms

args = sys.argv[1:]
only_flag, flag_values = None, ("0", "1")
if args[:1] == ["--flag"]:  # --flag NAME (0 / 1) or --flag NAME=a,b
    only_flag, args = args[1], args[2:]
    if "=" in only_flag:
        only_flag, flag_values = only_flag.split("=")[0], tuple(only_flag.split("=")[1].split(","))
T, H, n = (int(x) for x in args[:3]) if len(args) >= 3 else (32768, 16, 1)
scales = [float(s) for s in args[3:]] or [1.0, 0.1, 0.02, 0.001]


def forward(inp, cu):
    return mom_ops.chunk_gated_delta_rule(**inp, cu_seqlens=cu, use_qk_l2norm_in_kernel=True)[0]


def forward_backward(leaves, cu, do):
    """The gradients of every input, as the bench times them (torch.autograd.grad: no accumulation into .grad, whose
    adds cost ~0.28 ms here)."""
    o = forward(leaves, cu)
    return dict(zip(leaves, torch.autograd.grad(o, tuple(leaves.values()), do)))


def ab(label, flag, fn, values=("0", "1")):
    """fn() timed with flag = each of the two values in alternating rounds (the flag unset afterwards)."""
    times = {value: [] for value in values}
    for _ in range(3):
        for value in values:
            os.environ[flag] = value
            times[value].append(time_ms(fn))
    os.environ.pop(flag)
    a, b = values
    rounds = ", ".join(f"{x:.3f}/{y:.3f}" for x, y in zip(times[a], times[b]))
    return f"{label} {flag}={a} {min(times[a]):.4f} ms, ={b} {min(times[b]):.4f} ms (rounds {rounds})"


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


for s in scales:
    inp, cu = gdn_inputs(T, H, 128, n, s)
    if only_flag is not None:
        do = torch.randn_like(forward(inp, cu))
        leaves = {key: t.detach().requires_grad_(True) for key, t in inp.items()}
        fwd = ab("fwd", only_flag, lambda: forward(inp, cu), flag_values)
        fwdbwd = ab("fwdbwd", only_flag, lambda: forward_backward(leaves, cu, do), flag_values)
        print(f"gdn_T{T}_H{H}_D128_n{n} g x {s}: {fwd}; {fwdbwd}", flush=True)
        continue
    os.environ["MOM_OPS_GDN_PIECES"] = "0"
    o_off = forward(inp, cu)
    os.environ["MOM_OPS_GDN_PIECES"] = "1"
    o_on = forward(inp, cu)
    fwd = ab("fwd", "MOM_OPS_GDN_PIECES", lambda: forward(inp, cu))
    do = torch.randn_like(o_off)
    grads = {}
    for value in ("0", "1"):
        os.environ["MOM_OPS_GDN_BWD_PIECES"] = value
        leaves = {key: t.detach().requires_grad_(True) for key, t in inp.items()}
        grads[value] = forward_backward(leaves, cu, do)
    grad_rel = max(rel(grads["1"][key], grads["0"][key]) for key in grads["0"])
    leaves = {key: t.detach().requires_grad_(True) for key, t in inp.items()}
    fwdbwd = ab("fwdbwd", "MOM_OPS_GDN_BWD_PIECES", lambda: forward_backward(leaves, cu, do))
    size = "MOM_OPS_GDN_PIECE_CHUNKS"
    fwd_size = ab("fwd", size, lambda: forward(inp, cu), ("16", "auto"))
    fwdbwd_size = ab("fwdbwd", size, lambda: forward_backward(leaves, cu, do), ("16", "auto"))
    print(f"gdn_T{T}_H{H}_D128_n{n} g x {s}: {fwd}; {fwdbwd}; {fwd_size}; {fwdbwd_size}; o rel "
          f"{rel(o_on, o_off):.2e}, grads rel <= {grad_rel:.2e}", flush=True)
