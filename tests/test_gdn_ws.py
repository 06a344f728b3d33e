"""The warp-specialised CUDA forward (csrc/gdn/gdn_fwd_ws_kernel.cuh: K = 128, V a multiple of 128, taken where the
split forward is not, for inference and training; MOM_OPS_GDN_WS=0 keeps the fused kernel) against the fp32 recurrence
and the fused forward. GPU only."""

import pytest
import torch

import mom_ops
from mom_ops.reference import recurrent_gated_delta_rule_ref
from tests.helpers import gdn_inputs, need_kernel, rel_rms
from tests.test_gdn import GPU_CASES, _run


def _ws_and_fused(inp, lengths, monkeypatch, state_v_first=False):
    """(o, ht) of the warp-specialised forward, then of the fused one, on CUDA copies of inp."""
    gpu = {key: t.cuda() for key, t in inp.items()}
    monkeypatch.setenv("MOM_OPS_GDN_SPLIT", "0")
    monkeypatch.setenv("MOM_OPS_GDN_WS", "1")
    ws = _run(mom_ops.chunk_gated_delta_rule, gpu, lengths, state_v_first)
    monkeypatch.setenv("MOM_OPS_GDN_WS", "0")
    fused = _run(mom_ops.chunk_gated_delta_rule, gpu, lengths, state_v_first)
    return ws, fused


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", [c for c in GPU_CASES if c[4] == 128])
def test_ws_forward_matches_recurrence_and_fused(case, dtype, monkeypatch):
    need_kernel("chunk_gated_delta_rule_fwd", "cuda")
    B, T, H, HV, D, lengths, decay, beta_range, h0 = case
    n = B if lengths is None else len(lengths)
    inp = gdn_inputs(B, T, H, D, D, HV=HV, dtype=dtype, decay=decay, beta_range=beta_range, h0=h0, n_seqs=n)
    o_ref, ht_ref = _run(recurrent_gated_delta_rule_ref, inp, lengths, False)
    (o, ht), (o_fused, ht_fused) = _ws_and_fused(inp, lengths, monkeypatch)
    assert rel_rms(o, o_ref) < 5e-3 and rel_rms(ht, ht_ref) < 5e-3
    assert rel_rms(o, o_fused) < 3e-3 and rel_rms(ht, ht_fused) < 3e-3


@pytest.mark.gpu
@pytest.mark.parametrize("V, H, HV, dtype, state_v_first", [(256, 1, 2, torch.bfloat16, False),
                                                            (128, 2, 4, torch.float16, True),
                                                            (384, 2, 2, torch.bfloat16, True)])
def test_ws_forward_value_blocks_layouts_short_segments(V, H, HV, dtype, state_v_first, monkeypatch):
    """Several 128-column V-blocks per head, GVA, both state layouts, short, empty and multi-chunk segments, no
    cu_seqlens past the last segment's end (rows there are zero)."""
    need_kernel("chunk_gated_delta_rule_fwd", "cuda")
    lengths = [130, 0, 64, 7, 1, 260]
    inp = gdn_inputs(1, sum(lengths) + 5, H, 128, V, HV=HV, dtype=dtype, h0=True, n_seqs=len(lengths))
    o_ref, ht_ref = _run(recurrent_gated_delta_rule_ref, inp, lengths, False)
    if state_v_first:
        inp["initial_state"] = inp["initial_state"].transpose(-1, -2).contiguous()
    (o, ht), _ = _ws_and_fused(inp, lengths, monkeypatch, state_v_first)
    if state_v_first:
        ht = ht.transpose(-1, -2)
    assert rel_rms(o, o_ref) < 5e-3 and rel_rms(ht, ht_ref) < 5e-3
    assert torch.all(o[:, sum(lengths):] == 0)


@pytest.mark.gpu
def test_ws_forward_nan_stays_in_its_segment(monkeypatch):
    """A NaN in one segment's v poisons that segment's outputs, not its neighbours' (rows past a segment's end are
    zero-filled in shared memory, never read from the next segment)."""
    need_kernel("chunk_gated_delta_rule_fwd", "cuda")
    lengths = [100, 90]
    inp = gdn_inputs(1, sum(lengths), 2, 128, 128, HV=2, dtype=torch.bfloat16, h0=True, n_seqs=2)
    inp["v"][0, 120] = float("nan")
    (o, ht), _ = _ws_and_fused(inp, lengths, monkeypatch)
    assert torch.isfinite(o[:, :100]).all() and torch.isfinite(ht[0]).all()
    assert torch.isnan(o[:, 120:]).any() and torch.isnan(ht[1]).any()


