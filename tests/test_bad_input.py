"""Bad input across the public API: a ValueError (or RuntimeError from autograd) naming the argument, never a crash,
a silent None gradient or a silently wrong result. The per-op files test the ordinary dtype / shape checks; these
are the cases an audit found unguarded."""

import pytest
import torch
import torch.utils.checkpoint  # (older torch: not imported by torch itself)

import mom_ops
from mom_ops.nn import MoMAttention, MoMCache

ops = torch.ops.mom_ops


def _plan(n=8, m=4, k=2, b=2):
    return mom_ops.route(torch.randn(n, m), k, batch_size=b)


# ---- routing: index maps out of range would read out of bounds in the CPU kernels


@pytest.mark.parametrize("which", ["src_pair", "dst_row"])
def test_permute_ops_reject_out_of_range_maps(which):
    plan = _plan()
    dst_row, src_pair = plan.dst_row.clone(), plan.src_pair.clone()
    if which == "src_pair":
        src_pair[0] = 10**6
    else:
        dst_row[0, 0] = 10**7
    x, y = torch.randn(8, 3), torch.randn(16, 3)
    with pytest.raises(ValueError, match=rf"{which}\[.*out of range"):
        ops.unpermute_backward(x, y, dst_row, src_pair, plan.weights, True)
    with pytest.raises(ValueError, match=rf"{which}\[.*out of range"):
        ops.unpermute(y, dst_row, src_pair, None)
    with pytest.raises(ValueError, match=rf"{which}\[.*out of range"):
        ops.permute(x, dst_row, src_pair)
    with pytest.raises(ValueError, match=rf"{which}\[.*out of range"):
        ops.memory_mix_fwd(torch.randn(16, 2, 4), dst_row, src_pair, plan.weights, None, None, None, 1e-6)


@pytest.mark.parametrize(
    "logits, kwargs, match",
    [
        (torch.randn(2, 5, 4), dict(mask=torch.ones(5, 2, dtype=torch.bool)), r"mask must have shape \(2, 5\)"),
        (torch.randn(2, 5, 4), dict(mask=torch.ones(2, 5, 1, dtype=torch.bool)), r"mask must have shape \(2, 5\)"),
        (torch.randn(2, 4, 4), dict(batch_size=4), "batch_size=4 disagrees with router_logits"),
        (torch.randn(8, 4), dict(cu_seqlens=torch.tensor([[0, 3, 8]], dtype=torch.int32)), "cu_seqlens must be 1-D"),
        (torch.randn(8, 4), dict(cu_seqlens=torch.tensor([0], dtype=torch.int32)), "cu_seqlens must be 1-D"),
        (torch.randn(8, 4), dict(cu_seqlens=torch.tensor(0, dtype=torch.int32)), "cu_seqlens must be 1-D"),
        (torch.randn(8, 4), dict(cu_seqlens=[0, 3, 8]), "cu_seqlens must be a torch.Tensor"),
        (torch.randn(8, 0), dict(batch_size=2), "router_logits must be .* with M >= 1"),
        (torch.empty(0, 4), dict(batch_size=2**62), r"batch_size \(\d+\) x num_memories \(4\) segments must fit"),
    ],
)
def test_route_rejects_inconsistent_arguments(logits, kwargs, match):
    with pytest.raises(ValueError, match=match):
        mom_ops.route(logits, 2, **kwargs)


def test_route_reads_no_logits_of_masked_tokens():
    """Padding tokens route nowhere: NaN in their logits (a padded x holding garbage) is not an error, NaN in a
    routed token's is."""
    logits, mask = torch.randn(2, 5, 4), torch.ones(2, 5, dtype=torch.bool)
    logits[1, 0], mask[1, 0] = float("nan"), False
    plan = mom_ops.route(logits, 2, mask=mask)
    assert torch.isfinite(plan.weights).all()
    with pytest.raises(ValueError, match="router_logits contains NaN"):
        mom_ops.route(logits, 2)


