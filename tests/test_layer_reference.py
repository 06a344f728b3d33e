"""The naive MoM layer: prefill + decode with the cache equals one forward; padding routes nowhere."""

import torch

from mom_ops.reference import MoMConfig, init_mom_params, mom_layer_ref


def test_decode_with_cache_equals_full_forward():
    cfg = MoMConfig(hidden_size=32, num_heads=2, head_dim=8)
    p = init_mom_params(cfg, torch.Generator().manual_seed(0))
    x = torch.randn(2, 11, 32)
    full, aux, caches = mom_layer_ref(p, cfg, x)
    part, _, c = mom_layer_ref(p, cfg, x[:, :7])
    for t in range(7, 11):
        step, _, c = mom_layer_ref(p, cfg, x[:, t : t + 1], caches=c)
        torch.testing.assert_close(step[:, 0], full[:, t], rtol=1e-5, atol=1e-6)
    assert c[0].seen_tokens == 11
    assert torch.isfinite(aux) and aux > 0


def test_padding_tokens_change_nothing():
    cfg = MoMConfig(hidden_size=32, num_heads=2, head_dim=8, shared_memory=True)
    p = init_mom_params(cfg, torch.Generator().manual_seed(1))
    x = torch.randn(1, 9, 32)
    mask = torch.ones(1, 9, dtype=torch.bool)
    mask[0, 3] = False
    out, _, caches = mom_layer_ref(p, cfg, x, mask=mask)
    kept = torch.cat([x[:, :3], x[:, 4:]], 1)
    out_kept, _, caches_kept = mom_layer_ref(p, cfg, kept)
    torch.testing.assert_close(torch.cat([out[:, :3], out[:, 4:]], 1), out_kept)
    assert torch.equal(out[0, 3], torch.zeros(32))
    for a, b in zip(caches[0].states, caches_kept[0].states):
        torch.testing.assert_close(a, b)


def test_gradients_flow_to_every_parameter():
    cfg = MoMConfig(hidden_size=16, num_heads=2, head_dim=4)
    p = {k: v.requires_grad_(True) for k, v in init_mom_params(cfg, torch.Generator().manual_seed(2)).items()}
    out, aux, _ = mom_layer_ref(p, cfg, torch.randn(1, 6, 16))
    (out.square().mean() + aux).backward()
    for name, t in p.items():
        assert t.grad is not None and torch.isfinite(t.grad).all(), name
