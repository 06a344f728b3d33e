"""route / permute / unpermute against the naive reference, autograd, opcheck, bad input."""

import pytest
import torch

import mom_ops
from mom_ops.reference import permute_ref, route_ref, router_ref, unpermute_ref
from tests.helpers import cu_from_lengths, device_param, need_kernel, rel_rms, triton_device

ROUTE_CASES = [
    # (num_tokens, M, topk, batch, lengths or None, masked)
    (1, 4, 2, 1, None, False),
    (64, 4, 2, 2, None, False),
    (130, 4, 1, 1, None, False),
    (200, 8, 3, 4, None, True),
    (100, 4, 2, 5, [0, 15, 1, 63, 21], False),  # empty and length-1 sequences
    (129, 64, 8, 3, [65, 0, 64], True),
    (48, 4, 4, 2, None, False),  # topk == M
]


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance in units in the last place between two fp32 tensors of non-negative values."""
    return (a.float().view(torch.int32).long() - b.float().view(torch.int32).long()).abs().max().item() if a.numel() else 0


def assert_plan_equal(plan, ref):
    """The plan equals route_ref's six outputs: indices exactly, weights within 1 ulp (fp32)."""
    for name, expected in zip(["weights", "memory_ids", "dst_row", "src_pair", "cu_seqlens", "chunk_indices"], ref):
        got = getattr(plan, name).cpu()
        if name == "weights":
            assert ulp_distance(got, expected) <= 1, "weights differ by more than 1 ulp"
        else:
            assert torch.equal(got, expected.to(got.dtype)), name


def _route_inputs(n, m, b, lengths, masked, seed, device):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, m, generator=gen)
    cu = cu_from_lengths(lengths) if lengths is not None else None
    mask = torch.rand(n, generator=gen) > 0.2 if masked else None
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return to(logits), to(cu), to(mask)


@pytest.mark.parametrize("device", device_param())
@pytest.mark.parametrize("case", ROUTE_CASES)
def test_route_matches_reference(device, case):
    need_kernel("route", device)
    n, m, k, b, lengths, masked = case
    logits, cu, mask = _route_inputs(n, m, b, lengths, masked, seed=n, device=device)
    plan = mom_ops.route(logits, k, batch_size=b, cu_seqlens=cu, mask=mask)
    ref = route_ref(logits.cpu(), k, b, None if cu is None else cu.cpu(), None if mask is None else mask.cpu())
    assert_plan_equal(plan, ref)


@pytest.mark.parametrize("device", device_param())
def test_route_ties_and_infinities(device):
    need_kernel("route", device)
    inf = float("inf")
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, inf, 2.0, inf], [-inf, -inf, -inf, -inf], [-inf, 0.0, -inf, 1.0]])
    plan = mom_ops.route(logits.to(device), 2, batch_size=1)
    assert plan.memory_ids.cpu().tolist() == [[0, 1], [1, 3], [0, 1], [3, 1]]
    w = plan.weights.cpu()
    torch.testing.assert_close(w[:3], torch.full((3, 2), 0.5))
    assert ulp_distance(w[3], router_ref(logits[3:], 2)[0][0]) <= 1


@pytest.mark.parametrize("device", device_param())
def test_route_weights_within_one_ulp_of_exact_softmax(device):
    """Wide logits (where fp32 exp/normalise chains lose several ulps): still within 1 ulp of the exact value."""
    need_kernel("route", device)
    logits = torch.randn(5000, 8) * 8
    plan = mom_ops.route(logits.to(device), 3, batch_size=1)
    plan_ids, weights = plan.memory_ids.cpu(), plan.weights.cpu()
    exact = torch.softmax(logits.double(), -1).gather(1, plan_ids.long())
    exact = (exact / exact.sum(-1, keepdim=True)).float()
    assert ulp_distance(weights, exact) <= 1


def test_route_nan_is_an_error():
    logits = torch.randn(8, 4)
    logits[3, 1] = float("nan")
    with pytest.raises(ValueError, match="router_logits contains NaN"):
        mom_ops.route(logits, 2, batch_size=1)


def test_route_gradcheck_fp64():
    logits = torch.randn(20, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: mom_ops.route(x, 3, batch_size=2).weights, (logits,))


