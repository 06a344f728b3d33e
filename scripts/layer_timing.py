"""Times MoMAttention (the bench's layer_340M_B8_T2048 configuration) with and without the Triton grouped GEMM for
the routed projections: python3 scripts/layer_timing.py [fwd|fwdbwd]"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root

import torch
import triton.testing

import mom_ops.nn as nn

mode = sys.argv[1] if len(sys.argv) > 1 else "fwd"
layer = nn.MoMAttention(1024, 4, 256, num_memories=4, topk=2, shared_memory=True).to("cuda", torch.bfloat16)
x = torch.randn(8, 2048, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=mode == "fwdbwd")
dy = torch.randn_like(x)


def step():
    if mode == "fwd":
        with torch.no_grad():
            return layer(x)[0]
    layer(x)[0].backward(dy)


for grouped in (False, True):
    nn.USE_TRITON_GROUPED_LINEAR = grouped
    torch.cuda.reset_peak_memory_stats()
    ms = triton.testing.do_bench(step, warmup=5, rep=30, return_mode="median")
    print(f"layer {mode} grouped_linear={grouped}: {ms:.3f} ms, peak {torch.cuda.max_memory_allocated() / 1e9:.2f} GB")
