"""memory_mix against the naive reference: values, gradients, opcheck, errors."""

import pytest
import torch

import mom_ops
from mom_ops.reference import memory_mix_ref
from tests.helpers import cu_from_lengths, device_param, need_kernel, rel_rms, triton_device


def _setup(n=40, m=4, k=2, b=2, H=2, V=8, dtype=torch.float32, device="cpu", masked=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, m, generator=gen)
    mask = (torch.rand(n, generator=gen) > 0.2) if masked else None
    plan = mom_ops.route(logits.to(device), k, batch_size=b, mask=None if mask is None else mask.to(device))
    t = lambda *s: torch.randn(*s, generator=gen).to(device=device, dtype=dtype)  # noqa: E731
    return plan, t(n * k, H, V), t(n, H, V), (1 + 0.1 * torch.randn(V, generator=gen)).to(device), t(n, H, V)


@pytest.mark.parametrize("device", device_param())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", ["plain", "shared", "norm", "gated"])
def test_memory_mix_matches_reference(device, dtype, variant):
    need_kernel("memory_mix_fwd", device)
    plan, o_routed, shared, norm_w, gate = _setup(dtype=dtype, device=device)
    kw = dict(
        shared=shared if variant != "plain" else None,
        norm_weight=norm_w if variant in ("norm", "gated") else None,
        gate=gate if variant == "gated" else None,
    )
    out = mom_ops.memory_mix(o_routed, plan, **kw)
    ref = memory_mix_ref(o_routed.float().cpu(), plan.dst_row.cpu(), plan.weights.cpu(),
                         **{key: None if t is None else t.float().cpu() for key, t in kw.items()})
    assert out.dtype == dtype
    assert rel_rms(out, ref) < (1e-6 if dtype == torch.float32 else 2e-3)


@pytest.mark.parametrize("device", device_param())
def test_memory_mix_zero_routing_weights(device):
    """Tokens whose routing weight is exactly 0 (and a token whose every weight is 0): the row adds nothing, its
    o_routed gradient is 0, and the weight still gets its gradient <do, row>."""
    need_kernel("memory_mix_bwd", device)
    plan, o_routed, shared, norm_w, gate = _setup(n=48, H=2, V=64, device=device)
    weights = plan.weights.clone()
    weights[::3, 0] = 0.0
    weights[1] = 0.0
    args = [o_routed, weights, shared, norm_w, gate]
    ours = [a.detach().clone().requires_grad_(True) for a in args]
    refs = [a.detach().cpu().clone().requires_grad_(True) for a in args]
    dy = torch.randn(48, 2, 64)
    out = mom_ops.memory_mix(ours[0], plan, *ours[1:])
    ref = memory_mix_ref(refs[0], plan.dst_row.cpu(), *refs[1:])
    assert rel_rms(out, ref) < 1e-5
    (out * dy.to(device)).sum().backward()
    (ref * dy).sum().backward()
    for a, b in zip(ours, refs):
        assert rel_rms(a.grad, b.grad) < 1e-5
    rows = plan.dst_row[1].long()
    assert torch.all(ours[0].grad[rows[rows >= 0]] == 0)


@pytest.mark.parametrize("device", device_param())
def test_memory_mix_masked_tokens_read_nothing(device):
    """A token routed nowhere gets 0 (plus its shared row) even when row 0 of o_routed holds an inf (it used to be
    gathered from row 0 and multiplied by 0 on the CPU: NaN), and the rows no pair uses get a 0 gradient."""
    need_kernel("memory_mix_bwd", device)
    plan, o_routed, shared, norm_w, gate = _setup(n=40, device=device)
    masked = (plan.dst_row < 0).all(1)
    assert masked.any()
    o_routed = o_routed.clone()
    o_routed[0] = float("inf")
    out = mom_ops.memory_mix(o_routed, plan, shared=shared)
    torch.testing.assert_close(out[masked], shared[masked])
    grads = torch.ops.mom_ops.memory_mix_bwd(torch.full_like(shared, float("nan")), o_routed, plan.dst_row,
                                             plan.src_pair, plan.weights, shared, None, None, 1e-6)
    assert torch.all(grads[0][plan.src_pair < 0] == 0)


def test_memory_mix_reference_with_every_token_masked():
    """No pair at all: the reference read row 0 (unused, here NaN) times a zero weight and gave NaN; the op gives the
    shared rows."""
    plan = mom_ops.route(torch.randn(2, 3), 2, batch_size=1, mask=torch.tensor([False, False]))
    o_routed, shared = torch.full((4, 1, 2), float("nan")), torch.ones(2, 1, 2)
    torch.testing.assert_close(memory_mix_ref(o_routed, plan.dst_row, plan.weights, shared), shared)
    torch.testing.assert_close(mom_ops.memory_mix(o_routed, plan, shared=shared), shared)