def test_route_gradient_matches_reference():
    logits = torch.randn(40, 6, dtype=torch.float32, requires_grad=True)
    plan = mom_ops.route(logits, 3, batch_size=2)
    gw = torch.randn_like(plan.weights)
    (grad,) = torch.autograd.grad((plan.weights * gw).sum(), logits)
    ref_logits = logits.detach().clone().requires_grad_(True)
    w_ref, _ = router_ref(ref_logits, 3)
    (grad_ref,) = torch.autograd.grad((w_ref * gw).sum(), ref_logits)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", device_param())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_route_backward_matches_autograd_of_reference(device, dtype):
    """route's logits gradient (the route_backward op: one launch) against autograd through router_ref, with masked
    tokens (no memory: zero gradient), 6 memories and top-3, in the logits' dtype."""
    need_kernel("route_backward", device)
    logits, cu, mask = _route_inputs(300, 6, 2, [100, 200], True, seed=5, device=device)
    logits = logits.to(dtype).requires_grad_(True)
    plan = mom_ops.route(logits, 3, cu_seqlens=cu, mask=mask)
    gw = torch.randn(plan.weights.shape, generator=torch.Generator().manual_seed(6))
    # the weights' gradient reaches route as a column slice (as in the layer, whose weights get a leading column)
    (grad,) = torch.autograd.grad((torch.cat([torch.ones_like(plan.weights[:, :1]), plan.weights], 1)[:, 1:]
                                   * gw.to(device)).sum(), logits)
    ref_logits = logits.detach().cpu().float().requires_grad_(True)
    w_ref, _ = router_ref(ref_logits, 3)
    (grad_ref,) = torch.autograd.grad((w_ref * gw * mask.cpu()[:, None]).sum(), ref_logits)
    assert grad.dtype == dtype and grad.shape == logits.shape
    torch.testing.assert_close(grad.cpu().float(), grad_ref, rtol=1e-5 if dtype == torch.float32 else 1e-2,
                               atol=1e-6 if dtype == torch.float32 else 1e-3)
    assert torch.all(grad[~mask] == 0)


def test_route_backward_opcheck_and_bad_input():
    logits = torch.randn(30, 4)
    plan = mom_ops.route(logits, 2, batch_size=1)
    gw = torch.randn_like(plan.weights)
    torch.library.opcheck(torch.ops.mom_ops.route_backward.default,
                          (gw, plan.weights, plan.memory_ids, 4, torch.bfloat16))
    bwd = torch.ops.mom_ops.route_backward
    with pytest.raises(ValueError, match="num_memories"):
        bwd(gw, plan.weights, plan.memory_ids, 1, torch.float32)
    with pytest.raises(ValueError, match="grad_weights must have shape"):
        bwd(gw[:, :1], plan.weights, plan.memory_ids, 4, torch.float32)
    with pytest.raises(ValueError, match="memory_ids must have dtype"):
        bwd(gw, plan.weights, plan.memory_ids.long(), 4, torch.float32)
    with pytest.raises(ValueError, match="grad_weights must have the dtype of weights"):
        bwd(gw.double(), plan.weights, plan.memory_ids, 4, torch.float32)


@pytest.mark.parametrize("device", device_param())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_permute_unpermute_match_reference(device, dtype):
    need_kernel("permute", device)
    logits, cu, mask = _route_inputs(150, 4, 3, [40, 0, 110], True, seed=1, device=device)
    plan = mom_ops.route(logits, 2, cu_seqlens=cu, mask=mask)
    x = torch.randn(150, 72, device=device).to(dtype)
    y = mom_ops.permute(x, plan)
    assert torch.equal(y.cpu(), permute_ref(x.cpu(), plan.src_pair.cpu(), 2))
    back = mom_ops.unpermute(y, plan, plan.weights)
    ref = unpermute_ref(y.cpu(), plan.dst_row.cpu(), plan.weights.cpu())
    assert rel_rms(back, ref) < (1e-6 if dtype == torch.float32 else 4e-3)
    # unit weights and the identity: unpermute(permute(x)) == k * x for routed tokens
    ones = mom_ops.unpermute(mom_ops.permute(x.float(), plan), plan)
    routed = plan.dst_row[:, 0] >= 0
    torch.testing.assert_close(ones[routed], 2 * x.float()[routed])


