"""Run the benchmark registry on a GPU and write bench/results/<gpu>.json (DESIGN.md §6) and PNG plots.

    python -m bench.run [--only gdn,route] [--providers mom_ops,fla] [--merge] [--out bench/results/h100.json]
                        [--plots bench/results/plots]

Every record names the commit it was measured at and its run's clock health. With --merge the records of this run
replace those of the same (case, provider, mode) in --out and the others are kept (each with its own commit and
clocks); the file's top-level commit, date and clocks are this run's, its `healthy` that of every record.
Clock health comes first: a device copy and a bf16 matmul. Runs below 2.8 TB/s or 650 TFLOP/s are flagged
(`healthy: false`) and should be discarded.
Timing: `timing: graph` records are CUDA-graph replays (launch-bound ops; every provider of such a case that can be
captured is timed so), `launch` ones plain launches (triton.testing.do_bench medians). `peak_gb` is the peak
allocation over one call after a warm-up call. Layer fwdbwd calls take fresh gradients (torch.autograd.grad: no
accumulation into .grad across calls).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys

import torch
import triton.testing

from bench.cases import CASES, PROVIDERS

MIN_COPY_TBPS, MIN_MATMUL_TFLOPS = 2.8, 650.0


def time_ms(fn) -> float:
    """Median ms over repeated runs, timed with CUDA events (triton.testing.do_bench)."""
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def graph_replay(fn):
    """fn captured in a CUDA graph after one plain call (lazy initialisation stays out of the capture): its replay."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def time_graph_ms(fn) -> float:
    """Median ms of a CUDA-graph replay of fn (no launch overhead: for ops used inside captured graphs)."""
    return time_ms(graph_replay(fn))


def clock_health() -> tuple[float, float]:
    """(copy TB/s counting read + write, bf16 matmul TFLOP/s) on this device now."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_tbps = 2 * src.numel() / (time_ms(lambda: dst.copy_(src)) * 1e-3) / 1e12
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    tflops = 2 * n**3 / (time_ms(lambda: a @ b) * 1e-3) / 1e12
    return copy_tbps, tflops


def git_commit() -> str:
    if os.environ.get("MOM_OPS_COMMIT"):
        return os.environ["MOM_OPS_COMMIT"]
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def peak_gb(fn) -> float:
    """Peak GB allocated over one call of fn after a first (warm-up) call: not the timer's L2-flush buffer, not the
    warm-up's one-time allocations."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 1e9


def run(only: list[str] | None, providers: list[str] | None, on_record=None,
        modes: list[str] | None = None, stamp: dict | None = None) -> list[dict]:
    """Times the selected (case, mode, provider) triples; on_record(records) after each one (the caller saves, so
    a run cut short keeps what it measured). `stamp`: fields every record carries (the run's clock health)."""
    stamp = stamp or {}
    records, commit = [], git_commit()
    for case in CASES:
        if only and not any(key in case.name or key == case.op for key in only):
            continue
        for mode in case.modes:
            if modes and mode not in modes:
                continue
            for provider in PROVIDERS:
                if providers and provider not in providers:
                    continue
                try:
                    bench = case.build(provider, mode)
                    if bench is None:
                        continue
                    peak = peak_gb(bench.fn)
                    ms = time_graph_ms(bench.fn) if bench.graph else time_ms(bench.fn)
                except Exception as e:  # a provider failing must not stop the others
                    print(f"  {case.name} {mode} {provider}: FAILED {type(e).__name__}: {e}", file=sys.stderr)
                    continue
                gbps = bench.nbytes / (ms * 1e-3) / 1e9 if bench.nbytes else None
                records.append(dict(op=case.op, case=case.name, provider=provider, mode=mode, ms=round(ms, 5),
                                    gbps=None if gbps is None else round(gbps, 1), peak_gb=round(peak, 3),
                                    timing="graph" if bench.graph else "launch", commit=commit, **stamp))
                print(f"  {case.name:34s} {mode:7s} {provider:10s} {ms:9.4f} ms"
                      + (f" {gbps:8.1f} GB/s" if gbps else ""), flush=True)
                if on_record is not None:
                    on_record(records)
    return records


