"""Long sequences cut into pieces (csrc/gdn/scan_pieces.cuh). CPU: the rule's fp32 reference
(mom_ops/reference/gdn_pieces.py) against the chunked reference: where it cuts, the warm-up's missed state is below
fp32 rounding; where it may not, it does not. The exact cut (mom_ops/reference/gdn_exact_pieces.py: each piece's
affine map, a serial pass over the pieces) against the chunked reference at any decay. GPU: the CUDA forward (pieces
are its default) against the kernels it is made of, unsplit."""

import math

import pytest
import torch
import torch.nn.functional as F

import mom_ops
from mom_ops.reference.gdn import chunk_gated_delta_rule_ref
from mom_ops.reference.gdn import _prepare, chunk_step
from mom_ops.reference.gdn_exact_pieces import chunk_gated_delta_rule_exact_pieces_ref, piece_maps
from mom_ops.reference.gdn_pieces import LOG_EPS, chunk_gated_delta_rule_pieces_ref, piece_plan, piece_runs
from tests.helpers import need_kernel, rel_rms


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


def test_piece_maps_are_the_pieces_affine_maps():
    """pass 1 of the exact cut: a piece's chain from any start state S ends at Phi S + L (fp64)."""
    inp = {key: x.double() for key, x in _inputs([300], K=16, V=8, decay=0.01).items()}
    q, k, v, g, beta, scale, _, _ = _prepare(inp["q"], inp["k"], inp["v"], inp["g"], inp["beta"], None, None, True,
                                             False, None)
    seq = [x[0] for x in (q, k, v, g, beta)]
    bounds = [0, 64, 128, 192, 256, 300]
    local, phi = piece_maps(*seq, scale, bounds, (1, 5))  # chunks 1..4, the last one partial
    S = torch.randn(2, 16, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    S_end = S
    for c in range(1, 5):
        sl = slice(bounds[c], bounds[c + 1])
        _, S_end = chunk_step(*(x[sl] for x in seq), S_end, scale)
    assert _rel(phi @ S + local, S_end) < 1e-12


@pytest.mark.parametrize("decay, l2norm", [(1.0, True), (0.02, True), (0.001, True), (0.001, False), (0.0, True)])
def test_exact_pieces_match_the_unsplit_scan(decay, l2norm):
    """The exact cut gives the unsplit scan's o and final state at every decay, also where the warm-up rule cannot
    cut (slow decay) or has no bound (no in-kernel norm): fp64 to rounding, fp32 to its rounding. Varlen with an
    empty and a one-row sequence, h0, pieces of 3 chunks."""
    inp = _inputs([700, 1, 0, 1300], decay=decay)
    if not l2norm:  # unit rows instead of the in-kernel norm (random rows make the recurrence blow up)
        inp["q"], inp["k"] = F.normalize(inp["q"], dim=-1), F.normalize(inp["k"], dim=-1)
    kw = dict(use_qk_l2norm_in_kernel=l2norm, output_final_state=True)
    if decay <= 0.02 and l2norm:
        assert piece_plan(inp["g"], inp["beta"], inp["cu_seqlens"], True, 3, 2)[3, 0] is None  # the rule refuses
    for dtype, tol in ((torch.float64, 1e-13), (torch.float32, 2e-6)):
        x = {key: (t.to(dtype) if t.is_floating_point() else t) for key, t in inp.items()}
        o_ref, ht_ref = chunk_gated_delta_rule_ref(**x, **kw)
        o, ht, starts = chunk_gated_delta_rule_exact_pieces_ref(**x, **kw, piece_chunks=3)
        assert _rel(o, o_ref) < tol and _rel(ht, ht_ref) < tol, dtype
        assert [s.shape[0] for s in starts] == [4, 1, 1, 7]  # 11, 1, 0 and 21 chunks in pieces of 3


def test_a_cut_without_enough_decay_is_what_the_rule_prevents():
    """With the rule's threshold raised to 0 (any warm-up accepted), a slowly decaying head is visibly wrong: the
    threshold is what keeps the cut exact."""
    inp = _inputs([2000], decay=0.01)
    kw = dict(use_qk_l2norm_in_kernel=True)
    o_ref, _ = chunk_gated_delta_rule_ref(**inp, **kw)
    o, _, plan = chunk_gated_delta_rule_pieces_ref(**inp, **kw, piece_chunks=4, max_warmup_chunks=1, log_eps=0.0)
    assert all(runs is not None for runs in plan.values())
    assert _rel(o, o_ref) > 1e-2


# ---------------------------------------------------------------- the CUDA forward in pieces (off: MOM_OPS_GDN_PIECES=0)


def _cuda_inputs(lengths, H, HV, weak_heads=(), seed=0, weak_scale=1e-3):
    """bf16 inputs at K = V = 128 on the GPU; the decay is the bench's (logsigmoid(randn), ~-51 per chunk) except on
    weak_heads, where it is scaled by weak_scale (1e-3: so slow that those heads are not cut)."""
    inp = _inputs(lengths, H=H, K=128, V=128, seed=seed)
    inp["v"] = torch.randn(1, sum(lengths), HV, 128, generator=torch.Generator().manual_seed(seed + 1))
    inp["g"] = F.logsigmoid(torch.randn(1, sum(lengths), HV, generator=torch.Generator().manual_seed(seed + 2)))
    inp["beta"] = torch.rand(1, sum(lengths), HV, generator=torch.Generator().manual_seed(seed + 3))
    inp["initial_state"] = torch.randn(len(lengths), HV, 128, 128, generator=torch.Generator().manual_seed(seed + 4))
    for hv in weak_heads:
        inp["g"][..., hv] *= weak_scale
    for name in ("q", "k", "v"):
        inp[name] = inp[name].to(torch.bfloat16)
    return {name: t.cuda() for name, t in inp.items()}


def _forward(inp, monkeypatch, env, **kw):
    for name in ("MOM_OPS_GDN_PIECES", "MOM_OPS_GDN_BWD_PIECES", "MOM_OPS_GDN_PIECE_CHUNKS", "MOM_OPS_GDN_SPLIT",
                 "MOM_OPS_GDN_SPLIT_ITEMS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    kw = dict(dict(output_final_state=True, use_qk_l2norm_in_kernel=True), **kw)
    return mom_ops.chunk_gated_delta_rule(**inp, **kw)


# (lengths, value heads, heads with a slower decay, its scale, MOM_OPS_GDN_PIECE_CHUNKS, whether every head is cut).
# At g x 0.015 (~-0.8 per chunk) a warm-up needs ~22 chunks: past 16-chunk pieces' bound, within 40-chunk pieces'.
# 40 value heads: the plan decides them in two blocks (32 + 8), the first in passes of 16 warm-up chunks
# (csrc/gdn/gdn_piece_plan.cuh), so that the slow heads' warm-ups take two passes (8192 rows: the pieces at
# chunks 80 and 120 cannot reach back to the start).
PIECE_CASES = [([4096], 4, (), 1e-3, None, True), ([4096], 4, (1, 2), 1e-3, None, False),
               ([3000, 0, 1, 700, 1500], 4, (3,), 1e-3, None, False), ([4096], 4, (1, 2), 0.015, "16", False),
               ([4096], 4, (1, 2), 0.015, "40", True), ([3000, 0, 1, 700, 1500], 4, (3,), 1e-3, "auto", False),
               ([8192], 40, (1, 2, 33), 0.015, "40", True), ([8192], 40, (1, 35), 1e-3, None, False)]


def _piece_size(piece_chunks, rows, heads_v):
    """(chunks per piece, warm-up bound) as csrc/gdn/piece_size.h chooses them at V = 128: N -> (N, N); unset or
    auto -> pieces that one wave of the ws kernels (a CTA per SM) holds, at least 16 chunks, warm-ups up to 64."""
    if piece_chunks not in (None, "auto"):
        return int(piece_chunks), int(piece_chunks)
    per_head = max(1, torch.cuda.get_device_properties(0).multi_processor_count // heads_v)
    chunks = max(16, -(-((rows + 63) // 64) // per_head))
    return chunks, min(chunks, 64)


@pytest.mark.gpu
@pytest.mark.parametrize("lengths, heads_v, weak_heads, weak_scale, piece_chunks, all_cut", PIECE_CASES)
def test_gpu_pieces_match_the_unsplit_kernels(lengths, heads_v, weak_heads, weak_scale, piece_chunks, all_cut,
                                              monkeypatch):
    """With pieces, the (sequence, head)s the rule cuts come from the warp-specialised kernel run piece by piece
    (equal to that kernel unsplit up to the missed state, below 2^-24, at the bench's decay; at slow decays within the
    kernels' own bf16 rounding, as far from fp32 as unsplit), the others from the split forward (bit for bit); all
    against the fp32 chunked reference."""
    need_kernel("chunk_gated_delta_rule_fwd", "cuda")
    inp = _cuda_inputs(lengths, H=2, HV=heads_v, weak_heads=weak_heads, weak_scale=weak_scale)
    env = {} if piece_chunks is None else {"MOM_OPS_GDN_PIECE_CHUNKS": piece_chunks}
    o, ht = _forward(inp, monkeypatch, env)  # pieces are the default
    o_split, ht_split = _forward(inp, monkeypatch, {"MOM_OPS_GDN_PIECES": "0"})  # few long sequences: the split
    o_ws, ht_ws = _forward(inp, monkeypatch, {"MOM_OPS_GDN_SPLIT": "0"})  # K = 128: the ws kernel, unsplit
    # {(sequence, head): cut}, by the rule's reference at the CUDA forward's piece size and warm-up bound
    chunks, max_warmup = _piece_size(piece_chunks, sum(lengths), heads_v)
    cpu = {name: t.cpu() for name, t in inp.items()}  # (cu_seqlens among them)
    plan = piece_plan(cpu["g"], cpu["beta"], cpu["cu_seqlens"], True, piece_chunks=chunks,
                      max_warmup_chunks=max_warmup)
    cut = {key: runs is not None for key, runs in plan.items()}
    o_ref, ht_ref = chunk_gated_delta_rule_ref(**cpu, use_qk_l2norm_in_kernel=True, output_final_state=True)
    assert rel_rms(o, o_ref) < 5e-3 and rel_rms(ht, ht_ref) < 5e-3
    start = 0
    assert all(cut.values()) == all_cut
    for i, n in enumerate(lengths):
        rows = slice(start, start + n)
        for hv in range(heads_v):
            if not cut[i, hv]:
                assert torch.equal(o[0, rows, hv], o_split[0, rows, hv]) and torch.equal(ht[i, hv], ht_split[i, hv])
            elif hv in weak_heads:  # a long warm-up: the two runs' bf16 rounding differs (NOTES.md), not their error
                for x, x_ws, x_ref in ((o[0, rows, hv], o_ws[0, rows, hv], o_ref[0, rows, hv]),
                                       (ht[i, hv], ht_ws[i, hv], ht_ref[i, hv])):
                    assert rel_rms(x, x_ws) < 5e-3
                    assert rel_rms(x, x_ref) <= 1.25 * rel_rms(x_ws, x_ref) + 1e-4
            else:  # the decay damps the dropped state and the kernels' rounding alike
                assert rel_rms(o[0, rows, hv], o_ws[0, rows, hv]) < 1e-4
                assert rel_rms(ht[i, hv], ht_ws[i, hv]) < 1e-5
        start += n


@pytest.mark.gpu
def test_gpu_pieces_need_the_in_kernel_norm(monkeypatch):
    """Without use_qk_l2norm_in_kernel nothing bounds ||k||: no (sequence, head) is cut, the output is the split
    forward's bit for bit."""
    need_kernel("chunk_gated_delta_rule_fwd", "cuda")
    inp = _cuda_inputs([4096], H=2, HV=2)
    for name in ("q", "k"):  # ||k|| ~ 1 without the in-kernel norm (randn rows of 128 overflow the state to NaN)
        inp[name] = (inp[name].float() / 128**0.5).to(torch.bfloat16)
    o, ht = _forward(inp, monkeypatch, {}, use_qk_l2norm_in_kernel=False)
    o_split, ht_split = _forward(inp, monkeypatch, {"MOM_OPS_GDN_PIECES": "0"}, use_qk_l2norm_in_kernel=False)
    assert torch.equal(o, o_split) and torch.equal(ht, ht_split)


def _gradients(inp, monkeypatch, env, seed):
    """o, ht and the gradients of every input (fp32) under env, for seeded upstream gradients of o and ht."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    do = torch.randn(inp["v"].shape, device="cuda", dtype=torch.bfloat16, generator=gen)
    dht = torch.randn(inp["initial_state"].shape, device="cuda", generator=gen)
    leaves = {key: t.detach().requires_grad_(t.is_floating_point()) for key, t in inp.items()}
    o, ht = _forward(leaves, monkeypatch, env)
    torch.autograd.backward((o, ht), (do, dht))
    grads = {key: t.grad.float() for key, t in leaves.items() if t.grad is not None}
    assert set(grads) == {"q", "k", "v", "g", "beta", "initial_state"}
    return o.detach(), ht.detach(), grads


def _assert_same_gradients(grads, grads_ref):
    """Equal up to rounding: the bar of the ws training forward against the split one (test_gdn_ws.py)."""
    for key in grads:
        assert torch.isfinite(grads[key]).all(), key
        assert rel_rms(grads[key], grads_ref[key]) < 5e-3, (key, rel_rms(grads[key], grads_ref[key]))


@pytest.mark.gpu
@pytest.mark.parametrize("lengths, weak_heads", [([4096], (1,)), ([3000, 0, 1, 700, 1500], (3,))])
def test_gpu_pieces_in_training(lengths, weak_heads, monkeypatch):
    """The training forward in pieces (the cut heads' saves from the warp-specialised kernel, piece by piece): o and
    ht equal the inference forward's bit for bit, and the gradients equal those without pieces up to rounding (the
    saved states differ by the missed ~e^-51 state, below bf16)."""
    need_kernel("chunk_gated_delta_rule_bwd", "cuda")
    inp = _cuda_inputs(lengths, H=2, HV=4, weak_heads=weak_heads)
    o, ht, grads = _gradients(inp, monkeypatch, {}, seed=7)
    _, _, grads_split = _gradients(inp, monkeypatch, {"MOM_OPS_GDN_PIECES": "0"}, seed=7)
    with torch.no_grad():
        o_inf, ht_inf = _forward(inp, monkeypatch, {})
    assert torch.equal(o, o_inf) and torch.equal(ht, ht_inf)
    _assert_same_gradients(grads, grads_split)


@pytest.mark.gpu
@pytest.mark.parametrize("lengths, weak_heads", [([4096], ()), ([4096], (1,)), ([3000, 0, 1, 700, 1500], (3,))])
def test_gpu_backward_chain_in_pieces(lengths, weak_heads, monkeypatch):
    """The backward's state-gradient chain in pieces (the default; off: MOM_OPS_GDN_BWD_PIECES=0): the cut heads' dS
    from the ws chain, piece by piece, each warmed up from dS = 0 over the chunks after it, gives the gradients of
    the unsplit chain up to rounding, with h0 and dht."""
    need_kernel("chunk_gated_delta_rule_bwd", "cuda")
    inp = _cuda_inputs(lengths, H=2, HV=4, weak_heads=weak_heads)
    _, _, grads = _gradients(inp, monkeypatch, {"MOM_OPS_GDN_BWD_PIECES": "1"}, seed=8)
    _, _, grads_unsplit = _gradients(inp, monkeypatch, {"MOM_OPS_GDN_BWD_PIECES": "0"}, seed=8)
    _assert_same_gradients(grads, grads_unsplit)


@pytest.mark.gpu
@pytest.mark.parametrize("lengths, heads_v, weak_heads", [([3000, 0, 1, 700, 1500], 4, (3,)), ([8192], 40, (1, 35))])
def test_gpu_split_items_change_nothing(lengths, heads_v, weak_heads, monkeypatch):
    """The split output kernels beside the pieces taking their items from a counter, one per claim (the default;
    csrc/gdn/split_items.cuh), compute every item as one CTA per item does (MOM_OPS_GDN_SPLIT_ITEMS=0): o, ht and every
    gradient bit for bit, with uncut heads (weak_heads, g x 1e-3) among the cut ones."""
    need_kernel("chunk_gated_delta_rule_bwd", "cuda")
    inp = _cuda_inputs(lengths, H=2, HV=heads_v, weak_heads=weak_heads)
    one, many = {"MOM_OPS_GDN_SPLIT_ITEMS": "0"}, {}
    o, ht, grads = _gradients(inp, monkeypatch, one, seed=9)
    o_items, ht_items, grads_items = _gradients(inp, monkeypatch, many, seed=9)
    with torch.no_grad():  # the inference forward (its output kernel beside the chain)
        o_inf, ht_inf = _forward(inp, monkeypatch, one)
        o_inf_items, ht_inf_items = _forward(inp, monkeypatch, many)
    assert torch.equal(o, o_items) and torch.equal(ht, ht_items)
    assert torch.equal(o_inf, o_inf_items) and torch.equal(ht_inf, ht_inf_items)
    for key in grads:
        assert torch.equal(grads[key], grads_items[key]), key


@pytest.mark.gpu
@pytest.mark.parametrize("value", ["0", "-3", "x", "99999999999"])
def test_gpu_piece_chunks_must_be_auto_or_a_count(value, monkeypatch):
    """A bad MOM_OPS_GDN_PIECE_CHUNKS is a ValueError naming it, not a silent default or a crash."""
    need_kernel("chunk_gated_delta_rule_fwd", "cuda")
    inp = _cuda_inputs([4096], H=2, HV=4)
    with pytest.raises(ValueError, match="MOM_OPS_GDN_PIECE_CHUNKS"):
        _forward(inp, monkeypatch, {"MOM_OPS_GDN_PIECE_CHUNKS": value})
