"""Bad input across the public API: a ValueError (or RuntimeError from autograd) naming the argument, never a crash,
a silent None gradient or a silently wrong result. The per-op files test the ordinary dtype / shape checks; these
are the cases an audit found unguarded."""

import pytest
import torch

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
    ],
)
def test_route_rejects_inconsistent_arguments(logits, kwargs, match):
    with pytest.raises(ValueError, match=match):
        mom_ops.route(logits, 2, **kwargs)


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
                                                 torch.randn(1, 5, 2, 4), g, beta)


def test_inference_ops_refuse_gradients():
    q, k, v = (torch.randn(1, 3, 1, 4, requires_grad=True) for _ in range(3))
    g, beta = torch.zeros(1, 3, 1), torch.full((1, 3, 1), 0.5)
    o, _ = mom_ops.fused_recurrent_gated_delta_rule(q, k, v, g, beta)
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
    with pytest.raises(ValueError, match=r"cache.states has shape"):
        layer(x, cache=MoMCache.empty(other, 2, "cpu"))
    no_shared = MoMAttention(16, num_heads=2, head_dim=8, shared_memory=False)
    with pytest.raises(ValueError, match=r"cache.states has shape"):
        layer(x[:, :1], cache=MoMCache.empty(no_shared, 2, "cpu"))


def test_layer_of_zero_tokens():
    layer = MoMAttention(16, num_heads=2, head_dim=8)
    out, aux = layer(torch.randn(2, 0, 16))
    assert out.shape == (2, 0, 16) and torch.isfinite(aux)
