"""Compare the emulated CUDA backward (bwd_driver.cpp's dump in OUTDIR) with mom_ops's CPU backward in fp64.

The 16-bit inputs are dumped widened exactly, so both sides see the same q, k, v, dO; the CPU op recomputes the
forward in fp64. For GVA (HV > H) the kernel's dq, dk are fp32 per value head w.r.t. the normalised q, k: the group
sum and the l2norm backward are done here as gdn_bwd_cuda.cu does them on the host. Rows outside every sequence
(poison in the dump) are skipped. Prints the relative RMS error per gradient; exit status 1 past the bars
(the GPU tests': 8e-3 for dq, dk, dv, dh0; 2e-2 for dg, dbeta).
    PYTHONPATH=/work/main python compare_bwd.py OUTDIR
"""
import os
import sys

import numpy as np
import torch

import mom_ops  # noqa: F401  (registers torch.ops.mom_ops)

BARS = {"dq": 8e-3, "dk": 8e-3, "dv": 8e-3, "dh0": 8e-3, "dg": 2e-2, "dbeta": 2e-2}


def main(outdir):
    meta = {}
    with open(os.path.join(outdir, "meta.txt")) as f:
        for line in f:
            key, *vals = line.split()
            meta[key] = vals if key == "cu" else vals[0]
    K, H, HV, V = (int(meta[x]) for x in ("K", "H", "HV", "V"))
    rows, B, T = int(meta["rows"]), int(meta["B"]), int(meta["T"])
    l2norm, v_first, use_cu = (meta[x] == "1" for x in ("l2norm", "v_first", "use_cu"))
    use_h0, use_dht = meta["h0"] == "1", meta["dht"] == "1"
    cu = [int(c) for c in meta["cu"]]
    N = len(cu) - 1

    def load(name, shape):
        return torch.from_numpy(np.fromfile(os.path.join(outdir, name + ".f32"), dtype=np.float32)).reshape(shape).double()

    Bq, Tq = (1, rows) if use_cu else (B, T)
    state_shape = (N, HV, V, K) if v_first else (N, HV, K, V)
    q, k = load("q", (Bq, Tq, H, K)), load("k", (Bq, Tq, H, K))
    v, dout = load("v", (Bq, Tq, HV, V)), load("dout", (Bq, Tq, HV, V))
    g, beta = load("g", (Bq, Tq, HV)), load("beta", (Bq, Tq, HV))
    h0 = load("h0", state_shape) if use_h0 else None
    dht = load("dht", state_shape) if use_dht else None
    cu_seqlens = torch.tensor(cu, dtype=torch.int64) if use_cu else None
    ref = torch.ops.mom_ops.chunk_gated_delta_rule_bwd(
        q, k, v, g, beta, K ** -0.5, h0, dout, dht, l2norm, v_first, cu_seqlens, None)
    ref = dict(zip(("dq", "dk", "dv", "dg", "dbeta", "dh0"), ref))

    gva = HV != H
    emu = {}
    if gva:  # per value head, fp32, w.r.t. the normalised q, k: group sum, then the l2norm backward (raw q, k)
        for name, x in (("dq", q), ("dk", k)):
            d = load(name, (rows, H, HV // H, K)).sum(2)
            if l2norm:
                xr = x.reshape(rows, H, K)
                r = xr.square().sum(-1, keepdim=True).add(1e-6).rsqrt()
                y = xr * r
                d = r * (d - y * (y * d).sum(-1, keepdim=True))
            emu[name] = d
    else:
        emu["dq"], emu["dk"] = load("dq", (rows, H, K)), load("dk", (rows, H, K))
    emu["dv"], emu["dg"], emu["dbeta"] = load("dv", (rows, HV, V)), load("dg", (rows, HV)), load("dbeta", (rows, HV))
    if use_h0:
        emu["dh0"] = load("dh0", state_shape)

    in_seq = torch.zeros(rows, dtype=torch.bool)
    for s in range(N):
        in_seq[cu[s]:cu[s + 1]] = True
    failed = False
    report = []
    for name, x in emu.items():
        y = ref[name].reshape(x.shape) if name == "dh0" else ref[name].reshape(rows, *x.shape[1:])
        if name != "dh0":
            x, y = x[in_seq], y[in_seq]
        err = ((x - y).square().sum() / y.square().sum().clamp_min(1e-300)).sqrt().item()
        ok = err < BARS[name] and bool(torch.isfinite(x).all())
        failed |= not ok
        report.append(f"{name} {err:.2e}{'' if ok else ' (FAIL)'}")
    print("  vs CPU fp64 backward, relative RMS: " + ", ".join(report))
    print("FAIL" if failed else "OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