@pytest.mark.parametrize("device", device_param())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cols", [(8, 72), (3, 40), (0, 1)])
def test_permute_reads_column_slices_in_place(device, dtype, cols):
    """permute of a column slice (rows farther apart than their width: the CUDA kernel reads them at their stride,
    vectorised where the slice is 16-byte aligned) equals permute of its contiguous copy; so does an expanded x."""
    need_kernel("permute", device)
    logits, cu, mask = _route_inputs(150, 4, 3, [40, 0, 110], True, seed=2, device=device)
    plan = mom_ops.route(logits, 2, cu_seqlens=cu, mask=mask)
    wide = torch.randn(150, 96, device=device).to(dtype)
    x = wide[:, cols[0]:cols[1]]
    assert torch.equal(mom_ops.permute(x, plan), mom_ops.permute(x.contiguous(), plan))
    row = wide[:1].expand(150, -1)  # stride(0) == 0
    assert torch.equal(mom_ops.permute(row, plan), mom_ops.permute(row.contiguous(), plan))


def _plan(n=30, m=4, k=2, b=2, dtype=torch.float64):
    logits = torch.randn(n, m)
    return mom_ops.route(logits, k, batch_size=b)


def test_permute_unpermute_gradcheck():
    plan = _plan()
    x = torch.randn(30, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: mom_ops.permute(x, plan), (x,))
    y = torch.randn(60, 5, dtype=torch.float64, requires_grad=True)
    w = plan.weights.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda y, w: mom_ops.unpermute(y, plan, w), (y, w))


def test_routing_opcheck():
    logits = torch.randn(30, 4)
    cu = cu_from_lengths([10, 0, 20])
    torch.library.opcheck(torch.ops.mom_ops.route.default, (logits, 2, 3, cu, None, 64))
    plan = mom_ops.route(logits, 2, cu_seqlens=cu)
    x = torch.randn(30, 8, requires_grad=True)
    torch.library.opcheck(torch.ops.mom_ops.permute.default, (x, plan.dst_row, plan.src_pair))
    y = torch.randn(60, 8, requires_grad=True)
    w = plan.weights.clone().requires_grad_(True)
    torch.library.opcheck(torch.ops.mom_ops.unpermute.default, (y, plan.dst_row, plan.src_pair, w))
    torch.library.opcheck(
        torch.ops.mom_ops.unpermute_backward.default, (torch.randn(30, 8), y.detach(), plan.dst_row, plan.src_pair, w.detach(), True)
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(topk=0), "topk must be in"),
        (dict(topk=5), "topk must be in"),
        (dict(logits=torch.randint(0, 3, (8, 4))), "router_logits must be a floating-point"),
        (dict(batch_size=3), "must be a multiple of batch_size"),
        (dict(cu_seqlens=torch.tensor([0, 3, 2, 8], dtype=torch.int32)), "cu_seqlens must be non-decreasing"),
        (dict(cu_seqlens=torch.tensor([0, 3, 7], dtype=torch.int32)), r"cu_seqlens\[-1\] must equal"),
        (dict(cu_seqlens=torch.tensor([1, 3, 8], dtype=torch.int32)), r"cu_seqlens\[0\] must be 0"),
        (dict(cu_seqlens=torch.tensor([0, 3, 8], dtype=torch.float32)), "cu_seqlens must be int32 or int64"),
        (dict(mask=torch.ones(7, dtype=torch.bool)), "mask must have shape"),
        (dict(mask=torch.ones(8)), "mask must be torch.bool"),
    ],
)
def test_route_bad_input(kwargs, match):
    logits = kwargs.pop("logits", torch.randn(8, 4))
    topk = kwargs.pop("topk", 2)
    if "cu_seqlens" not in kwargs:
        kwargs.setdefault("batch_size", 2)
    with pytest.raises(ValueError, match=match):
        mom_ops.route(logits, topk, **kwargs)


def test_permute_bad_input():
    plan = _plan()
    with pytest.raises(ValueError, match="x must have 30 rows"):
        mom_ops.permute(torch.randn(29, 4), plan)
    with pytest.raises(ValueError, match="y must have 60 rows"):
        mom_ops.unpermute(torch.randn(59, 4), plan)
    with pytest.raises(ValueError, match="weights must have shape"):
        mom_ops.unpermute(torch.randn(60, 4), plan, torch.ones(30, 3))
    with pytest.raises(ValueError, match="weights must be float32"):
        mom_ops.unpermute(torch.randn(60, 4), plan, torch.ones(30, 2, dtype=torch.float16))
    with pytest.raises(ValueError, match="src_pair must have dtype"):
        torch.ops.mom_ops.permute(torch.randn(30, 4), plan.dst_row, plan.src_pair.long())


