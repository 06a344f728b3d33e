"""MoMAttention.from_fla: fla's MomAttention weights in our layer (skipped where fla is not installed)."""

import pytest
import torch

from mom_ops.nn import MoMAttention
from tests.helpers import need_kernel, rel_rms

fla_mom = pytest.importorskip("fla.layers.mom", reason="fla is not installed")


def _fla_layer(**kw):
    torch.manual_seed(0)
    cfg = dict(hidden_size=64, head_dim=16, num_heads=2, expand_v=1, num_memories=4, topk=2, shared_mem=True,
               norm_eps=1e-6)
    cfg.update(kw)
    return fla_mom.MomAttention(**cfg).eval()


def test_from_fla_copies_every_weight():
    fla_layer = _fla_layer()
    ours = MoMAttention.from_fla(fla_layer)
    theirs = dict(fla_layer.named_parameters())
    mine = ours.reference_params()
    assert torch.equal(mine["k_proj"][2], theirs["k_proj.2.weight"])
    assert torch.equal(mine["a_proj"][3], theirs["a_proj.3.weight"])
    assert torch.equal(mine["v_conv"], theirs["v_conv1d.weight"][:, 0])
    assert torch.equal(mine["shared_b"], theirs["shared_b.weight"])
    assert sum(t.numel() for t in mine.values()) == sum(t.numel() for t in theirs.values())
    assert ours.norm_eps == fla_layer.o_norm.eps


def test_from_fla_rejects_unsupported_configs():
    with pytest.raises(ValueError, match="single_kv_proj"):
        MoMAttention.from_fla(_fla_layer(single_kv_proj=True))


@pytest.mark.gpu
def test_gpu_from_fla_matches_fla_in_eval_mode():
    """fla is correct in eval mode (per-segment conv); outputs and input gradients must agree there."""
    need_kernel("chunk_gated_delta_rule_fwd", "cuda")
    need_kernel("chunk_gated_delta_rule_bwd", "cuda")
    fla_layer = _fla_layer(hidden_size=256, head_dim=64, num_heads=4).cuda()
    ours = MoMAttention.from_fla(fla_layer).eval()
    x = torch.randn(2, 300, 256, device="cuda")
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    out_fla = fla_layer(xs[0])[0]
    out_ours, _ = ours(xs[1])
    assert rel_rms(out_ours, out_fla) < 5e-3
    dy = torch.randn_like(out_fla)
    out_fla.backward(dy)
    out_ours.backward(dy)
    assert rel_rms(xs[1].grad, xs[0].grad) < 1e-2
