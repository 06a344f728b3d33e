"""Times FlashQLA's scan (flash_qla.chunk_gated_delta_rule, its automatic intra-sequence split on) on the bench's gdn
cases, at the bench's decay and at weaker ones, without loading mom_ops (so no build is needed on the machine: only
tilelang, z3-solver and flash_qla). Timing as bench/run.py's (triton do_bench, median); records in its format.
    python3 scripts/flash_qla_time.py OUT.json [decay scale ...]   (default: 1 0.1 0.02)
FlashQLA splits a sequence where the decay has made the tokens before a split point negligible (cumulative
log-decay below -10 over a warm-up window), so its speed at one long sequence depends on g."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root

import torch
import triton.testing
from flash_qla import chunk_gated_delta_rule

from bench.gdn_inputs import GDN_CASES, gdn_inputs


def nbytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def main():
    out = sys.argv[1]
    scales = [float(s) for s in sys.argv[2:]] or [1.0, 0.1, 0.02]
    records = []
    for T, H, D, n in GDN_CASES:
        for s in scales:
            inp, cu = gdn_inputs(T, H, D, n, s)
            leaves = {key: t.detach().clone().requires_grad_(True) for key, t in inp.items()}
            do = torch.randn_like(inp["v"])

            def fwd():
                return chunk_gated_delta_rule(**inp, cu_seqlens=cu, use_qk_l2norm_in_kernel=True)

            def fwdbwd():
                o, _ = chunk_gated_delta_rule(**leaves, cu_seqlens=cu, use_qk_l2norm_in_kernel=True)
                return torch.autograd.grad(o, tuple(leaves.values()), do)

            base = nbytes(*inp.values()) + nbytes(inp["v"])  # the bench's least bytes (o has v's shape)
            for mode, fn, moved in (("fwd", fwd, base), ("fwdbwd", fwdbwd, 2 * base)):
                case = f"gdn_T{T}_H{H}_D{D}_n{n}"
                try:
                    ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
                except Exception as e:  # e.g. a head dim it does not support
                    print(f"{case} g x {s} {mode}: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
                    continue
                print(f"{case} g x {s} {mode}: {ms:.4f} ms", flush=True)
                records.append(dict(op="chunk_gated_delta_rule", case=case, provider="flash_qla", mode=mode,
                                    ms=round(ms, 5), gbps=round(moved / (ms * 1e-3) / 1e9, 1), decay_scale=s))
                with open(out, "w") as f:
                    json.dump(dict(device=torch.cuda.get_device_name(), records=records), f, indent=1)


if __name__ == "__main__":
    main()
