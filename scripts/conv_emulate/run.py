"""Runs segment_conv's CUDA kernels on the CPU (host shim, one std::thread per CUDA thread) against the naive
reference, over widths, dtypes, the vector and scalar paths and awkward segmentations. For checking kernel edits
without a GPU; it says nothing about speed or about the binding (conv_cuda.cu), whose launch it mirrors.

    PYTHONPATH=. python scripts/conv_emulate/run.py      (from the repository root; ~30 s build, ~20 s run)
    CONV_EMULATE_FLAGS="-DMOM_OPS_CONV_TILES_FIRST=0 ..." for the kernels' MOM_OPS_CONV_* variants
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
import time

import torch
import torch.utils.cpp_extension as cpp_extension

from mom_ops.reference import segment_conv_ref

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "..", "..", "csrc")


def build():
    build_dir = os.path.join(tempfile.gettempdir(), "mom_ops_conv_emulate")
    os.makedirs(build_dir, exist_ok=True)
    return cpp_extension.load("conv_emulate", [os.path.join(HERE, "emulate.cpp")],
                              extra_include_paths=[os.path.join(HERE, "shim"), CSRC],  # the shim first
                              extra_cflags=["-O1", "-std=c++20"] + os.environ.get("CONV_EMULATE_FLAGS", "").split(),
                              build_directory=build_dir, verbose=False)


def rel(a, b):
    a, b = a.double(), b.double()
    if torch.isnan(a).any():
        return float("inf")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# rows per run, cycled over the cases by seed (0: conv_run_rows' choice); 7 entries against 6 segmentations, so each
# segmentation meets every length
RUN_ROWS = [0, 8, 21, 64, 256, 1, 40]


def case(emu, lengths, tail, C, W, hist, act, dtype, vec, stride_pad=0, int64=False, seed=0, plan_topk=0):
    """True when the emulated fwd and bwd match the reference (and rows past cu_seqlens[-1] are exactly 0, and the
    bwd wrote nothing beside its grad_x slice). plan_topk > 0: x is a token tensor read through a random plan map
    src_pair (k = plan_topk, some rows unused or out of range), against the reference on the gathered rows. The
    runs' length cycles through RUN_ROWS with the seed."""
    g = torch.Generator().manual_seed(seed)
    cu = torch.tensor([0] + torch.tensor(lengths, dtype=torch.long).cumsum(0).tolist(),
                      dtype=torch.int64 if int64 else torch.int32)
    R, S = int(cu[-1]) + tail, len(lengths)
    N = max(1, R // 2) if plan_topk else R  # plan: x has N token rows, the stream R rows
    x = torch.randn(N, C + stride_pad, generator=g).to(dtype)[:, :C]  # stride_pad > 0: strided rows
    w = torch.randn(C, W, generator=g)
    if hist:  # weights in x's dtype (read as is) on half the cases, fp32 on the others
        w = w.to(dtype)
    h = torch.randn(S, W - 1, C, generator=g) if hist else None
    gy = torch.randn(R, C + stride_pad, generator=g).to(dtype)[:, :C]
    hh = h if h is not None else torch.empty(0)
    src_pair = torch.empty(0, dtype=torch.int32)
    if plan_topk:
        src_pair = torch.randint(-1, N * plan_topk + 3, (R,), generator=g, dtype=torch.int32)  # -1 / past: zeros
    run_rows = RUN_ROWS[seed % len(RUN_ROWS)]
    y = emu.fwd(x, w, cu, hh, act, vec, src_pair, plan_topk, run_rows)
    gx, gw, gh, gx_wide = emu.bwd(gy, x, w, cu, hh, act, vec, src_pair, plan_topk, run_rows)
    beside = torch.cat([gx_wide[:, :4], gx_wide[:, 4 + C:]], 1)  # grad_x is a column slice: the rest stays NaN
    if plan_topk:  # the reference conv runs on the gathered rows (mom_ops.permute's rule)
        pair = src_pair.long()
        used = (pair >= 0) & (pair < N * plan_topk)
        x = torch.where(used[:, None], x[torch.where(used, pair // plan_topk, 0)], torch.zeros((), dtype=dtype))
    leaves = [t.float().clone().requires_grad_(True) for t in (x, w, h) if t is not None]
    y_ref = segment_conv_ref(leaves[0], leaves[1], cu, leaves[2] if h is not None else None, act)
    if y_ref.grad_fn is None:
        refs = [torch.zeros_like(t) for t in leaves]
    else:
        refs = torch.autograd.grad(y_ref, leaves, gy.float(), allow_unused=True)
        refs = [r if r is not None else torch.zeros_like(t) for r, t in zip(refs, leaves)]
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    errs = [rel(y.float(), y_ref), rel(gx.float(), refs[0]), rel(gw, refs[1])] + ([rel(gh, refs[2])] if hist else [])
    end = int(cu[-1])
    ok = all(e < tol for e in errs) and bool((y[end:] == 0).all()) and bool((gx[end:] == 0).all())
    ok = ok and bool(torch.isnan(beside).all())
    return ok, errs


def main() -> int:
    emu = build()
    start, n, fails = time.time(), 0, 0
    segmentations = [([0, 1, 2, 3, 5, 64, 100], 3), ([31, 1, 0, 33, 32, 0, 0, 64, 1], 0), ([300], 5), ([], 4),
                     ([0, 0], 10), ([1] * 40 + [0, 2, 250], 40)]
    paths = [(torch.float32, True), (torch.float32, False), (torch.bfloat16, True), (torch.bfloat16, False)]
    for W, hist, act, (dtype, vec) in itertools.product([1, 2, 3, 4, 8], [False, True], [True, False], paths):
        C = 40 if vec and dtype == torch.float32 else (24 if vec else 7)
        for lengths, tail in segmentations:
            ok, errs = case(emu, lengths, tail, C, W, hist, act, dtype, vec, seed=n)
            n, fails = n + 1, fails + (not ok)
            if not ok:
                print("FAIL", dict(W=W, history=hist, activation=act, dtype=dtype, vec=vec, lengths=lengths), errs)
    extra = [dict(lengths=segmentations[0][0], tail=3, C=16, W=4, hist=True, act=True, dtype=torch.bfloat16, vec=True,
                  stride_pad=8, int64=True),
             dict(lengths=segmentations[0][0], tail=3, C=16, W=4, hist=True, act=True, dtype=torch.bfloat16, vec=False,
                  stride_pad=3, int64=True),
             dict(lengths=[70, 0, 200], tail=2, C=300, W=4, hist=True, act=True, dtype=torch.float32, vec=True)]
    for lengths, tail in segmentations:  # x read through a plan's map (the q conv of MoMAttention's stream)
        for W, (dtype, vec) in itertools.product([1, 4, 8], paths):
            C = 40 if vec and dtype == torch.float32 else (24 if vec else 7)
            extra.append(dict(lengths=lengths, tail=tail, C=C, W=W, hist=W > 1, act=True, dtype=dtype, vec=vec,
                              plan_topk=3))
    extra.append(dict(lengths=[70, 0, 200], tail=2, C=300, W=4, hist=True, act=True, dtype=torch.bfloat16, vec=True,
                      stride_pad=8, plan_topk=2))
    for kw in extra:  # strided rows with int64 cu_seqlens; several channel tiles; plans
        ok, errs = case(emu, seed=n, **kw)
        n, fails = n + 1, fails + (not ok)
        if not ok:
            print("FAIL", kw, errs)
    print(f"{n} cases, {fails} failures, {time.time() - start:.0f} s")
    return int(fails > 0)


if __name__ == "__main__":
    sys.exit(main())
