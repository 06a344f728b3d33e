"""Is MoMAttention host-bound? For the bench's layer configurations, the host time to issue one call (the GPU held
busy by a sleep kernel, so no launch ever waits) and the GPU time of the same calls run back to back (events
after the sleep: no launch gaps), then a cProfile of the host side of the training step.
    python3 scripts/layer_host_time.py [module.py ...]
Each extra argument is another file defining MoMAttention (an older mom_ops/nn.py, say) to time beside it."""
import cProfile
import importlib.util
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root

import torch

import mom_ops.nn

CONFIGS = [(8, 2048), (2, 8192)]  # (batch, seqlen) of layer_340M_B*_T*
CALLS = 5


def load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(fn, calls=CALLS):
    """(host ms per call, GPU ms per call): the calls are issued behind a ~0.3 s sleep kernel."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(600_000_000)
    start.record()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - t) / calls * 1e3
    end.record()
    torch.cuda.synchronize()
    return host, start.elapsed_time(end) / calls


def main():
    modules = [("mom_ops.nn", mom_ops.nn)] + [(p, load(p)) for p in sys.argv[1:]]
    for batch, seqlen in CONFIGS:
        for name, module in modules:
            torch.manual_seed(0)
            layer = module.MoMAttention(1024, 4, 256, num_memories=4, topk=2, shared_memory=True).to(
                "cuda", torch.bfloat16)
            x = torch.randn(batch, seqlen, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            dy = torch.randn_like(x)

            def fwd():
                with torch.no_grad():
                    layer(x)

            def step():
                out, aux = layer(x)
                torch.autograd.backward([out, aux], [dy, torch.ones_like(aux)])

            for mode, fn in (("fwd", fwd), ("fwdbwd", step)):
                host, gpu = timed(fn)
                print(f"B{batch} T{seqlen} {mode:7s} {name:24s} host {host:7.3f} ms  gpu {gpu:7.3f} ms")
            if (batch, seqlen) == CONFIGS[0] and name == "mom_ops.nn":
                torch.cuda._sleep(2_000_000_000)
                profiler = cProfile.Profile()
                profiler.enable()
                for _ in range(CALLS):
                    step()
                profiler.disable()
                torch.cuda.synchronize()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(35)


if __name__ == "__main__":
    main()
