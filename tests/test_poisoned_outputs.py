"""Every output element is written: run the ops with torch's deterministic mode, which fills each freshly
allocated tensor with NaN (floats) or the largest integer (ints), so an unwritten row shows up."""

import pytest
import torch

import mom_ops
from tests.helpers import cu_from_lengths, device_param, gdn_inputs, need_kernel


def _assert_written(t: torch.Tensor, name: str):
    if t.is_floating_point():
        assert torch.isfinite(t).all(), f"{name} has unwritten (NaN) entries"
    else:
        assert (t != torch.iinfo(t.dtype).max).all(), f"{name} has unwritten entries"


@pytest.mark.parametrize("device", device_param())
def test_routing_and_readout_write_every_output(device, poisoned_allocations):
    need_kernel("route", device)
    need_kernel("memory_mix_bwd", device)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(130, 4, generator=gen).to(device)
    mask = (torch.rand(130, generator=gen) > 0.3).to(device)  # masked tokens leave unused rows at the end
    cu = cu_from_lengths([60, 0, 70]).to(device)
    plan = mom_ops.route(logits, 2, cu_seqlens=cu, mask=mask)
    for name in ("weights", "memory_ids", "dst_row", "src_pair", "cu_seqlens", "chunk_indices"):
        _assert_written(getattr(plan, name), name)
    x = torch.randn(130, 24, device=device, requires_grad=True)
    y = mom_ops.permute(x, plan)
    _assert_written(y, "permute")
    w = plan.weights.clone().requires_grad_(True)
    back = mom_ops.unpermute(y, plan, w)
    _assert_written(back, "unpermute")
    back.sum().backward()
    _assert_written(x.grad, "permute grad")
    o = torch.randn(260, 2, 8, device=device, requires_grad=True)
    shared, gate = torch.randn(130, 2, 8, device=device), torch.randn(130, 2, 8, device=device)
    out = mom_ops.memory_mix(o, plan, w, shared=shared, norm_weight=torch.ones(8, device=device), gate=gate)
    _assert_written(out, "memory_mix")
    out.sum().backward()
    _assert_written(o.grad, "memory_mix grad (incl. unused rows)")


@pytest.mark.parametrize("device", device_param())
def test_scan_writes_every_output(device, poisoned_allocations):
    need_kernel("chunk_gated_delta_rule_fwd", device)
    D = 64 if device == "cuda" else 16
    inp = gdn_inputs(1, 150, 2, D, D, dtype=torch.bfloat16 if device == "cuda" else torch.float32, h0=True,
                     n_seqs=4, device=device)
    cu = cu_from_lengths([1, 0, 63, 70]).to(device)  # rows 134..149 belong to no sequence: o must be 0 there
    o, ht = mom_ops.chunk_gated_delta_rule(**inp, cu_seqlens=cu, output_final_state=True,
                                           use_qk_l2norm_in_kernel=True)
    _assert_written(o, "o")
    _assert_written(ht, "final state")
    assert torch.equal(o[0, 134:].float().cpu(), torch.zeros(16, 2, D))


@pytest.mark.parametrize("device", device_param())
def test_gating_writes_every_output(device, poisoned_allocations):
    """gdn_gating over 300 heads (two column tiles on CUDA, the second partly used) and rows that leave the last CTA
    partly used: g, beta, grad_a, grad_b and the parameter gradients."""
    need_kernel("gdn_gating_bwd", device)
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(77, 300, generator=gen).to(device).requires_grad_(True) for _ in range(2))
    A_log, dt_bias = (torch.randn(300, generator=gen).to(device).requires_grad_(True) for _ in range(2))
    g, beta = mom_ops.gdn_gating(a, b, A_log, dt_bias)
    _assert_written(g, "g")
    _assert_written(beta, "beta")
    torch.autograd.backward([g, beta], [torch.ones_like(g), torch.ones_like(beta)])
    for name, t in (("grad_a", a.grad), ("grad_b", b.grad), ("grad_A_log", A_log.grad), ("grad_dt_bias", dt_bias.grad)):
        _assert_written(t, name)
