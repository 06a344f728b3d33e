"""Where MoMAttention's time goes (the bench's layer_340M_B8_T2048 configuration): torch.profiler table of the
GPU kernels of a few calls, sorted by total CUDA time, then the kernel time of each op under its callers (which
autograd node or module op launched each fill, copy, add).
    python3 scripts/profile_layer.py [fwd|fwdbwd] [rows] [batch] [seqlen]"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root

import torch
from torch.profiler import ProfilerActivity, profile

import mom_ops.nn as nn

mode = sys.argv[1] if len(sys.argv) > 1 else "fwd"
rows = int(sys.argv[2]) if len(sys.argv) > 2 else 25
batch = int(sys.argv[3]) if len(sys.argv) > 3 else 8
seqlen = int(sys.argv[4]) if len(sys.argv) > 4 else 2048
layer = nn.MoMAttention(1024, 4, 256, num_memories=4, topk=2, shared_memory=True).to("cuda", torch.bfloat16)
x = torch.randn(batch, seqlen, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=mode == "fwdbwd")
dy = torch.randn_like(x)


def step():
    if mode == "fwd":
        with torch.no_grad():
            layer(x)
    else:
        out, aux = layer(x)
        torch.autograd.backward([out, aux], [dy, torch.ones_like(aux)])


calls = 3
for _ in range(3):
    step()
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(calls):
        step()
    torch.cuda.synchronize()
print(f"layer_340M_B{batch}_T{seqlen} {mode}, {calls} calls")
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=70))

# Kernel time per (op, its callers): the chain of enclosing CPU ops, innermost first.
by_caller = {}
for e in prof.events():
    kernel_us = sum(k.duration for k in getattr(e, "kernels", []))
    if kernel_us == 0:
        continue
    chain, parent = [e.name], e.cpu_parent
    while parent is not None and len(chain) < 5:
        chain.append(parent.name)
        parent = parent.cpu_parent
    key = " <- ".join(name[:48] for name in chain)
    by_caller[key] = by_caller.get(key, 0.0) + kernel_us / calls
print("\nkernel time per call (us) by op and callers")
for key, us in sorted(by_caller.items(), key=lambda kv: -kv[1])[:rows]:
    print(f"{us:9.1f}  {key}")
