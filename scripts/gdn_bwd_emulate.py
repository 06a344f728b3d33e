"""CPU emulation of the CUDA scan backward's 16-bit roundings (#5), to find which one dominates an error.

Runs the kernels' math (training forward with its stores, the chain, the grads kernel's regrouped formulas) in fp64
on a regime of tests/test_gdn_cuda_backward.py, rounding to bf16 only at the points named on the command line
(or each point alone, then all together), and prints the relative RMS error of dg, dbeta, dv against the exact fp64
backward (mom_ops.reference.chunk_gated_delta_rule_bwd_ref):
    PYTHONPATH=. python scripts/gdn_bwd_emulate.py [regime] [point ...]
Points: fwd (the forward's internal operands: Tw, Tu, S, V_d), S0, W, Vn (the stores; S0_M, S0_X1, S0_sds round S0
in one use only; without S0_sds_h0 the first chunk's sum(S0 dS1) reads h0 unrounded, without dS1_sds_dht the last
chunk's reads dht unrounded: name both to replay the kernel before hilo_ends), ch_dS, ch_P, ch_dOq, ch_dVn
(the chain's operands), dS1 (its store), P, T, dVn, Z, VnD, dVbS, dT, Y (the grads kernel's operands).
Variants (not points): exact_ends (h0, dht in fp64 in every use of the first / last chunk), hilo_ends (as hi + lo
bf16 pairs there: what the grads kernel does for K <= 128).
"""

from __future__ import annotations

import sys

import torch

from mom_ops.reference.gdn_backward import chunk_gated_delta_rule_bwd_ref
from tests.helpers import rel_rms
from tests.test_gdn_cuda_backward import CASES, _inputs

POINTS = ["fwd", "S0", "S0_M", "S0_X1", "S0_sds", "W", "Vn", "ch_dS", "ch_P", "ch_dOq", "ch_dVn", "dS1", "P", "T", "dVn", "Z", "VnD", "dVbS",
          "dT", "Y"]


def hi_lo(x: torch.Tensor) -> torch.Tensor:
    """x as the kernel holds an fp32 input in two bf16 tiles: hi = bf16(x), lo = bf16(x - hi)."""
    hi = x.to(torch.bfloat16).double()
    return hi + (x - hi).to(torch.bfloat16).double()