@pytest.mark.gpu
@pytest.mark.parametrize("V, lengths", [(128, [300, 0, 65, 1]), (256, [200, 64])])
def test_ws_training_forward_gives_the_split_gradients(V, lengths, monkeypatch):
    """The training forward on the warp-specialised kernel (the default where the inference forward takes it;
    MOM_OPS_GDN_WS_TRAIN=1 asks for it explicitly here), whose saves (chunk states, W, V_new, T) the backward reads:
    the gradients must be the split forward's (up to rounding), and o, ht the inference kernel's bit for bit."""
    need_kernel("chunk_gated_delta_rule_bwd", "cuda")
    n = len(lengths)
    inp = gdn_inputs(1, sum(lengths), 2, 128, V, HV=4, dtype=torch.bfloat16, decay="strong", h0=True, n_seqs=n)
    do = torch.randn(1, sum(lengths), 4, V, device="cuda", dtype=torch.bfloat16)
    dht = torch.randn(n, 4, 128, V, device="cuda")

    def run():
        leaves = {key: t.cuda().detach().requires_grad_(True) for key, t in inp.items()}
        o, ht = _run(mom_ops.chunk_gated_delta_rule, leaves, lengths, False)
        torch.autograd.backward((o, ht), (do, dht))
        return o.detach(), ht.detach(), {key: t.grad.float() for key, t in leaves.items()}

    monkeypatch.setenv("MOM_OPS_GDN_SPLIT", "1")
    _, _, split = run()
    monkeypatch.setenv("MOM_OPS_GDN_SPLIT", "0")
    monkeypatch.setenv("MOM_OPS_GDN_WS_TRAIN", "1")
    o, ht, ws = run()
    for key in split:
        assert torch.isfinite(ws[key]).all(), key
        assert rel_rms(ws[key], split[key]) < 5e-3, (key, rel_rms(ws[key], split[key]))
    with torch.no_grad():
        o_inf, ht_inf = _run(mom_ops.chunk_gated_delta_rule, {key: t.cuda() for key, t in inp.items()}, lengths, False)
    assert torch.equal(o, o_inf) and torch.equal(ht, ht_inf)


@pytest.mark.gpu
def test_ws_forward_more_than_65535_ctas(monkeypatch):
    """70000 one-token sequences (70000 CTAs in x, one row each): equal to the fused kernel's outputs."""
    need_kernel("chunk_gated_delta_rule_fwd", "cuda")
    n = 70000
    inp = gdn_inputs(1, n, 1, 128, 128, dtype=torch.bfloat16, device="cuda")
    (o, ht), (o_fused, ht_fused) = _ws_and_fused(inp, [1] * n, monkeypatch)
    assert rel_rms(o, o_fused) < 3e-3 and rel_rms(ht, ht_fused) < 3e-3


@pytest.mark.gpu
@pytest.mark.parametrize("split", ["0", "1"])
def test_forward_takes_views_at_odd_offsets(split, monkeypatch):
    """q, k, v as contiguous views two bytes into their storage (the kernels read them in 16-byte copies): the same
    outputs as from aligned tensors, on the warp-specialised (split = 0) and the split forward."""
    need_kernel("chunk_gated_delta_rule_fwd", "cuda")
    monkeypatch.setenv("MOM_OPS_GDN_SPLIT", split)
    lengths = [100, 90]
    inp = {key: t.cuda() for key, t in gdn_inputs(1, 190, 2, 128, 128, HV=2, dtype=torch.bfloat16, h0=True,
                                                    n_seqs=2).items()}

    def at_odd_offset(t):
        view = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:].view(t.shape)
        view.copy_(t)
        return view

    o, ht = _run(mom_ops.chunk_gated_delta_rule, inp, lengths, False)
    shifted = dict(inp, q=at_odd_offset(inp["q"]), k=at_odd_offset(inp["k"]), v=at_odd_offset(inp["v"]))
    assert shifted["q"].data_ptr() % 16 != 0 and shifted["q"].is_contiguous()
    o2, ht2 = _run(mom_ops.chunk_gated_delta_rule, shifted, lengths, False)
    assert torch.equal(o, o2) and torch.equal(ht, ht2)
