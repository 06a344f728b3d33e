"""The GPU kernels of one bench case and their times (torch.profiler over a few calls, eager or as CUDA-graph
replays like the bench): python3 scripts/profile_case.py <case> <mode> [provider] [rows]"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root

import torch
from torch.profiler import ProfilerActivity, profile

from bench.cases import CASES

name, mode = sys.argv[1], sys.argv[2]
provider = sys.argv[3] if len(sys.argv) > 3 else "mom_ops"
rows = int(sys.argv[4]) if len(sys.argv) > 4 else 20
case = next(c for c in CASES if c.name == name)
bench = case.build(provider, mode)
bench.fn()
torch.cuda.synchronize()
run = bench.fn
if bench.graph:
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        bench.fn()
    run = graph.replay
for _ in range(3):
    run()
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    for _ in range(10):
        run()
    torch.cuda.synchronize()
print(f"{name} {mode} {provider} ({'graph replays' if bench.graph else 'eager'}), 10 calls:")
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=90))