# ---- Triton reference (CPU: interpreter with fp32; GPU: compiled) ----


@pytest.mark.parametrize("case", ROUTE_CASES[:6])
def test_triton_route_matches_reference(case):
    from triton_ref import routing as tr

    device = triton_device()
    n, m, k, b, lengths, masked = case
    logits, cu, mask = _route_inputs(n, m, b, lengths, masked, seed=n, device=device)
    plan = tr.route(logits, k, batch_size=b, cu_seqlens=cu, mask=mask)
    ref = route_ref(logits.cpu(), k, b, None if cu is None else cu.cpu(), None if mask is None else mask.cpu())
    assert_plan_equal(plan, ref)


def test_triton_route_backward_matches_op():
    from triton_ref import routing as tr

    device = triton_device()
    logits, cu, mask = _route_inputs(200, 5, 2, [80, 120], True, seed=7, device="cpu")
    plan = mom_ops.route(logits, 3, cu_seqlens=cu, mask=mask)
    gw = torch.randn_like(plan.weights)
    want = torch.ops.mom_ops.route_backward(gw, plan.weights, plan.memory_ids, 5, torch.float32)
    got = tr.route_backward(gw.to(device), plan.weights.to(device), plan.memory_ids.to(device), 5, torch.float32)
    assert rel_rms(got, want) < 1e-6


def test_triton_permute_unpermute():
    from triton_ref import routing as tr

    device = triton_device()
    logits, cu, mask = _route_inputs(90, 4, 3, [40, 0, 50], True, seed=1, device=device)
    plan = mom_ops.route(logits.cpu(), 2, cu_seqlens=cu.cpu(), mask=mask.cpu())
    plan = type(plan)(*(getattr(plan, f).to(device) for f in
                        ("weights", "memory_ids", "dst_row", "src_pair", "cu_seqlens", "chunk_indices")),
                      plan.num_memories, plan.batch_size)
    x = torch.randn(90, 40, device=device)
    y = tr.permute(x, plan)
    assert torch.equal(y.cpu(), permute_ref(x.cpu(), plan.src_pair.cpu(), 2))
    back = tr.unpermute(y, plan, plan.weights)
    assert rel_rms(back, unpermute_ref(y.cpu(), plan.dst_row.cpu(), plan.weights.cpu())) < 1e-6
    # no tokens (a [B, 0, D] layer input on the fallbacks: the reshape once failed to infer the width of 0 rows)
    empty = mom_ops.route(torch.randn(0, 4), 2, batch_size=1)
    empty = type(empty)(*(getattr(empty, f).to(device) for f in
                          ("weights", "memory_ids", "dst_row", "src_pair", "cu_seqlens", "chunk_indices")),
                        empty.num_memories, empty.batch_size)
    assert tr.permute(torch.randn(0, 3, 5, device=device), empty).shape == (0, 3, 5)
    assert tr.unpermute(torch.randn(0, 3, 5, device=device), empty, empty.weights).shape == (0, 3, 5)


# ---- GPU only: large shapes, no host sync, CUDA graphs ----


@pytest.mark.gpu
@pytest.mark.parametrize("chunk_size", [2**31 - 1, 2**31, 2**32])
def test_gpu_route_with_a_chunk_longer_than_any_segment(chunk_size):
    """One chunk per non-empty segment, as on the CPU: the kernel's int chunk size wrapped (length + C - 1 < 0: no
    chunks; 2^32 became 0, a division by zero)."""
    need_kernel("route", "cuda")
    logits = torch.randn(100, 4)
    cpu = mom_ops.route(logits, 2, batch_size=2, chunk_size=chunk_size)
    gpu = mom_ops.route(logits.cuda(), 2, batch_size=2, chunk_size=chunk_size)
    assert torch.equal(gpu.chunk_indices.cpu(), cpu.chunk_indices.to(gpu.chunk_indices.dtype))