def test_memory_mix_gradcheck():
    plan, o_routed, shared, norm_w, gate = _setup(n=12, H=2, V=4, dtype=torch.float64)
    args = [o_routed, plan.weights.double(), shared, norm_w.double(), gate]
    args = [a.detach().requires_grad_(True) for a in args]

    def f(o_routed, weights, shared, norm_weight, gate):
        return mom_ops.memory_mix(o_routed, plan, weights, shared, norm_weight, gate)

    assert torch.autograd.gradcheck(f, tuple(args))
    assert torch.autograd.gradcheck(lambda o, w: mom_ops.memory_mix(o, plan, w), tuple(args[:2]))


def test_memory_mix_grads_match_reference_fp32():
    plan, o_routed, shared, norm_w, gate = _setup(n=30, H=2, V=16)
    args = [o_routed, plan.weights, shared, norm_w, gate]
    ours = [a.detach().clone().requires_grad_(True) for a in args]
    refs = [a.detach().clone().requires_grad_(True) for a in args]
    dy = torch.randn(30, 2, 16)
    (mom_ops.memory_mix(ours[0], plan, *ours[1:]) * dy).sum().backward()
    (memory_mix_ref(refs[0], plan.dst_row, *refs[1:]) * dy).sum().backward()
    for a, b in zip(ours, refs):
        assert rel_rms(a.grad, b.grad) < 1e-5


def test_memory_mix_opcheck():
    plan, o_routed, shared, norm_w, gate = _setup(n=20)
    args = (o_routed.requires_grad_(True), plan.dst_row, plan.src_pair, plan.weights.clone().requires_grad_(True),
            shared.requires_grad_(True), norm_w.requires_grad_(True), gate.requires_grad_(True), 1e-6)
    torch.library.opcheck(torch.ops.mom_ops.memory_mix_fwd.default, args)
    detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(torch.ops.mom_ops.memory_mix_bwd.default, (torch.randn(20, 2, 8), *detached))


def test_memory_mix_bad_input():
    plan, o_routed, shared, norm_w, gate = _setup(n=20)
    with pytest.raises(ValueError, match="o_routed must have tokens \\* topk = 40 rows"):
        mom_ops.memory_mix(o_routed[:39], plan)
    with pytest.raises(ValueError, match="shared must have shape"):
        mom_ops.memory_mix(o_routed, plan, shared=shared[:, :1])
    with pytest.raises(ValueError, match="gate needs norm_weight"):
        mom_ops.memory_mix(o_routed, plan, gate=gate)
    with pytest.raises(ValueError, match="norm_weight must have shape"):
        mom_ops.memory_mix(o_routed, plan, norm_weight=norm_w[:3])
    with pytest.raises(ValueError, match="weights must be float32"):
        mom_ops.memory_mix(o_routed, plan, weights=plan.weights.half())
    with pytest.raises(ValueError, match="shared must have the dtype of o_routed"):
        mom_ops.memory_mix(o_routed, plan, shared=shared.half())
    with pytest.raises(ValueError, match="gate must have the dtype of o_routed"):  # (as on CUDA)
        mom_ops.memory_mix(o_routed, plan, norm_weight=norm_w, gate=gate.half())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k, m, V, variant", [(2, 4, 256, "gated"), (1, 4, 64, "gated"), (8, 64, 512, "gated"),
                                              (3, 5, 136, "gated"), (2, 4, 256, "plain"), (3, 5, 64, "shared"),
                                              (2, 4, None, "norm")])