def plot(records: list[dict], folder: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    for op in sorted({r["op"] for r in records}):
        rows = [r for r in records if r["op"] == op]
        labels = sorted({(r["case"], r["mode"]) for r in rows})
        providers = [p for p in PROVIDERS if any(r["provider"] == p for r in rows)]
        fig, ax = plt.subplots(figsize=(max(4, 2 + 1.6 * len(labels)), 3.5))
        width = 0.8 / max(len(providers), 1)
        for i, p in enumerate(providers):
            ms = [next((r["ms"] for r in rows if (r["case"], r["mode"]) == lab and r["provider"] == p), 0)
                  for lab in labels]
            ax.bar([x + i * width for x in range(len(labels))], ms, width, label=p)
        ax.set_xticks([x + width * (len(providers) - 1) / 2 for x in range(len(labels))])
        ax.set_xticklabels([f"{c}\n{m}" for c, m in labels], fontsize=7)
        ax.set_ylabel("ms (lower is better)")
        ax.set_title(op)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(folder, f"{op}.png"), dpi=110)
        plt.close(fig)


def results_name(gpu_name: str) -> str:
    """The results file of a GPU kind: h100.json on any H100 (the issue bars' GPU), h200.json on an H200, else the
    name in lower case letters, digits and underscores (as scripts/gpu_check.sh names it)."""
    for kind in ("H200", "H100"):
        if kind in gpu_name:
            return kind.lower() + ".json"
    return "".join(c for c in gpu_name.lower().replace(" ", "_") if c.isalnum() or c == "_") + ".json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated case-name fragments or op names")
    parser.add_argument("--providers", default="", help="comma-separated providers (default: all)")
    parser.add_argument("--modes", default="", help="comma-separated modes (default: all of each case)")
    parser.add_argument("--merge", action="store_true", help="keep the records of --out that this run does not redo")
    parser.add_argument("--out", default="", help="results file (default: bench/results/<this GPU>.json, e.g. "
                        "h100.json on an H100, h200.json on an H200)")
    parser.add_argument("--plots", default="bench/results/plots")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench.run: no CUDA device here, nothing to time (the benchmarks need a GPU).")
        return
    args.out = args.out or os.path.join("bench", "results", results_name(torch.cuda.get_device_name()))
    copy_tbps, tflops = clock_health()
    healthy = copy_tbps >= MIN_COPY_TBPS and tflops >= MIN_MATMUL_TFLOPS
    print(f"clock health: copy {copy_tbps:.2f} TB/s, bf16 matmul {tflops:.0f} TFLOP/s -> "
          f"{'healthy' if healthy else 'UNHEALTHY: discard these timings'}", flush=True)
    def save(new_records: list[dict]) -> list[dict]:
        """Writes args.out: the new records (plus, with --merge, the old ones they do not redo); returns them all."""
        records, note = new_records, None
        if not new_records:  # nothing measured (every provider failed or none applies): keep what the file holds
            print(f"bench.run: no records; {args.out} left as it was", file=sys.stderr)
            return records
        if args.merge and os.path.exists(args.out):
            redone = {(r["case"], r["provider"], r["mode"]) for r in new_records}
            with open(args.out) as f:
                old = json.load(f)
            # a kept record keeps its own run's clock health (older files flagged the whole file at the top level;
            # their clock figures were the last run's, so they are not copied onto older records)
            kept = [dict(r, commit=r.get("commit", old.get("commit")), healthy=r.get("healthy", old.get("healthy")))
                    for r in old["records"] if (r["case"], r["provider"], r["mode"]) not in redone]
            records = kept + new_records
            note = old.get("note")  # written by hand: a merge keeps it
        result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, commit=git_commit(),
                      date=datetime.date.today().isoformat(), copy_tbps=round(copy_tbps, 3),
                      matmul_tflops=round(tflops, 1), healthy=all(r.get("healthy", healthy) for r in records),
                      records=records)
        if note is not None:
            result["note"] = note
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        return records

    stamp = dict(healthy=healthy, copy_tbps=round(copy_tbps, 3), matmul_tflops=round(tflops, 1))
    records = save(run([s for s in args.only.split(",") if s], [s for s in args.providers.split(",") if s], save,
                       [s for s in args.modes.split(",") if s], stamp))
    if args.plots and records:
        plot(records, args.plots)
    print(f"\n{'case':34s} {'mode':7s} {'provider':10s} {'ms':>9s} {'GB/s':>8s}")
    for r in records:
        print(f"{r['case']:34s} {r['mode']:7s} {r['provider']:10s} {r['ms']:9.4f} {r['gbps'] or '':>8}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
