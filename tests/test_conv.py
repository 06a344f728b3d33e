"""segment_conv (per-segment causal depthwise conv + SiLU) against the naive reference: values, gradients,
history, rows past the last segment, errors, determinism."""

import pytest
import torch

import mom_ops
from mom_ops.reference import segment_conv_ref
from mom_ops.reference.routing import permute_ref
from tests.helpers import cu_from_lengths, device_param, need_kernel, poison_, rel_rms

LENGTHS = [0, 1, 2, 3, 5, 64, 100, 0, 7]


def _inputs(lengths, C, W, history, dtype, device, tail=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cu = cu_from_lengths(lengths)
    R = int(cu[-1]) + tail  # rows past the last segment
    x = torch.randn(R, C, generator=gen).to(device, dtype)
    w = (torch.randn(C, W, generator=gen) / W**0.5).to(device)
    h = torch.randn(len(lengths), W - 1, C, generator=gen).to(device, dtype) if history else None
    return x, w, cu.to(device), h


@pytest.mark.parametrize("device", device_param())
@pytest.mark.parametrize("W", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("history", [False, True])
@pytest.mark.parametrize("activation", [True, False])
def test_segment_conv_matches_reference(device, W, history, activation):
    need_kernel("segment_conv_fwd", device)
    x, w, cu, h = _inputs(LENGTHS, 16, W, history, torch.float32, device)
    y = mom_ops.segment_conv(x, w, cu, h, activation)
    ref = segment_conv_ref(x.cpu(), w.cpu(), cu.cpu(), None if h is None else h.cpu(), activation)
    assert rel_rms(y, ref) < 1e-6
    assert torch.all(y[int(cu[-1]):] == 0)


@pytest.mark.parametrize("device", device_param())
@pytest.mark.parametrize("W", [2, 4, 8])
@pytest.mark.parametrize("history", [False, True])
def test_segment_conv_grads_match_reference(device, W, history):
    need_kernel("segment_conv_bwd", device)
    x, w, cu, h = _inputs(LENGTHS, 16, W, history, torch.float32, device)
    args = [x, w] + ([h] if history else [])
    ours = [a.detach().clone().requires_grad_(True) for a in args]
    refs = [a.detach().cpu().clone().requires_grad_(True) for a in args]
    dy = torch.randn(x.shape)
    out = mom_ops.segment_conv(ours[0], ours[1], cu, ours[2] if history else None)
    ref = segment_conv_ref(refs[0], refs[1], cu.cpu(), refs[2] if history else None)
    (out * dy.to(device)).sum().backward()
    (ref * dy).sum().backward()
    for a, b in zip(ours, refs):
        assert rel_rms(a.grad, b.grad) < 1e-5
    assert torch.all(ours[0].grad[int(cu[-1]):] == 0)


def test_segment_conv_gradcheck():
    x, w, cu, h = _inputs([0, 3, 1, 6], 4, 3, True, torch.float64, "cpu", tail=2)
    args = tuple(a.double().requires_grad_(True) for a in (x, w, h))
    assert torch.autograd.gradcheck(lambda x, w, h: mom_ops.segment_conv(x, w, cu, h), args)


def test_segment_conv_opcheck():
    x, w, cu, h = _inputs([3, 0, 5], 8, 4, True, torch.float32, "cpu")
    torch.library.opcheck(torch.ops.mom_ops.segment_conv_fwd.default,
                          (x.requires_grad_(True), w.requires_grad_(True), cu, h.requires_grad_(True), True))
    torch.library.opcheck(torch.ops.mom_ops.segment_conv_bwd.default,
                          (torch.randn_like(x), x.detach(), w.detach(), cu, h.detach(), True))


@pytest.mark.parametrize("device", device_param())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_segment_conv_bwd_into_a_column_slice(device, dtype):
    """segment_conv_bwd_into writes segment_conv_bwd's grad_x into a column slice of a wider buffer (vector-aligned
    at column 8, single elements at column 1) and nothing beside it; grad_weight and grad_history are the same."""
    need_kernel("segment_conv_bwd", device)
    x, w, cu, h = _inputs(LENGTHS + [70], 64, 4, True, dtype, device, tail=5)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(device, dtype)
    grad_x, grad_w, grad_h = torch.ops.mom_ops.segment_conv_bwd(dy, x, w, cu, h, True)
    for col in (8, 1):
        wide = torch.full((x.shape[0], 80), float("nan"), device=device, dtype=dtype)
        gw, gh = torch.ops.mom_ops.segment_conv_bwd_into(dy, x, w, cu, h, True, wide[:, col:col + 64])
        assert torch.equal(wide[:, col:col + 64], grad_x) and torch.equal(gw, grad_w) and torch.equal(gh, grad_h)
        assert torch.isnan(wide[:, :col]).all() and torch.isnan(wide[:, col + 64:]).all()


def test_segment_conv_bwd_into_bad_grad_x():
    x, w, cu, h = _inputs([3, 5], 8, 4, True, torch.float32, "cpu")
    dy = torch.randn_like(x)
    bwd_into = torch.ops.mom_ops.segment_conv_bwd_into
    with pytest.raises(ValueError, match="grad_x must have shape"):
        bwd_into(dy, x, w, cu, h, True, torch.empty(x.shape[0], 9))
    with pytest.raises(ValueError, match="grad_x must have the dtype of x"):
        bwd_into(dy, x, w, cu, h, True, torch.empty(x.shape, dtype=torch.float64))
    with pytest.raises(ValueError, match="grad_x must have dense channels"):
        bwd_into(dy, x, w, cu, h, True, torch.empty(x.shape[1], x.shape[0]).t())
    with pytest.raises(ValueError, match="grad_x must not share memory with grad_y"):
        bwd_into(dy, x, w, cu, h, True, dy)
    with pytest.raises(ValueError, match="grad_x must not share memory with x"):
        bwd_into(dy, x, w, cu, h, True, x)
    torch.library.opcheck(bwd_into.default, (dy, x, w, cu, h, True, torch.empty_like(x)))


@pytest.mark.parametrize("device", device_param())
@pytest.mark.parametrize("history", [False, True])
@pytest.mark.parametrize("dtype, widths", [(torch.float32, (24, 16, 6)), (torch.bfloat16, (32, 64, 8))])
def test_segment_conv_columns_matches_split(device, history, dtype, widths):
    """segment_conv_columns (the layer's k | v | b | a rows) gives segment_conv of each slice of x.split and the
    rest passed through: the same values and the same gradients (x, weights, histories) as autograd of the split.
    Rows 46 elements apart take the CUDA kernels' single-element path, 104 apart (bf16) the vector path."""
    need_kernel("segment_conv_bwd", device)
    c0, c1, c2 = widths
    x, w0, cu, h0 = _inputs(LENGTHS, c0, 4, history, dtype, device, tail=4, seed=1)
    _, w1, _, h1 = _inputs(LENGTHS, c1, 4, history, dtype, device, tail=4, seed=2)
    x = torch.cat([x, torch.randn(x.shape[0], c1 + c2, device=device).to(dtype)], 1)  # conv'd, conv'd, passed
    leaves = [t for t in (x, w0, w1, h0, h1) if t is not None]
    ours = [t.detach().clone().requires_grad_(True) for t in leaves]
    theirs = [t.detach().clone().requires_grad_(True) for t in leaves]
    hs = (ours[3], ours[4]) if history else None
    got = mom_ops.segment_conv_columns(ours[0], [ours[1], ours[2]], cu, hs)
    k, v, rest = theirs[0].split([c0, c1, c2], 1)
    want = [mom_ops.segment_conv(k, theirs[1], cu, theirs[3] if history else None),
            mom_ops.segment_conv(v, theirs[2], cu, theirs[4] if history else None), rest]
    dys = [torch.randn_like(t) for t in want]
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    torch.autograd.backward(got, dys)
    torch.autograd.backward(want, dys)
    for a, b in zip(ours, theirs):
        assert torch.equal(a.grad, b.grad)


def test_segment_conv_columns_bad_input():
    x, w, cu, h = _inputs([3, 5], 8, 4, True, torch.float32, "cpu")
    with pytest.raises(ValueError, match="exceed x's columns"):
        mom_ops.segment_conv_columns(x, [w, w], cu)
    with pytest.raises(ValueError, match="histories must have one entry per weight"):
        mom_ops.segment_conv_columns(x, [w], cu, [h, h])
    with pytest.raises(ValueError, match="x must be"):
        mom_ops.segment_conv_columns(x[0], [w], cu)


def test_segment_conv_bad_input():
    x, w, cu, h = _inputs([3, 5], 8, 4, True, torch.float32, "cpu")
    with pytest.raises(ValueError, match="x must be"):
        mom_ops.segment_conv(x[0], w, cu)
    with pytest.raises(ValueError, match="weight must have shape"):
        mom_ops.segment_conv(x, w[:4], cu)
    with pytest.raises(ValueError, match="width W"):
        mom_ops.segment_conv(x, torch.randn(8, 9), cu)
    with pytest.raises(ValueError, match="history must have shape"):
        mom_ops.segment_conv(x, w, cu, h[:, :2])
    with pytest.raises(ValueError, match="cu_seqlens must be non-decreasing"):
        mom_ops.segment_conv(x, w, torch.tensor([0, 5, 3]))
    with pytest.raises(ValueError, match="cu_seqlens\\[-1\\] must be <="):
        mom_ops.segment_conv(x, w, torch.tensor([0, 3, 20]))
    with pytest.raises(ValueError, match="cu_seqlens must be int32 or int64"):
        mom_ops.segment_conv(x, w, cu.float())
    with pytest.raises(ValueError, match="x must be a floating-point"):
        mom_ops.segment_conv(x.int(), w, cu)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("C, W, history", [(1024, 4, False), (1024, 4, True), (36, 3, True), (260, 8, True)])
def test_gpu_segment_conv_large(dtype, C, W, history):
    """Many segments (some empty) over ~20k rows, rows past the end, every output poisoned first; bitwise
    reproducible gradients."""
    need_kernel("segment_conv_bwd", "cuda")
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(0, 700, (40,), generator=gen).tolist()
    lengths[3] = 0
    x, w, cu, h = _inputs(lengths, C, W, history, dtype, "cuda", tail=37)
    args = [x, w] + ([h] if history else [])
    dy = torch.randn(x.shape, generator=gen).to("cuda", dtype)
    grads = []
    for _ in range(2):
        leaves = [a.detach().clone().requires_grad_(True) for a in args]
        out = mom_ops.segment_conv(leaves[0], leaves[1], cu, leaves[2] if history else None)
        out.backward(dy)
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    refs = [a.detach().cpu().float().requires_grad_(True) for a in args]
    ref = segment_conv_ref(refs[0], refs[1], cu.cpu(), refs[2] if history else None)
    (ref * dy.cpu().float()).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert rel_rms(out, ref) < tol
    for got, r in zip(grads[0], refs):
        assert rel_rms(got, r.grad) < tol


@pytest.mark.gpu
@pytest.mark.parametrize("plan", [False, True])
def test_gpu_segment_conv_run_length(plan, monkeypatch):
    """y and grad_x bit-identical at any forced run length (MOM_OPS_CONV_RUN_ROWS) and the chosen one; grad_w's
    partial sums follow the runs (close, not equal); a bad value names the variable."""
    need_kernel("segment_conv_bwd", "cuda")
    gen = torch.Generator().manual_seed(5)
    lengths = torch.randint(0, 500, (24,), generator=gen).tolist()
    tail = 11 + (-(sum(lengths) + 11)) % 3  # R a multiple of k = 3 (a plan has R = N k rows)
    x, w, cu, h = _inputs(lengths, 256, 4, True, torch.bfloat16, "cuda", tail=tail)
    dy = torch.randn(x.shape, generator=gen).to("cuda", torch.bfloat16)  # the stream's rows
    maps = ()
    if plan:  # x as token rows read through a map of its rows (some unused), as the layer's q conv
        R, k = x.shape[0], 3
        tokens = x[: R // k].contiguous()
        src_pair = torch.randint(-1, tokens.shape[0] * k, (R,), generator=gen, dtype=torch.int32).cuda()
        dst_row = torch.full((tokens.shape[0], k), -1, dtype=torch.int32, device="cuda")
        x, maps = tokens, (dst_row, src_pair)
    outs = {}
    for run_rows in (None, "1", "37", "64", "256"):
        if run_rows is None:
            monkeypatch.delenv("MOM_OPS_CONV_RUN_ROWS", raising=False)
        else:
            monkeypatch.setenv("MOM_OPS_CONV_RUN_ROWS", run_rows)
        y = torch.ops.mom_ops.segment_conv_fwd(x, w, cu, h, True, *maps)
        gx, gw, gh = torch.ops.mom_ops.segment_conv_bwd(dy, x, w, cu, h, True, *maps)
        outs[run_rows] = (y, gx, gw, gh)
    y0, gx0, gw0, gh0 = outs[None]
    for y, gx, gw, gh in outs.values():
        assert torch.equal(y, y0) and torch.equal(gx, gx0) and torch.equal(gh, gh0)
        torch.testing.assert_close(gw, gw0, rtol=2e-2, atol=1e-2)
    for bad in ("0", "257", "x"):
        monkeypatch.setenv("MOM_OPS_CONV_RUN_ROWS", bad)
        with pytest.raises(ValueError, match="MOM_OPS_CONV_RUN_ROWS"):
            torch.ops.mom_ops.segment_conv_fwd(x, w, cu, h, True, *maps)


@pytest.mark.gpu
def test_gpu_segment_conv_writes_every_row():
    need_kernel("segment_conv_bwd", "cuda")
    x, w, cu, h = _inputs(LENGTHS, 64, 4, True, torch.bfloat16, "cuda", tail=70)
    y = mom_ops.segment_conv(x, w, cu, h)
    assert torch.isfinite(y).all() and torch.all(y[int(cu[-1]):] == 0)
    gx, gw, gh = torch.ops.mom_ops.segment_conv_bwd(poison_(torch.empty_like(y)).fill_(1.0), x, w, cu, h, True)
    assert torch.isfinite(gx).all() and torch.isfinite(gw).all() and torch.isfinite(gh).all()
    assert torch.all(gx[int(cu[-1]):] == 0)


def _gpu_fwd_bwd(x, w, cu, h, activation=True, seed=3):
    """The CUDA op's y and gradients against the fp32 reference on the same (low-precision) inputs; rel. RMS."""
    gen = torch.Generator().manual_seed(seed)
    args = [x, w] + ([h] if h is not None else [])
    dy = torch.randn(x.shape, generator=gen).to(x.device, x.dtype)
    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    out = mom_ops.segment_conv(leaves[0], leaves[1], cu, leaves[2] if h is not None else None, activation)
    out.backward(dy)
    refs = [a.detach().cpu().float().requires_grad_(True) for a in args]
    ref = segment_conv_ref(refs[0], refs[1], cu.cpu(), refs[2] if h is not None else None, activation)
    if ref.grad_fn is not None:
        (ref * dy.cpu().float()).sum().backward()
    end = int(cu[-1])
    assert torch.all(out[end:] == 0) and torch.all(leaves[0].grad[end:] == 0)
    errs = [rel_rms(out, ref)]
    for got, r in zip(leaves, refs):
        if r.grad is not None and r.grad.norm() > 0:
            errs.append(rel_rms(got.grad, r.grad))
    return max(errs)


@pytest.mark.gpu
@pytest.mark.parametrize("C", [6, 37])
def test_gpu_segment_conv_odd_channels(C, poisoned_allocations):
    """C % 4 != 0: one channel per thread."""
    need_kernel("segment_conv_fwd", "cuda")
    x, w, cu, h = _inputs(LENGTHS, C, 4, True, torch.bfloat16, "cuda")
    assert _gpu_fwd_bwd(x, w, cu, h) < 1e-2


@pytest.mark.gpu
def test_gpu_segment_conv_strided_and_misaligned_rows(poisoned_allocations):
    """A column slice of a wider tensor (row stride 3C: vectors) and one shifted by an element (single elements);
    fp32 weight and history with bf16 x (the layer's cache); int64 cu_seqlens."""
    need_kernel("segment_conv_fwd", "cuda")
    x, w, cu, h = _inputs(LENGTHS, 256, 4, True, torch.bfloat16, "cuda")
    wide = torch.cat([x, x, x], 1)
    cu64 = cu.long()
    assert _gpu_fwd_bwd(wide[:, 256:512], w, cu64, h) < 1e-2
    assert _gpu_fwd_bwd(wide[:, 1:257], w, cu64, h) < 1e-2
    assert _gpu_fwd_bwd(x, w, cu, h.float()) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("W", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("lengths, tail", [([1] * 50 + [0, 33, 31, 32], 40), ([0, 0, 0], 2), ([300], 0)])
def test_gpu_segment_conv_segmentations(W, lengths, tail, poisoned_allocations):
    """Runs of 32 rows crossing many segment ends (incl. 1-row and empty segments), only empty segments, one."""
    need_kernel("segment_conv_bwd", "cuda")
    for activation in (True, False):
        x, w, cu, h = _inputs(lengths, 64, W, True, torch.bfloat16, "cuda", tail=tail)
        assert _gpu_fwd_bwd(x, w, cu, h, activation) < 1e-2


@pytest.mark.gpu
def test_gpu_segment_conv_50k_rows(poisoned_allocations):
    """~50k rows x 1024 channels against the vectorised torch version in fp32 on the GPU (the per-row reference
    loop would take minutes); bitwise reproducible gradients."""
    from mom_ops.reference import segment_conv_torch

    need_kernel("segment_conv_bwd", "cuda")
    gen = torch.Generator().manual_seed(5)
    lengths = torch.randint(0, 3000, (33,), generator=gen).tolist()
    x, w, cu, h = _inputs(lengths, 1024, 4, True, torch.bfloat16, "cuda", tail=100)
    dy = torch.randn(x.shape, generator=gen).to("cuda", torch.bfloat16)
    runs = []
    for _ in range(2):
        leaves = [a.detach().clone().requires_grad_(True) for a in (x, w, h)]
        out = mom_ops.segment_conv(*leaves[:2], cu, leaves[2])
        out.backward(dy)
        runs.append([out] + [t.grad for t in leaves])
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    refs = [a.detach().float().requires_grad_(True) for a in (x, w, h)]
    ref = segment_conv_torch(refs[0], refs[1], cu, refs[2])
    (ref * dy.float()).sum().backward()
    assert torch.all(runs[0][0][int(cu[-1]):] == 0)
    for got, r in zip(runs[0], [ref] + [t.grad for t in refs]):
        assert rel_rms(got, r) < 1e-2


def test_segment_conv_torch_matches_reference():
    """The vectorised torch version (the bench's naive provider) is the same op."""
    from mom_ops.reference import segment_conv_torch

    x, w, cu, h = _inputs(LENGTHS, 16, 4, True, torch.float32, "cpu")
    assert rel_rms(segment_conv_torch(x, w, cu, h), segment_conv_ref(x, w, cu, h)) < 1e-6


@pytest.mark.parametrize("W, history", [(4, True), (3, False), (1, False)])
def test_triton_segment_conv_matches_reference(W, history):
    """The Triton reference (CPU interpreter in CI, the GPU on the device), fwd and bwd."""
    from triton_ref import conv as tc
    from tests.helpers import triton_device

    device = triton_device()
    x, w, cu, h = _inputs([0, 1, 2, 5, 19, 0, 3], 8, W, history, torch.float32, device, tail=2)
    ref_args = [a.detach().cpu().clone().requires_grad_(True) for a in ([x, w] + ([h] if history else []))]
    ref = segment_conv_ref(ref_args[0], ref_args[1], cu.cpu(), ref_args[2] if history else None)
    assert rel_rms(tc.segment_conv(x, w, cu, h), ref) < 1e-6
    dy = torch.randn(x.shape)
    (ref * dy).sum().backward()
    dx, dw, dh = tc.segment_conv_backward(dy.to(device), x, w, cu, h)
    assert rel_rms(dx, ref_args[0].grad) < 1e-5 and rel_rms(dw, ref_args[1].grad) < 1e-5
    if history:
        assert rel_rms(dh, ref_args[2].grad) < 1e-5


def _plan_inputs(N, C, W, B, topk, M, history, dtype, device, mask_every=0, seed=5):
    """Token rows x [N, C] and a routing plan of N tokens (B sequences, top-k of M; with mask_every > 0 every
    mask_every-th token is masked: the plan then has unused rows)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, M, generator=gen)
    mask = None if mask_every == 0 else (torch.arange(N) % mask_every != 0)
    plan = mom_ops.route(logits.to(device), topk, batch_size=B, mask=None if mask is None else mask.to(device))
    x = torch.randn(N, C, generator=gen).to(device, dtype)
    w = (torch.randn(C, W, generator=gen) / W**0.5).to(device)
    S = plan.cu_seqlens.shape[0] - 1
    h = torch.randn(S, W - 1, C, generator=gen).to(device, dtype) if history else None
    return x, w, plan, h


@pytest.mark.parametrize("device", device_param())
@pytest.mark.parametrize("W, history, mask_every", [(4, False, 0), (4, True, 3), (1, False, 0), (7, True, 0)])
def test_segment_conv_through_a_plan(device, W, history, mask_every):
    """segment_conv(x, plan=) equals the conv of permute(x, plan), and its gradients equal autograd through the
    permute (x's gradient unpermuted), unused rows included."""
    need_kernel("segment_conv_bwd", device)
    x, w, plan, h = _plan_inputs(96, 16, W, 3, 2, 4, history, torch.float32, device, mask_every)
    args = [x, w] + ([h] if history else [])
    ours = [a.detach().clone().requires_grad_(True) for a in args]
    refs = [a.detach().clone().requires_grad_(True) for a in args]
    out = mom_ops.segment_conv(ours[0], ours[1], plan.cu_seqlens, ours[2] if history else None, plan=plan)
    ref = mom_ops.segment_conv(mom_ops.permute(refs[0], plan), refs[1], plan.cu_seqlens,
                               refs[2] if history else None)
    assert out.shape == (plan.num_rows, 16) and torch.equal(out, ref)
    dy = torch.randn(out.shape).to(device)
    out.backward(dy)
    ref.backward(dy)
    for a, b in zip(ours, refs):
        assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=1e-6)
    naive = segment_conv_ref(permute_ref(x.cpu(), plan.src_pair.cpu(), plan.topk), w.cpu(), plan.cu_seqlens.cpu(),
                             None if h is None else h.cpu())
    assert rel_rms(out, naive) < 1e-6


def test_segment_conv_through_a_plan_opcheck_and_bad_maps():
    x, w, plan, h = _plan_inputs(40, 8, 4, 2, 2, 4, True, torch.float32, "cpu")
    maps = (plan.dst_row, plan.src_pair)
    torch.library.opcheck(torch.ops.mom_ops.segment_conv_fwd.default, (x, w, plan.cu_seqlens, h, True, *maps))
    dy = torch.randn(plan.num_rows, 8)
    torch.library.opcheck(torch.ops.mom_ops.segment_conv_bwd.default, (dy, x, w, plan.cu_seqlens, h, True, *maps))
    op = torch.ops.mom_ops.segment_conv_fwd
    with pytest.raises(ValueError, match="dst_row and src_pair"):
        op(x, w, plan.cu_seqlens, h, True, plan.dst_row, None)
    with pytest.raises(ValueError, match="one row per token of the plan"):
        op(x[:-1], w, plan.cu_seqlens, h, True, *maps)
    with pytest.raises(ValueError, match="src_pair must have dtype"):
        op(x, w, plan.cu_seqlens, h, True, plan.dst_row, plan.src_pair.long())
    bad = plan.src_pair.clone()
    bad[3] = 10**6
    with pytest.raises(ValueError, match="src_pair\\[3\\]"):
        op(x, w, plan.cu_seqlens, h, True, plan.dst_row, bad)


def test_triton_segment_conv_through_a_plan():
    """The Triton reference's plan argument: the conv of the permuted rows."""
    from tests.helpers import triton_device
    from triton_ref import conv as tc

    device = triton_device()
    x, w, plan, h = _plan_inputs(48, 8, 4, 2, 2, 4, True, torch.float32, device, mask_every=5)
    naive = segment_conv_ref(permute_ref(x.cpu(), plan.src_pair.cpu(), plan.topk), w.cpu(), plan.cu_seqlens.cpu(),
                             h.cpu())
    assert rel_rms(tc.segment_conv(x, w, plan.cu_seqlens, h, plan=plan), naive) < 1e-6
