"""The reference of the scan with long sequences cut into pieces (mom_ops/reference/gdn_pieces.py) against the
chunked reference: where it cuts, the warm-up's missed state is below fp32 rounding; where it may not, it does not."""

import math

import pytest
import torch
import torch.nn.functional as F

from mom_ops.reference.gdn import chunk_gated_delta_rule_ref
from mom_ops.reference.gdn_pieces import LOG_EPS, chunk_gated_delta_rule_pieces_ref, piece_runs


def _inputs(lengths, H=2, K=16, V=8, decay=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    q, k = (torch.randn(1, T, H, K, generator=gen) for _ in range(2))
    v = torch.randn(1, T, H, V, generator=gen)
    g = F.logsigmoid(torch.randn(1, T, H, generator=gen)) * decay
    beta = torch.rand(1, T, H, generator=gen)
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    h0 = torch.randn(len(lengths), H, K, V, generator=gen)
    return dict(q=q, k=k, v=v, g=g, beta=beta, initial_state=h0, cu_seqlens=cu)


def _rel(x, ref):
    return ((x - ref).norm() / ref.norm()).item()


def test_piece_runs_rule():
    # chunks of -10 each: the first boundary reaches -20 <= ln 2^-24 with two chunks, which is the sequence start
    assert piece_runs(torch.full((4,), -10.0), torch.ones(4, dtype=torch.bool), 2, 4) == [(0, 0, 2), (0, 2, 4)]
    # -20 per chunk: one warm-up chunk per boundary
    assert piece_runs(torch.full((6,), -20.0), torch.ones(6, dtype=torch.bool), 2, 1) == \
        [(0, 0, 2), (1, 2, 4), (3, 4, 6)]
    # too slow a decay, and the start out of reach: no cut
    assert piece_runs(torch.full((6,), -1.0), torch.ones(6, dtype=torch.bool), 2, 1) is None
    # a beta outside [0, 2] in the warm-up window: no bound there
    ok = torch.ones(6, dtype=torch.bool)
    ok[3] = False
    assert piece_runs(torch.full((6,), -20.0), ok, 2, 1) is None
    assert LOG_EPS == pytest.approx(-24 * math.log(2))


@pytest.mark.parametrize("state_v_first", [False, True])
def test_cut_where_the_decay_allows_and_exact_to_fp32(state_v_first):
    inp = _inputs([700, 1, 0, 1300], decay=1.0)  # ~-51 per chunk: one warm-up chunk
    if state_v_first:
        inp["initial_state"] = inp["initial_state"].transpose(-1, -2).contiguous()
    kw = dict(use_qk_l2norm_in_kernel=True, output_final_state=True, state_v_first=state_v_first)
    o_ref, ht_ref = chunk_gated_delta_rule_ref(**inp, **kw)
    o, ht, plan = chunk_gated_delta_rule_pieces_ref(**inp, **kw, piece_chunks=3, max_warmup_chunks=2)
    long_runs = plan[3, 0]
    assert long_runs is not None and len(long_runs) == 7  # 21 chunks in pieces of 3
    assert all(run_start == first - 1 for run_start, first, _ in long_runs[1:])
    assert _rel(o, o_ref) < 1e-5 and _rel(ht, ht_ref) < 1e-5


def test_not_cut_where_the_decay_is_slow():
    inp = _inputs([1500, 900], decay=1e-3)
    kw = dict(use_qk_l2norm_in_kernel=True, output_final_state=True)
    o_ref, ht_ref = chunk_gated_delta_rule_ref(**inp, **kw)
    o, ht, plan = chunk_gated_delta_rule_pieces_ref(**inp, **kw, piece_chunks=4, max_warmup_chunks=4)
    assert all(runs is None for runs in plan.values())
    assert _rel(o, o_ref) < 1e-6 and _rel(ht, ht_ref) < 1e-6


def test_not_cut_without_the_norm_bound():
    inp = _inputs([1500], decay=1.0)
    o_ref, _ = chunk_gated_delta_rule_ref(**inp)  # no in-kernel l2norm: ||k|| is not bounded
    o, _, plan = chunk_gated_delta_rule_pieces_ref(**inp, piece_chunks=4, max_warmup_chunks=4)
    assert all(runs is None for runs in plan.values())
    assert _rel(o, o_ref) < 1e-6
    inp["beta"][0, 100:1500, 1] = 2.5  # head 1: beta out of [0, 2] in every window
    o, _, plan = chunk_gated_delta_rule_pieces_ref(**inp, use_qk_l2norm_in_kernel=True, piece_chunks=4,
                                                   max_warmup_chunks=4)
    assert plan[0, 0] is not None and plan[0, 1] is None


def test_a_cut_without_enough_decay_is_what_the_rule_prevents():
    """With the rule's threshold raised to 0 (any warm-up accepted), a slowly decaying head is visibly wrong: the
    threshold is what keeps the cut exact."""
    inp = _inputs([2000], decay=0.01)
    kw = dict(use_qk_l2norm_in_kernel=True)
    o_ref, _ = chunk_gated_delta_rule_ref(**inp, **kw)
    o, _, plan = chunk_gated_delta_rule_pieces_ref(**inp, **kw, piece_chunks=4, max_warmup_chunks=1, log_eps=0.0)
    assert all(runs is not None for runs in plan.values())
    assert _rel(o, o_ref) > 1e-2