@pytest.mark.gpu
def test_gpu_route_without_tokens_and_with_a_bad_cu_seqlens_writes_the_whole_plan(poisoned_allocations):
    """No tokens (N = 0, B = 2): the plan's cu_seqlens is all zeros and its chunk table empty, as on the CPU (the
    CUDA kernels left them unwritten). A cu_seqlens out of order (CUDA cannot refuse it without a sync): every
    entry of the plan's cu_seqlens and chunk table is written, within [0, rows] and monotone chunk offsets."""
    need_kernel("route", "cuda")
    plan = mom_ops.route(torch.randn(0, 4, device="cuda"), 2, batch_size=2)
    ref = mom_ops.route(torch.randn(0, 4), 2, batch_size=2)
    assert torch.equal(plan.cu_seqlens.cpu(), ref.cu_seqlens) and torch.equal(plan.chunk_indices.cpu(),
                                                                               ref.chunk_indices)
    logits = torch.randn(10, 4, device="cuda")
    bad = torch.tensor([0, 5, 3, 10], dtype=torch.int32, device="cuda")
    plan = mom_ops.route(logits, 2, batch_size=3, cu_seqlens=bad)
    cu = plan.cu_seqlens.cpu()
    assert cu.min() >= 0 and cu.max() <= 20
    seg, idx = plan.chunk_indices.cpu().unbind(1)
    assert torch.all((seg == -1) == (idx == -1)) and seg.max() < 12 and idx.min() >= -1


@pytest.mark.gpu
@pytest.mark.parametrize("n, m, k, b, varlen", [(16384, 4, 2, 8, False), (5000, 64, 8, 7, True), (1025, 3, 3, 1, False)])
def test_gpu_route_large_matches_reference(n, m, k, b, varlen):
    need_kernel("route", "cuda")
    gen = torch.Generator().manual_seed(n)
    logits = torch.randn(n, m, generator=gen).to(torch.bfloat16)
    cu = None
    if varlen:
        from tests.helpers import random_cu_seqlens

        cu = random_cu_seqlens(n, b, generator=gen)
    mask = torch.rand(n, generator=gen) > 0.1
    plan = mom_ops.route(logits.cuda(), k, batch_size=b, cu_seqlens=None if cu is None else cu.cuda(), mask=mask.cuda())
    ref = route_ref(logits, k, b, cu, mask)
    assert_plan_equal(plan, ref)


@pytest.mark.gpu
def test_gpu_routing_has_no_host_sync_and_replays_in_a_graph():
    need_kernel("route", "cuda")
    N, M, K, B, D = 4096, 4, 2, 4, 256
    logits = torch.randn(N, M, device="cuda")
    x = torch.randn(N, D, device="cuda", dtype=torch.bfloat16)

    def step():
        plan = mom_ops.route(logits, K, batch_size=B)
        y = mom_ops.permute(x, plan)
        return plan, y, mom_ops.unpermute(y, plan, plan.weights)

    step()  # warm up (allocator, module load)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        plan, y, back = step()
    for seed in range(3):
        logits.copy_(torch.randn(N, M, generator=torch.Generator().manual_seed(seed)))
        graph.replay()
        ref = route_ref(logits.cpu(), K, B)
        assert torch.equal(plan.dst_row.cpu(), ref[2]) and torch.equal(plan.cu_seqlens.cpu(), ref[4])
        assert torch.equal(y.cpu(), permute_ref(x.cpu(), ref[3], K))


@pytest.mark.gpu
def test_gpu_unpermute_backward_matches_cpu():
    need_kernel("unpermute_backward", "cuda")
    logits, cu, mask = _route_inputs(300, 4, 3, [100, 0, 200], True, seed=5, device="cpu")
    plan_cpu = mom_ops.route(logits, 2, cu_seqlens=cu, mask=mask)
    plan_gpu = mom_ops.route(logits.cuda(), 2, cu_seqlens=cu.cuda(), mask=mask.cuda())
    y = torch.randn(600, 24)
    w = plan_cpu.weights.clone().requires_grad_(True)
    yg, wg = y.clone().requires_grad_(True), plan_gpu.weights.clone().requires_grad_(True)
    y.requires_grad_(True)
    gx = torch.randn(300, 24)
    mom_ops.unpermute(y, plan_cpu, w).backward(gx)
    mom_ops.unpermute(yg.cuda(), plan_gpu, wg).backward(gx.cuda())
    assert rel_rms(yg.grad, y.grad) < 1e-6 and rel_rms(wg.grad, w.grad) < 1e-5
