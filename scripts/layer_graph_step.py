"""MoMAttention's whole training step (forward, backward, gradient accumulation) captured in one CUDA graph: the
layer has no host syncs and static shapes, so it captures; a replay costs no host time. Prints the replay time
against the eager step (the bench's fwdbwd), and checks that a replay gives the eager step's gradients.
    python3 scripts/layer_graph_step.py [batch seqlen]        (default: the bench's layer_340M_B8_T2048)"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root

import torch
import triton.testing

from mom_ops.nn import MoMAttention

batch = int(sys.argv[1]) if len(sys.argv) > 1 else 8
seqlen = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
torch.manual_seed(0)
layer = MoMAttention(1024, 4, 256, num_memories=4, topk=2, shared_memory=True).to("cuda", torch.bfloat16)
x = torch.randn(batch, seqlen, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
dy = torch.randn_like(x)
leaves = [x] + list(layer.parameters())


def step():
    out, aux = layer(x)
    torch.autograd.backward([out, aux], [dy, torch.ones_like(aux)])


# Warm up on a side stream (torch.cuda.graphs' recipe), so that every .grad exists before the capture: the captured
# step then accumulates into them in place.
side = torch.cuda.Stream()
side.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(side):
    for _ in range(3):
        step()
torch.cuda.current_stream().wait_stream(side)
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    step()


def grads_after(run):
    for t in leaves:
        t.grad.zero_()
    run()
    torch.cuda.synchronize()
    return [t.grad.clone() for t in leaves]


eager, replayed = grads_after(step), grads_after(graph.replay)
worst = max((a.float() - b.float()).abs().max().item() / max(a.float().abs().max().item(), 1e-30)
            for a, b in zip(eager, replayed))
print(f"layer_340M_B{batch}_T{seqlen}: replay vs eager gradients, max |diff| / max |grad| = {worst:.2e}")
eager_ms = triton.testing.do_bench(step, warmup=25, rep=100, return_mode="median")
graph_ms = triton.testing.do_bench(graph.replay, warmup=25, rep=100, return_mode="median")
print(f"fwd+bwd: eager {eager_ms:.3f} ms, CUDA-graph replay {graph_ms:.3f} ms")