def test_a_meta_tensor_among_real_ones_is_an_error():
    """The dispatcher sends a call with any meta tensor to the fake kernels, past the real kernels' device checks:
    they check it themselves (their outputs would be uninitialised memory on the first tensor's device)."""
    x = torch.randn(1, 10, 2, 4)
    with pytest.raises(ValueError, match="cu_seqlens is on meta and q on cpu"):
        mom_ops.chunk_gated_delta_rule(x, x, x, -torch.rand(1, 10, 2), torch.rand(1, 10, 2),
                                       cu_seqlens=torch.tensor([0, 4, 10], device="meta"))
    with pytest.raises(ValueError, match="cu_seqlens is on meta and router_logits on cpu"):
        mom_ops.route(torch.randn(8, 4), 2, cu_seqlens=torch.tensor([0, 3, 8], device="meta"))
    m = x.to("meta")  # all on meta: shapes only, as torch.compile's tracing uses them
    o, _ = mom_ops.chunk_gated_delta_rule(m, m, m, -torch.rand(1, 10, 2, device="meta"),
                                          torch.rand(1, 10, 2, device="meta"))
    assert o.device.type == "meta" and o.shape == x.shape


def test_permute_of_zero_tokens():
    plan = mom_ops.route(torch.randn(0, 4), 2, batch_size=1)
    assert mom_ops.permute(torch.randn(0, 3), plan).shape == (0, 3)
    assert mom_ops.unpermute(torch.randn(0, 3), plan).shape == (0, 3)
    with pytest.raises(ValueError, match="x must have 0 rows"):
        mom_ops.permute(torch.tensor(1.0), plan)


# ---- scans and decoding


def test_scan_rejects_zero_heads_or_head_dim():
    g, beta = torch.zeros(1, 5, 2), torch.ones(1, 5, 2)
    with pytest.raises(ValueError, match="H >= 1 heads of dim K >= 1"):
        mom_ops.chunk_gated_delta_rule(torch.randn(1, 5, 2, 0), torch.randn(1, 5, 2, 0), torch.randn(1, 5, 2, 4), g,
                                       beta)
    with pytest.raises(ValueError, match="H >= 1 heads of dim K >= 1"):
        mom_ops.fused_recurrent_gated_delta_rule(torch.randn(1, 5, 0, 4), torch.randn(1, 5, 0, 4),
                                                 torch.randn(1, 5, 2, 4), g, beta=beta)


def test_scalar_states_and_weights_name_their_argument():
    x = torch.randn(1, 10, 2, 4)
    with pytest.raises(ValueError, match=r"initial_state must be \[N, HV, K, V\]"):
        mom_ops.chunk_gated_delta_rule(x, x, x, -torch.rand(1, 10, 2), torch.rand(1, 10, 2),
                                       initial_state=torch.tensor(0.0), cu_seqlens=torch.tensor([0, 4, 10]))
    args = [torch.randn(2, 2, 4), torch.randn(2, 3, 2, 4), torch.randn(2, 3, 2, 4), -torch.rand(2, 3, 2),
            torch.rand(2, 3, 2), torch.rand(2, 3), torch.zeros(2, 3, dtype=torch.int32), torch.tensor(0.0)]
    with torch.no_grad(), pytest.raises(ValueError, match="state_pool must have 4 dims"):
        mom_ops.mom_decode_step(*args)
    with torch.no_grad(), pytest.raises(ValueError, match=r"q must be \[N, H, K\] or \[N, J, H, K\]"):
        mom_ops.mom_decode_step(torch.randn(2, 3, 2, 4, 1), *args[1:7], torch.zeros(6, 2, 4, 4))
    with pytest.raises(ValueError, match=r"weights\[0\] must be a \[C, W\] tensor"):
        mom_ops.segment_conv_columns(torch.randn(10, 6), [torch.tensor(1.0)], torch.tensor([0, 10]))
    a = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"grad_a must have shape \[4, 2\]"):
        ops.gdn_gating_bwd(torch.randn(4, 2), torch.randn(4, 2), a, a.clone(), torch.randn(2), torch.randn(2),
                           torch.tensor(0.0), torch.empty(4, 2))


