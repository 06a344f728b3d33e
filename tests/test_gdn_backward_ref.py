"""The hand-written chunked backward (mom_ops.reference.gdn_backward, the formulas of #5's kernel) against
autograd through the per-token recurrence, in fp64."""

import pytest
import torch

from mom_ops.reference import recurrent_gated_delta_rule_ref
from mom_ops.reference.gdn_backward import chunk_gated_delta_rule_bwd_ref
from tests.helpers import cu_from_lengths, gdn_inputs, hard_gdn_inputs, recurrence_grads, rel_rms

CASES = [
    # (B, T, H, HV, K, V, lengths, decay, h0, dht, l2norm, v_first, chunk)
    (2, 37, 2, 2, 8, 6, None, "normal", True, True, True, False, 16),
    (1, 90, 1, 2, 6, 8, [1, 0, 33, 40, 16], "strong", True, True, False, False, 16),
    (1, 70, 2, 4, 8, 8, [70], "zero", False, False, True, True, 64),
    (2, 20, 1, 1, 4, 4, None, "normal", False, True, False, True, 8),
]


@pytest.mark.parametrize("case", CASES)
def test_chunked_backward_matches_autograd_of_recurrence(case):
    B, T, H, HV, K, V, lengths, decay, h0, dht, l2norm, v_first, chunk = case
    n = B if lengths is None else len(lengths)
    inp = gdn_inputs(B, T, H, K, V, HV=HV, dtype=torch.float64, decay=decay, h0=h0, n_seqs=n)
    inp = {key: t.double() for key, t in inp.items()}
    if h0 and v_first:
        inp["initial_state"] = inp["initial_state"].transpose(-1, -2).contiguous()
    cu = None if lengths is None else cu_from_lengths(lengths)
    scale = K**-0.5
    do = torch.randn(B, T, HV, V, dtype=torch.float64)
    d_ht = torch.randn(n, HV, *((V, K) if v_first else (K, V)), dtype=torch.float64) if dht else None

    leaves = {key: t.clone().requires_grad_(True) for key, t in inp.items()}
    o, ht = recurrent_gated_delta_rule_ref(**leaves, scale=scale, output_final_state=True,
                                           use_qk_l2norm_in_kernel=l2norm, state_v_first=v_first, cu_seqlens=cu)
    torch.autograd.backward((o, ht) if dht else (o,), (do, d_ht) if dht else (do,))
    got = chunk_gated_delta_rule_bwd_ref(inp["q"], inp["k"], inp["v"], inp["g"], inp["beta"], scale,
                                         inp.get("initial_state"), do, d_ht, l2norm, v_first, cu, chunk_size=chunk)
    for name, value in zip(["q", "k", "v", "g", "beta", "initial_state"], got):
        if name not in leaves:
            assert value is None
            continue
        assert rel_rms(value, leaves[name].grad) < 1e-9, name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunked_backward_with_masked_decay_rows(dtype):
    """g rows of -inf / finfo.min / -1e9 (a state reset; tests.helpers.hard_gdn_inputs): every gradient was NaN before
    the formulas floored g (as the kernels do), and dg is 0 on the floored rows."""
    inp = {key: t.to(dtype) for key, t in hard_gdn_inputs("masked").items()}
    _, _, do, d_ht, ref = recurrence_grads(inp, seed=2)
    got = chunk_gated_delta_rule_bwd_ref(inp["q"], inp["k"], inp["v"], inp["g"], inp["beta"], 32**-0.5, None,
                                         do.to(dtype), d_ht.to(dtype), True, False, None)
    for name, value in zip(["q", "k", "v", "g", "beta"], got):
        assert rel_rms(value.double(), ref[name]) < (1e-9 if dtype == torch.float64 else 1e-5), name
    assert torch.all(got[3][inp["g"] < -110] == 0)


def test_backward_splits_over_value_blocks():
    """The plan of #5's kernel (csrc/gdn/NOTES.md): the state's value columns evolve independently, so a CTA per
    V-block can run the reverse recursion alone; dq, dk, dg, dbeta are sums of per-block partials and dv, dh0 are
    per block. Checked on the hand-written backward with V split into two blocks."""
    lengths = [5, 0, 40, 19]
    inp = gdn_inputs(1, sum(lengths), 2, 8, 12, HV=2, dtype=torch.float64, decay="strong", h0=True,
                     n_seqs=len(lengths))
    inp = {key: t.double() for key, t in inp.items()}
    cu = cu_from_lengths(lengths)
    do = torch.randn(1, sum(lengths), 2, 12, dtype=torch.float64)
    d_ht = torch.randn(len(lengths), 2, 8, 12, dtype=torch.float64)

    def bwd(cols):
        return chunk_gated_delta_rule_bwd_ref(inp["q"], inp["k"], inp["v"][..., cols], inp["g"], inp["beta"], 0.3,
                                              inp["initial_state"][..., cols], do[..., cols], d_ht[..., cols],
                                              True, False, cu, chunk_size=16)

    full = bwd(slice(None))
    blocks = [bwd(slice(0, 5)), bwd(slice(5, 12))]
    for i in (0, 1, 3, 4):  # dq, dk, dg, dbeta: sums over the blocks
        assert rel_rms(blocks[0][i] + blocks[1][i], full[i]) < 1e-12
    for i in (2, 5):  # dv, dh0: each block its own columns
        assert rel_rms(torch.cat([blocks[0][i], blocks[1][i]], -1), full[i]) < 1e-12