def emulate(name: str, rounded: set[str]):
    """(dg, dbeta, dv) of the regime with bf16 rounding at the points in `rounded`, fp64 elsewhere."""
    c = CASES[name]
    inp, do, dht, cu = _inputs(name, torch.bfloat16)
    R = lambda key, x: x.to(torch.bfloat16).double() if key in rounded else x  # noqa: E731
    f64 = lambda t: None if t is None else t.double()  # noqa: E731
    q, k, v, g, beta, h0 = (f64(inp.get(key)) for key in ("q", "k", "v", "g", "beta", "initial_state"))
    do, dht = do.double(), f64(dht)
    B, rows, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    scale = c.op_scale if c.op_scale is not None else K ** -0.5
    bounds = ([(b, 0, rows) for b in range(B)] if cu is None else
              [(0, int(cu[i]), int(cu[i + 1])) for i in range(len(cu) - 1)])
    dg, dbeta, dv = torch.zeros_like(g), torch.zeros_like(beta), torch.zeros_like(v)
    for n, (b, start, end) in enumerate(bounds):
        for hv in range(HV):
            h = hv // (HV // H)
            chunks = [(t, min(t + 64, end)) for t in range(start, end, 64)]
            S = torch.zeros(K, V, dtype=torch.float64) if h0 is None else h0[n, hv].clone()
            if c.v_first and h0 is not None:
                S = h0[n, hv].t().clone()
            per_chunk = []
            for t0, t1 in chunks:  # the training forward: its stores and the chunk-local terms
                Qr, Kr, Vc = q[b, t0:t1, h], k[b, t0:t1, h], v[b, t0:t1, hv]
                rq = torch.rsqrt((Qr ** 2).sum(-1) + 1e-6) if c.l2norm else torch.ones(t1 - t0, dtype=torch.float64)
                rk = torch.rsqrt((Kr ** 2).sum(-1) + 1e-6) if c.l2norm else torch.ones(t1 - t0, dtype=torch.float64)
                G = g[b, t0:t1, hv].cumsum(0)
                bt = beta[b, t0:t1, hv]
                m = t1 - t0
                strict = torch.ones(m, m, dtype=torch.bool).tril(-1)
                lower = torch.ones(m, m, dtype=torch.bool).tril()
                diff = G[:, None] - G[None, :]
                gam_s = torch.where(strict, diff, -torch.inf).exp()
                gam_l = torch.where(lower, diff, -torch.inf).exp()
                Araw = rk[:, None] * rk[None, :] * gam_s * (Kr @ Kr.t())
                T = torch.linalg.inv(torch.eye(m, dtype=torch.float64) + bt[:, None] * Araw)
                P = rq[:, None] * rk[None, :] * gam_l * (Qr @ Kr.t())
                eG, dend = G.exp(), (G[-1] - G).exp()
                Tw = R("fwd", T * (bt * eG * rk)[None, :])
                Tu = R("fwd", T * bt[None, :])
                W = R("W", R("fwd", Tw @ Kr))  # the forward rounds W once for its own use and stores that
                S0x, S0s = S, R("S0", S)  # exact and stored
                Vn = Tu @ Vc - W @ R("fwd", S)
                Vns = R("Vn", Vn)
                S = G[-1].exp() * S + Kr.t() @ R("fwd", (rk * dend)[:, None] * Vn)
                per_chunk.append(dict(Qr=Qr, Kr=Kr, Vc=Vc, rq=rq, rk=rk, G=G, bt=bt, strict=strict, lower=lower,
                                      gam_s=gam_s, gam_l=gam_l, Araw=Araw, T=T, P=P, eG=eG, dend=dend, W=W, S0s=S0s, S0x=S0x,
                                      Vns=Vns, dO=do[b, t0:t1, hv]))
            dS = torch.zeros(K, V, dtype=torch.float64) if dht is None else dht[n, hv].clone()
            if c.v_first and dht is not None:
                dS = dht[n, hv].t().clone()
            for (t0, t1), x in zip(reversed(chunks), reversed(per_chunk)):  # the chain
                x["dS1x"], x["dS1s"] = dS, R("dS1", dS)
                Pc = R("ch_P", scale * x["P"])
                dOq = R("ch_dOq", (scale * x["rq"] * x["eG"])[:, None] * x["dO"])
                dVn = (x["dend"] * x["rk"])[:, None] * (x["Kr"] @ R("ch_dS", dS)) + Pc.t() @ x["dO"]
                dS = x["G"][-1].exp() * dS + x["Qr"].t() @ dOq + x["W"].t() @ R("ch_dVn", -dVn)
            for (t0, t1), x in zip(chunks, per_chunk):  # the grads kernel
                Kr, Qr, Vc, dO, rk, rq, G, bt, eG, dend = (x[key] for key in
                                                           ("Kr", "Qr", "Vc", "dO", "rk", "rq", "G", "bt", "eG", "dend"))
                S0s, dS1s, Vns = x["S0s"], x["dS1s"], x["Vns"]
                first, last = t0 == start, t1 == end
                if "exact_ends" in rounded:  # h0 and dht unrounded in every use of the first / last chunk
                    S0s = x["S0x"] if first else S0s
                    dS1s = x["dS1x"] if last else dS1s
                hilo = "hilo_ends" in rounded  # the kernel for K <= 128: h0 / dht as hi + lo bf16 pairs there
                if hilo:
                    S0s = hi_lo(x["S0x"]) if first else S0s
                    dS1s = hi_lo(x["dS1x"]) if last else dS1s
                RS0 = (lambda key, y: y) if hilo and first else R  # noqa: E731  (no further rounding of the pair)
                T16, P16 = R("T", x["T"]), R("P", x["P"])
                kds, M = Kr @ dS1s, Kr @ RS0("S0_M", S0s)
                dVn = R("dVn", (dend * rk)[:, None] * kds + scale * (P16.t() @ dO))
                c_part = (kds * Vns).sum(-1)
                Z = R("Z", bt[:, None] * (Vc - (eG * rk)[:, None] * M))
                dvb = T16.t() @ dVn
                dv[b, t0:t1, hv] = bt[:, None] * dvb
                vdvb, dvbm = (Vc * dvb).sum(-1), (dvb * M).sum(-1)
                dP = dO @ Vns.t()
                dT = R("dT", dVn @ Z.t())
                X1 = dO @ RS0("S0_X1", S0s).t()
                # the kernel reads h0 (fp32) for the first chunk's sum; S0_sds_h0 emulates the stored copy instead
                # and dht for the last chunk's (dS1_sds_dht emulates the stored copy instead)
                if hilo:
                    sds = ((S0s if first else R("S0_sds", S0s)) * dS1s).sum()
                else:
                    sds = ((R("S0_sds_h0", x["S0x"]) if first else R("S0_sds", S0s))
                           * (R("dS1_sds_dht", R("dS1", x["dS1x"])) if last and "dS1_sds_dht" in rounded
                              else x["dS1x"] if last else dS1s)).sum()
                dp = torch.where(x["lower"], scale * dP, 0.0)
                E = dp * P16
                Y = R("Y", T16.t() @ dT)
                dA = torch.where(x["strict"], -(Y @ T16.t()), 0.0)
                da_part = (dA * x["Araw"]).sum(-1)
                E2 = dA * bt[:, None] * x["Araw"]
                kdkb = -rk * dvbm
                cc = dend * rk * c_part
                dG = ((E + E2).sum(-1) - (E + E2).sum(0) + bt * eG * kdkb - cc
                      + scale * eG * rq * (Qr * X1).sum(-1))
                dG[-1] += G[-1].exp() * sds + cc.sum()
                dg[b, t0:t1, hv] = dG.flip(0).cumsum(0).flip(0)
                dbeta[b, t0:t1, hv] = vdvb + da_part + eG * kdkb
    return dg, dbeta, dv


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "d128_varlen_gva_strong"
    c = CASES[name]
    inp, do, dht, cu = _inputs(name, torch.bfloat16)
    f64 = {key: t.double() for key, t in inp.items()}
    ref = chunk_gated_delta_rule_bwd_ref(f64["q"], f64["k"], f64["v"], f64["g"], f64["beta"],
                                         c.op_scale if c.op_scale is not None else c.K ** -0.5,
                                         f64.get("initial_state"), do.double(), None if dht is None else dht.double(),
                                         c.l2norm, c.v_first, cu)
    ref_dg, ref_db, ref_dv = ref[3], ref[4], ref[2]
    sets = [set(sys.argv[2:])] if len(sys.argv) > 2 else [set()] + [{p} for p in POINTS] + [set(POINTS)]
    for rounded in sets:
        dg, db, dv = emulate(name, rounded)
        label = ",".join(sorted(rounded)) or "(none)"
        print(f"{label:60s} dg {rel_rms(dg, ref_dg):.2e}  dbeta {rel_rms(db, ref_db):.2e}  dv {rel_rms(dv, ref_dv):.2e}")


if __name__ == "__main__":
    main()