def test_inference_ops_refuse_gradients():
    q, k, v = (torch.randn(1, 3, 1, 4, requires_grad=True) for _ in range(3))
    g, beta = torch.zeros(1, 3, 1), torch.full((1, 3, 1), 0.5)
    o, _ = mom_ops.fused_recurrent_gated_delta_rule(q, k, v, g, beta=beta)
    with pytest.raises(RuntimeError, match="no backward"):
        o.sum().backward()
    pool = torch.zeros(2, 1, 4, 4, requires_grad=True)
    args = (torch.randn(1, 1, 4), torch.randn(1, 1, 1, 4), torch.randn(1, 1, 1, 4), torch.zeros(1, 1, 1),
            torch.ones(1, 1, 1), torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.int32), pool)
    with pytest.raises(ValueError, match="no backward"):
        mom_ops.mom_decode_step(*args)
    with torch.no_grad():
        mom_ops.mom_decode_step(*args)  # fine for inference


# ---- the layer


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(conv_size=0), "conv_size must be in"),
        (dict(conv_size=9), "conv_size must be in"),
        (dict(num_heads=0), "num_heads must be >= 1"),
        (dict(head_dim=0), "head_dim must be >= 1"),
        (dict(expand_v=0), "expand_v must be >= 1"),
    ],
)
def test_layer_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MoMAttention(**{**dict(hidden_size=16, num_heads=2, head_dim=8), **kwargs})


def test_layer_rejects_a_transposed_mask_and_a_foreign_cache():
    layer = MoMAttention(16, num_heads=2, head_dim=8)
    x = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match=r"attention_mask must be \[B, T\]"):
        layer(x, attention_mask=torch.ones(5, 2))
    other = MoMAttention(16, num_heads=2, head_dim=8, num_memories=5, topk=2)
    with pytest.raises(ValueError, match=r"cache.num_memories is 5, this layer's 4"):
        layer(x, cache=MoMCache.empty(other, 2, "cpu"))
    no_shared = MoMAttention(16, num_heads=2, head_dim=8, shared_memory=False)
    with pytest.raises(ValueError, match=r"cache.shared_memory is False, this layer's True"):
        layer(x[:, :1], cache=MoMCache.empty(no_shared, 2, "cpu"))
    # a cache built by hand records no layout: its shapes are checked
    hand_made = MoMCache(*(getattr(MoMCache.empty(other, 2, "cpu"), f) for f in
                           ("states", "conv_q", "conv_k", "conv_v", "seen_tokens")))
    with pytest.raises(ValueError, match=r"cache.states has shape"):
        layer(x, cache=hand_made)


def test_layer_of_zero_tokens():
    layer = MoMAttention(16, num_heads=2, head_dim=8)
    out, aux = layer(torch.randn(2, 0, 16))
    assert out.shape == (2, 0, 16) and torch.isfinite(aux)


def test_layer_names_the_cache_field():
    """A cache of the right shapes but the wrong dtype, layout or device: the error names the cache's field (the ops
    would name their own arguments); an integer conv history would truncate the inputs in decoding."""
    layer = MoMAttention(16, num_heads=2, head_dim=8)
    x = torch.randn(2, 1, 16)
    with pytest.raises(ValueError, match="dtype .* must be a floating-point type"):
        MoMCache.empty(layer, 2, "cpu", dtype=torch.int32)
    for field, bad, match in (("conv_k", lambda t: t.int(), "cache.conv_k must be floating-point"),
                              ("states", lambda t: t.double(), "cache.states must be float32"),
                              ("states", lambda t: t.transpose(2, 3).contiguous().transpose(2, 3),
                               "cache.states must be contiguous"),
                              ("conv_v", lambda t: t.to("meta"), "cache.conv_v is on meta")):
        cache = MoMCache.empty(layer, 2, "cpu")
        setattr(cache, field, bad(getattr(cache, field)))
        with torch.no_grad(), pytest.raises(ValueError, match=match):
            layer(x, cache=cache)