def test_gpu_memory_mix_backward_matches_reference(dtype, k, m, V, variant):
    need_kernel("memory_mix_bwd", "cuda")
    V = V or 128 * (16 // dtype.itemsize)  # None: the widest V the CUDA kernels take (4 vectors per lane)
    plan, o_routed, shared, norm_w, gate = _setup(n=300, m=m, k=k, b=3, H=4, V=V, dtype=dtype, device="cuda", seed=k)
    if variant == "norm":
        norm_w = norm_w.to(dtype)  # the gradient is written in norm_weight's dtype
    args = [o_routed, plan.weights, shared if variant != "plain" else None,
            norm_w if variant in ("norm", "gated") else None, gate if variant == "gated" else None]
    dy = torch.randn(300, 4, V, device="cuda").to(dtype)
    outs = []
    for _ in range(2):  # twice: the backward must be bitwise deterministic
        leaves = [None if a is None else a.detach().clone().requires_grad_(True) for a in args]
        (mom_ops.memory_mix(leaves[0], plan, *leaves[1:]).float() * dy.float()).sum().backward()
        outs.append([t.grad for t in leaves if t is not None])
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    refs = [None if a is None else a.detach().float().cpu().requires_grad_(True) for a in args]
    (memory_mix_ref(refs[0], plan.dst_row.cpu(), *refs[1:]) * dy.float().cpu()).sum().backward()
    for got, ref in zip(outs[0], [r for r in refs if r is not None]):
        assert rel_rms(got, ref.grad) < (1e-5 if dtype == torch.float32 else 5e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_memory_mix_accepts_unaligned_views(dtype):
    """Inputs that are views starting off a 16-byte boundary (the kernels read 16-byte vectors) give the same
    results as aligned copies."""
    need_kernel("memory_mix_bwd", "cuda")
    plan, o_routed, shared, norm_w, gate = _setup(n=64, H=2, V=64, dtype=dtype, device="cuda")

    def off_by_one(t):  # the same values, one element past an aligned allocation
        buf = torch.empty(t.numel() + 1, device=t.device, dtype=t.dtype)
        view = buf[1:].view_as(t)
        view.copy_(t)
        return view

    aligned = [o_routed, plan.weights, shared, norm_w, gate]
    dy = torch.randn_like(shared)
    results = []
    for args in (aligned, [off_by_one(a) for a in aligned]):
        leaves = [a.detach().requires_grad_(True) for a in args]
        out = mom_ops.memory_mix(leaves[0], plan, *leaves[1:])
        out.backward(off_by_one(dy) if args is not aligned else dy)
        results.append([out] + [a.grad for a in leaves])
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", device_param())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("offset", [8, 3])
def test_memory_mix_gate_column_slice(device, dtype, offset):
    """A gate that is a column slice of a wider [N, C] tensor (the layer's token projections; read in place on CUDA
    where the slice is 16-byte aligned, copied otherwise) gives the values and gradients of a contiguous gate, and
    its gradient comes back [N, H, V] contiguous."""
    need_kernel("memory_mix_bwd", device)
    plan, o_routed, shared, norm_w, gate = _setup(n=64, H=2, V=64, dtype=dtype, device=device)
    wide = torch.randn(64, 144, device=device).to(dtype)  # offset 8: an aligned slice; 3: not (copied on CUDA)
    wide[:, offset:offset + 128] = gate.reshape(64, 128)
    dy = torch.randn_like(shared)
    results = []
    for g in (gate, wide[:, offset:offset + 128].view(64, 2, 64)):
        leaves = [a.detach().requires_grad_(True) for a in (o_routed, g)]
        out = mom_ops.memory_mix(leaves[0], plan, plan.weights, shared, norm_w, leaves[1])
        out.backward(dy)
        results.append([out, leaves[0].grad, leaves[1].grad])
    for a, b in zip(*results):
        assert torch.equal(a, b)
    assert results[1][2].is_contiguous()


@pytest.mark.parametrize("device", device_param())
def test_memory_mix_backward_with_no_value_columns(device):
    """V = 0 (an empty sum per token): zero weight gradients, as on the CPU (CUDA's 1 / V gave a NaN rstd and NaN
    weight gradients)."""
    need_kernel("memory_mix_bwd", device)
    plan, o_routed, shared, _, _ = _setup(n=20, V=0, device=device)
    norm_w = torch.ones(0, device=device)
    grads = torch.ops.mom_ops.memory_mix_bwd(torch.randn_like(shared), o_routed, plan.dst_row, plan.src_pair,
                                             plan.weights, shared, norm_w, None, 1e-6)
    assert torch.all(grads[1] == 0)


@pytest.mark.gpu
def test_gpu_memory_mix_rejects_unaligned_v():
    need_kernel("memory_mix_fwd", "cuda")
    plan, o_routed, *_ = _setup(n=20, V=12, dtype=torch.bfloat16, device="cuda")
    with pytest.raises(ValueError, match="multiple of 8"):
        mom_ops.memory_mix(o_routed, plan)


# ---- Triton reference (CPU interpreter with fp32, or the GPU) ----


@pytest.mark.parametrize("variant", ["plain", "gated"])
def test_triton_memory_mix_matches_reference(variant):
    """Gated: shared and gate as column slices of one tensor (as in the layer) and norm_weight as a strided view,
    which the kernels once read densely."""
    from triton_ref import readout as tr

    device = triton_device()
    plan, o_routed, shared, norm_w, gate = _setup(n=24, k=2, H=2, V=12, device=device, seed=3)
    o_leaf, w_leaf = (t.detach().clone().requires_grad_(True) for t in (o_routed, plan.weights))
    proj = torch.cat([shared, gate], -1).detach().requires_grad_(True)  # [n, H, 2V]
    norm_pair = torch.stack([norm_w, norm_w], 1).detach().requires_grad_(True)  # [V, 2]
    args = [o_routed, plan.weights, shared, norm_w, gate] if variant == "gated" else [o_routed, plan.weights]
    refs = [a.detach().cpu().clone().requires_grad_(True) for a in args] + [None] * (5 - len(args))
    ours = [o_leaf, w_leaf] + ([proj[..., :12], norm_pair[:, 0], proj[..., 12:]] if variant == "gated" else [None] * 3)
    out = tr.memory_mix(ours[0], plan, *ours[1:])
    ref = memory_mix_ref(refs[0], plan.dst_row.cpu(), *refs[1:])
    assert rel_rms(out, ref) < 1e-5
    dy = torch.randn(ref.shape)
    out.backward(dy.to(device))
    ref.backward(dy)
    got = [o_leaf.grad, w_leaf.grad]
    if variant == "gated":
        got += [proj.grad[..., :12], norm_pair.grad[:, 0], proj.grad[..., 12:]]
    for a, b in zip(got, refs):
        assert rel_rms(a, b.grad) < 1e-5
