"""A / B of a mom_ops.nn module flag in one process (the reliable way to see a small change): the bench's layer
training step (fwd + bwd, layer_340M configuration) with the flag off and on in alternating rounds, GPU time of
back-to-back steps (CUDA events) and peak memory.
    python3 scripts/layer_flag_ab.py FLAG [batch seqlen] [rounds]      e.g. FUSE_Q_PERMUTE 8 2048 3
FLAG may also be NAME=value, an environment variable that mom_ops reads at each call (MOM_OPS_CONV_RUN_ROWS=64, say):
set to value, then unset."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root

import torch

import mom_ops.nn as nn

flag = sys.argv[1]
batch, seqlen = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (8, 2048)
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
env_name, _, env_value = flag.partition("=")
if not env_value and not hasattr(nn, flag):
    sys.exit(f"mom_ops.nn has no flag {flag}")
layer = nn.MoMAttention(1024, 4, 256, num_memories=4, topk=2, shared_memory=True).to("cuda", torch.bfloat16)
x = torch.randn(batch, seqlen, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
dy = torch.randn_like(x)


def step():
    out, aux = layer(x)
    torch.autograd.backward([out, aux], [dy, torch.ones_like(aux)])


def timed(value, steps=10):
    """ms per step and peak GB with the flag set to value (an environment variable: set for False, unset for True)."""
    if env_value:
        if value:
            os.environ.pop(env_name, None)
        else:
            os.environ[env_name] = env_value
    else:
        setattr(nn, flag, value)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps, torch.cuda.max_memory_allocated() / 1e9


for r in range(rounds):
    for value in (False, True):
        ms, gb = timed(value)
        if env_value:
            name = f"{env_name} unset" if value else flag
        else:
            name = f"{flag}={value}"
        print(f"B{batch} T{seqlen} round {r} {name}: {ms:.3f} ms per fwd+bwd step, peak {gb:.3f} GB",
              flush=True)