def test_layer_ignores_what_padding_holds():
    """NaN in padded positions of x: the padding's output is 0 and every gradient finite, as with zero padding."""
    layer = MoMAttention(16, num_heads=2, head_dim=8)
    x, mask = torch.randn(2, 6, 16), torch.ones(2, 6, dtype=torch.bool)
    mask[1, :2] = False
    results = []
    for fill in (0.0, float("nan")):
        layer.zero_grad(set_to_none=True)
        xg = x.masked_fill(~mask[..., None], fill).requires_grad_(True)
        out, aux = layer(xg, attention_mask=mask)
        (out.sum() + aux).backward()
        results.append([out, xg.grad] + [p.grad for p in layer.parameters()])
    assert (results[1][0][~mask] == 0).all()
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


# ---- autograd: no double backward through the ops' backward kernels


def _double_backward(fn, *inputs, linear=False):
    """grad of (grad of a loss of fn(inputs))^2, through create_graph; the loss sum(out^2), or with linear
    sum(out * c), whose incoming gradient c carries no graph (the second derivative then runs through the saved
    tensors alone)."""
    out = fn(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    loss = (out.float() * torch.randn(out.shape, dtype=torch.float64)).sum() if linear else (out.float() ** 2).sum()
    grads = torch.autograd.grad(loss, inputs, create_graph=True)
    return torch.autograd.grad(sum((g ** 2).sum() for g in grads), inputs)


def test_double_backward_is_an_error_not_a_wrong_value():
    """The *_bwd kernels have no autograd: a double backward through them got zeros (route) or wrong values (the scan)
    from autograd's fallback. Their backwards are once-differentiable now, so it raises; permute's, which is an op
    with its own backward (unpermute), still differentiates."""
    d = torch.float64
    x = torch.randn(1, 6, 1, 3, dtype=d)
    g, beta = -torch.rand(1, 6, 1, dtype=d), torch.rand(1, 6, 1, dtype=d)
    plan = mom_ops.route(torch.randn(6, 4, dtype=d), 2, batch_size=1)
    a = torch.randn(6, 2, dtype=d)
    cases = {
        "chunk_gated_delta_rule": (lambda q: mom_ops.chunk_gated_delta_rule(q, x, x, g, beta), x.clone()),
        "route": (lambda lg: mom_ops.route(lg, 2, batch_size=1).weights, torch.randn(6, 4, dtype=d)),
        "unpermute (weights)": (lambda w: mom_ops.unpermute(torch.randn(12, 3, dtype=d), plan, w),
                                plan.weights.clone()),
        "segment_conv": (lambda w: mom_ops.segment_conv(torch.randn(6, 3, dtype=d), w, torch.tensor([0, 6])),
                         torch.randn(3, 4, dtype=d)),
        "gdn_gating": (lambda a_: mom_ops.gdn_gating(a_, a, torch.zeros(2, dtype=d), torch.zeros(2, dtype=d)), a),
        "memory_mix": (lambda o: mom_ops.memory_mix(o, plan, norm_weight=torch.ones(3, dtype=d)),
                       torch.randn(12, 1, 3, dtype=d)),
    }
    for fn, inp in cases.values():
        for linear in (False, True):
            with pytest.raises(RuntimeError, match="double backward .* is not supported"):
                _double_backward(fn, inp.clone().requires_grad_(True), linear=linear)
    y = torch.randn(6, 3, dtype=d, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: mom_ops.permute(t, plan), (y,))


def test_checkpointed_scan_with_create_graph():
    """A first derivative with create_graph through non-reentrant checkpointing (saved-tensor hooks that allow one
    unpack): the double-backward guard unpacks the saved tensors once."""
    x = torch.randn(1, 6, 1, 3, dtype=torch.float64)
    g, beta = -torch.rand(1, 6, 1, dtype=torch.float64), torch.rand(1, 6, 1, dtype=torch.float64)
    q = x.clone().requires_grad_(True)
    scan = lambda q_: mom_ops.chunk_gated_delta_rule(q_, x, x, g, beta)[0]  # noqa: E731
    o = torch.utils.checkpoint.checkpoint(scan, q, use_reentrant=False)
    (dq,) = torch.autograd.grad((o * x).sum(), q, create_graph=True)
    (want,) = torch.autograd.grad((scan(q) * x).sum(), q)
    torch.testing.assert_close(dq.detach(), want)
