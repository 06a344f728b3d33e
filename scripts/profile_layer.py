"""Where MoMAttention's time goes (the bench's layer_340M_B8_T2048 configuration): torch.profiler table of the
GPU kernels of a few forward calls, sorted by total CUDA time. python3 scripts/profile_layer.py [rows]"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root

import torch
from torch.profiler import ProfilerActivity, profile

import mom_ops.nn as nn

rows = int(sys.argv[1]) if len(sys.argv) > 1 else 25
layer = nn.MoMAttention(1024, 4, 256, num_memories=4, topk=2, shared_memory=True).to("cuda", torch.bfloat16)
x = torch.randn(8, 2048, 1024, device="cuda", dtype=torch.bfloat16)
with torch.no_grad():
    for _ in range(3):
        layer(x)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            layer(x)
        torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=70))
