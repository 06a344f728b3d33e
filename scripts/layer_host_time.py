"""Is MoMAttention host-bound? For the bench's layer configurations, the host time to issue one call (the GPU held
busy by a sleep kernel, so no launch waits) and the GPU time of calls run back to back (events after a sleep: no
launch gaps), then a cProfile and a torch.profiler table (self CPU time by op) of the host side of the training step.
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
    """(host ms per call, GPU ms per call). Host: the median of single calls each issued behind a sleep kernel (one
    call's launches never fill the launch queue, so none waits). GPU: `calls` calls issued behind one sleep and
    timed by events around them (back to back on the GPU: no launch gaps)."""
    fn()
    torch.cuda.synchronize()
    hosts = []
    for _ in range(calls):
        torch.cuda._sleep(200_000_000)
        t = time.perf_counter()
        fn()
        hosts.append((time.perf_counter() - t) * 1e3)
        torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(600_000_000)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return sorted(hosts)[len(hosts) // 2], start.elapsed_time(end) / calls


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
                profiler = cProfile.Profile()
                for _ in range(CALLS):  # one step at a time behind a sleep, as in timed()
                    torch.cuda._sleep(200_000_000)
                    profiler.enable()
                    step()
                    profiler.disable()
                    torch.cuda.synchronize()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(35)
                # The same steps by op: self CPU time per aten / mom_ops op (CPU activity only: the host side).
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    for _ in range(CALLS):
                        torch.cuda._sleep(200_000_000)
                        step()
                        torch.cuda.synchronize()
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30,
                                                max_name_column_width=60))


if __name__ == "__main__":
    main()
