"""mom_decode_step against the naive step; stepping token by token equals the scan."""

import pytest
import torch

import mom_ops
from mom_ops.reference import mom_decode_step_ref, recurrent_gated_delta_rule_ref
from tests.helpers import gdn_inputs, need_kernel, rel_rms, triton_device


def _step_inputs(N=5, J=3, H=2, HV=4, K=8, V=8, P=20, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    slots = torch.randperm(P, generator=gen)[: N * J].view(N, J).to(torch.int32)
    slots[1, 2] = -1  # padding slot
    d = dict(
        q=torch.randn(N, H, K, generator=gen), k=torch.randn(N, J, H, K, generator=gen),
        v=torch.randn(N, J, HV, V, generator=gen), g=torch.nn.functional.logsigmoid(torch.randn(N, J, HV, generator=gen)),
        beta=torch.rand(N, J, HV, generator=gen), weights=torch.rand(N, J, generator=gen), slots=slots,
        state_pool=torch.randn(P, HV, K, V, generator=gen),
    )
    return {key: t.to(device) for key, t in d.items()}


@pytest.mark.parametrize("q_per_slot", [False, True])
@pytest.mark.parametrize("state_v_first", [False, True])
def test_decode_step_matches_reference(state_v_first, q_per_slot):
    inp = _step_inputs()
    if q_per_slot:
        inp["q"] = torch.randn(5, 3, 2, 8)
    if state_v_first:
        inp["state_pool"] = inp["state_pool"].transpose(-1, -2).contiguous()
    ref_inp = {key: t.cpu().clone() for key, t in inp.items()}
    out = mom_ops.mom_decode_step(**inp, use_qk_l2norm_in_kernel=True, state_v_first=state_v_first)
    out_ref = mom_decode_step_ref(**ref_inp, use_qk_l2norm_in_kernel=True, state_v_first=state_v_first)
    assert rel_rms(out, out_ref) < 1e-5
    assert rel_rms(inp["state_pool"], ref_inp["state_pool"]) < 1e-5


def test_decode_steps_equal_the_scan():
    """Each memory stepped through a sequence with routing that changes every step equals the scan over the
    tokens routed to it."""
    T, H, K, V, M = 12, 2, 8, 8, 3
    inp = gdn_inputs(1, T, H, K, V, seed=3)
    gen = torch.Generator().manual_seed(4)
    routed = torch.rand(T, M, generator=gen) > 0.5  # token t updates memory m
    pool = torch.zeros(M, H, K, V)
    outs = torch.zeros(T, M, H, V)
    for t in range(T):
        slots = torch.where(routed[t], torch.arange(M), -1).to(torch.int32)[None]
        for m in range(M):  # one slot per call so each memory's output is visible
            one = torch.full((1, 1), int(slots[0, m]), dtype=torch.int32)
            outs[t, m] = mom_ops.mom_decode_step(
                inp["q"][0, t][None], inp["k"][0, t][None, None], inp["v"][0, t][None, None],
                inp["g"][0, t][None, None], inp["beta"][0, t][None, None], torch.ones(1, 1), one, pool,
                use_qk_l2norm_in_kernel=True,
            )[0]
    for m in range(M):
        idx = routed[:, m].nonzero().flatten()
        if len(idx) == 0:
            continue
        o_ref, ht_ref = recurrent_gated_delta_rule_ref(
            *(inp[name][:, idx] for name in ("q", "k", "v", "g", "beta")), output_final_state=True,
            use_qk_l2norm_in_kernel=True,
        )
        assert rel_rms(outs[idx, m], o_ref[0]) < 1e-5
        assert rel_rms(pool[m], ht_ref[0]) < 1e-5


def test_decode_opcheck():
    inp = _step_inputs()
    args = (*[inp[n] for n in ("q", "k", "v", "g", "beta", "weights", "slots", "state_pool")], 0.3, True, False)
    torch.library.opcheck(torch.ops.mom_ops.mom_decode_step.default, args, test_utils=("test_schema", "test_faketensor"))


def test_decode_step_bumps_the_pool_version():
    """The pool is written in place: like torch's in-place ops, the step bumps its version counter, so a view of it
    that autograd saved earlier raises at backward instead of giving gradients of the new values."""
    inp = _step_inputs()
    pool = inp["state_pool"]
    x = torch.randn(pool[0].shape, requires_grad=True)
    y = (x * pool[0]).sum()  # saves the view pool[0]
    before = pool._version
    with torch.no_grad():
        mom_ops.mom_decode_step(*[inp[n] for n in ("q", "k", "v", "g", "beta", "weights", "slots")], pool)
    assert pool._version > before
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_decode_bad_input():
    inp = _step_inputs()
    bad = dict(inp, slots=inp["slots"].clone())
    bad["slots"][0, 0] = 99
    with pytest.raises(ValueError, match="out of range for state_pool"):
        mom_ops.mom_decode_step(**bad)
    bad["slots"][0, 0] = bad["slots"][0, 1]
    with pytest.raises(ValueError, match="must not repeat"):
        mom_ops.mom_decode_step(**bad)
    with pytest.raises(ValueError, match="q must have shape"):
        mom_ops.mom_decode_step(**dict(inp, q=inp["q"][:, :1]))
    with pytest.raises(ValueError, match="state_pool must have dtype"):
        mom_ops.mom_decode_step(**dict(inp, state_pool=inp["state_pool"].double()))
    with pytest.raises(ValueError, match="weights must have shape"):
        mom_ops.mom_decode_step(**dict(inp, weights=inp["weights"][:, :2]))


# ---- GPU ----


@pytest.mark.gpu
@pytest.mark.parametrize("q_per_slot", [False, True])
@pytest.mark.parametrize("state_v_first", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("K, V, H, HV", [(128, 128, 2, 4), (64, 256, 1, 1), (256, 64, 2, 2)])
@pytest.mark.parametrize("tile", ["64", "auto"])  # MOM_OPS_DECODE_TILE (auto: 128 where K <= 128)
def test_gpu_decode_step_matches_reference(state_v_first, dtype, K, V, H, HV, q_per_slot, tile, monkeypatch):
    monkeypatch.setenv("MOM_OPS_DECODE_TILE", tile)
    need_kernel("mom_decode_step", "cuda")
    inp = _step_inputs(N=6, J=3, H=H, HV=HV, K=K, V=V, P=24, seed=K + V)
    if q_per_slot:
        inp["q"] = torch.randn(6, 3, H, K)
    if state_v_first:
        inp["state_pool"] = inp["state_pool"].transpose(-1, -2).contiguous()
    for name in ("q", "k", "v"):
        inp[name] = inp[name].to(dtype)
    ref_inp = {key: t.clone() for key, t in inp.items()}
    gpu = {key: t.cuda() for key, t in inp.items()}
    out = mom_ops.mom_decode_step(**gpu, use_qk_l2norm_in_kernel=True, state_v_first=state_v_first)
    out_ref = mom_decode_step_ref(**ref_inp, use_qk_l2norm_in_kernel=True, state_v_first=state_v_first)
    assert rel_rms(out, out_ref) < (1e-5 if dtype == torch.float32 else 5e-3)
    assert rel_rms(gpu["state_pool"], ref_inp["state_pool"]) < 1e-5
    untouched = torch.ones(24, dtype=torch.bool)
    untouched[inp["slots"][inp["slots"] >= 0].long()] = False
    assert torch.equal(gpu["state_pool"].cpu()[untouched], inp["state_pool"][untouched])


@pytest.mark.gpu
@pytest.mark.parametrize("state_v_first", [False, True])
@pytest.mark.parametrize("K, V", [(128, 128), (256, 256), (64, 64), (64, 128)])
@pytest.mark.parametrize("tile", ["64", "auto"])
def test_gpu_fused_recurrent_matches_recurrence(state_v_first, K, V, tile, monkeypatch):
    monkeypatch.setenv("MOM_OPS_DECODE_TILE", tile)
    need_kernel("fused_recurrent_gated_delta_rule_fwd", "cuda")
    from tests.helpers import cu_from_lengths

    lengths = [1, 0, 17, 64, 5]
    inp = gdn_inputs(1, sum(lengths), 2, K, V, HV=4, dtype=torch.bfloat16, h0=True, n_seqs=len(lengths), seed=K)
    if state_v_first:
        inp["initial_state"] = inp["initial_state"].transpose(-1, -2).contiguous()
    cu = cu_from_lengths(lengths)
    kw = dict(output_final_state=True, use_qk_l2norm_in_kernel=True, state_v_first=state_v_first)
    o_ref, ht_ref = recurrent_gated_delta_rule_ref(**inp, cu_seqlens=cu, **kw)
    o, ht = mom_ops.fused_recurrent_gated_delta_rule(**{k: t.cuda() for k, t in inp.items()}, cu_seqlens=cu.cuda(), **kw)
    assert rel_rms(o, o_ref) < 5e-3 and rel_rms(ht, ht_ref) < 5e-3


@pytest.mark.gpu
def test_gpu_decode_layouts_off_16_bytes():
    """A state at a storage offset off 16 bytes (read with float4 loads): the recurrent scan's initial_state is
    copied (it crashed with a misaligned address), a decode pool (updated in place) is a clear error."""
    need_kernel("mom_decode_step", "cuda")
    from tests.helpers import cu_from_lengths

    lengths = [3, 9]
    inp = {k: t.cuda() for k, t in gdn_inputs(1, 12, 2, 64, 64, HV=2, dtype=torch.bfloat16, h0=True, n_seqs=2).items()}
    h0 = inp.pop("initial_state")
    shifted = torch.empty(h0.numel() + 1, device="cuda")[1:].view(h0.shape)  # 4 bytes past a 16-byte boundary
    shifted.copy_(h0)
    kw = dict(cu_seqlens=cu_from_lengths(lengths).cuda(), output_final_state=True, use_qk_l2norm_in_kernel=True)
    o, ht = mom_ops.fused_recurrent_gated_delta_rule(**inp, initial_state=shifted, **kw)
    o_ref, ht_ref = mom_ops.fused_recurrent_gated_delta_rule(**inp, initial_state=h0, **kw)
    assert torch.equal(o, o_ref) and torch.equal(ht, ht_ref)
    step = {key: t.cuda() for key, t in _step_inputs(K=64, V=64).items()}
    pool = step.pop("state_pool")
    off = torch.empty(pool.numel() + 1, device="cuda")[1:].view(pool.shape)
    with torch.no_grad(), pytest.raises(ValueError, match="state_pool must start on a 16-byte boundary"):
        mom_ops.mom_decode_step(**step, state_pool=off)


@pytest.mark.gpu
def test_gpu_decode_step_of_more_tokens_than_a_grid_holds():
    """70000 tokens in one step: launches of at most 65535 tokens (grid.z; one launch failed with "invalid
    configuration argument")."""
    need_kernel("mom_decode_step", "cuda")
    N, K = 70000, 64
    torch.manual_seed(0)
    q, k, v = (torch.randn(N, *shape, device="cuda").bfloat16() for shape in ((1, K), (1, 1, K), (1, 1, K)))
    g, beta = -torch.rand(N, 1, 1, device="cuda"), torch.rand(N, 1, 1, device="cuda")
    weights, slots = torch.rand(N, 1, device="cuda"), torch.arange(N, dtype=torch.int32, device="cuda").view(N, 1)
    pool = torch.zeros(N, 1, K, K, device="cuda")
    pool[-5:] = torch.randn(5, 1, K, K, device="cuda")  # the last tokens' states: past the first launch
    pool_ref = pool[-5:].cpu().clone()
    with torch.no_grad():
        out = mom_ops.mom_decode_step(q, k, v, g, beta, weights, slots, pool, use_qk_l2norm_in_kernel=True)
    last = lambda t: t[-5:].float().cpu()  # noqa: E731
    out_ref = mom_decode_step_ref(last(q), last(k), last(v), last(g), last(beta), last(weights),
                                  torch.arange(5, dtype=torch.int32)[:, None], pool_ref, use_qk_l2norm_in_kernel=True)
    assert rel_rms(out[-5:], out_ref) < 5e-3 and rel_rms(pool[-5:], pool_ref) < 1e-5


@pytest.mark.gpu
def test_gpu_decode_steps_equal_the_scan_and_replay_in_a_graph():
    """Step 3 memories + a shared one through 40 tokens with routing that changes every step (top-2 of 3), inside
    a CUDA graph replayed with new inputs and slots; each memory must equal the scan over its tokens."""
    need_kernel("mom_decode_step", "cuda")
    T, H, K, V, M = 40, 2, 128, 128, 3
    inp = gdn_inputs(1, T, H, K, V, dtype=torch.bfloat16, seed=7)
    gen = torch.Generator().manual_seed(8)
    choice = torch.stack([torch.randperm(M, generator=gen)[:2] for _ in range(T)])  # [T, 2]
    pool = torch.zeros(M + 1, H, K, V, device="cuda")  # rows 0..M-1 routed, row M shared
    static = dict(q=torch.empty(1, H, K), k=torch.empty(1, 3, H, K), v=torch.empty(1, 3, H, V),
                  g=torch.empty(1, 3, H), beta=torch.empty(1, 3, H), weights=torch.empty(1, 3),
                  slots=torch.empty(1, 3, dtype=torch.int32))
    static = {key: t.cuda().to(torch.bfloat16 if key in "qkv" else t.dtype) for key, t in static.items()}

    def fill(t):
        # the same token for every slot: each memory sees the token's own k, v, g, beta
        for name in ("k", "v", "g", "beta"):
            static[name].copy_(inp[name][0, t][None, None].expand_as(static[name]))
        static["q"].copy_(inp["q"][0, t][None])
        static["weights"].copy_(torch.tensor([[0.7, 0.3, 1.0]]))
        static["slots"].copy_(torch.tensor([[int(choice[t, 0]), int(choice[t, 1]), M]], dtype=torch.int32))

    fill(0)
    mom_ops.mom_decode_step(**static, state_pool=pool.clone(), use_qk_l2norm_in_kernel=True)  # warm up
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = mom_ops.mom_decode_step(**static, state_pool=pool, use_qk_l2norm_in_kernel=True)
    pool.zero_()
    outs = []
    for t in range(T):
        fill(t)
        graph.replay()
        outs.append(out.clone())
    outs = torch.stack(outs)[:, 0].cpu()  # [T, H, V]
    expected = torch.zeros(T, H, V)
    for m in range(M + 1):
        idx = torch.arange(T) if m == M else (choice == m).any(1).nonzero().flatten()
        o_ref, ht_ref = recurrent_gated_delta_rule_ref(
            *(inp[name][:, idx] for name in ("q", "k", "v", "g", "beta")), output_final_state=True,
            use_qk_l2norm_in_kernel=True)
        w = 1.0 if m == M else torch.where(choice[idx, 0] == m, 0.7, 0.3)[:, None, None]
        expected[idx] += w * o_ref[0].float()
        assert rel_rms(pool[m], ht_ref[0]) < 5e-3
    assert rel_rms(outs, expected) < 5e-3


# ---- Triton reference (CPU interpreter with fp32, or the GPU) ----


@pytest.mark.parametrize("q_per_slot", [False, True])
@pytest.mark.parametrize("state_v_first", [False, True])
def test_triton_decode_step_matches_reference(state_v_first, q_per_slot):
    from triton_ref import decode as tr

    device = triton_device()
    inp = _step_inputs(N=4, J=3, H=1, HV=2, K=16, V=40, P=16, seed=5)
    if q_per_slot:
        inp["q"] = torch.randn(4, 3, 1, 16)
    if state_v_first:
        inp["state_pool"] = inp["state_pool"].transpose(-1, -2).contiguous()
    ref_inp = {key: t.clone() for key, t in inp.items()}
    dev = {key: t.to(device) for key, t in inp.items()}
    out = tr.mom_decode_step(**dev, use_qk_l2norm_in_kernel=True, state_v_first=state_v_first)
    out_ref = mom_decode_step_ref(**ref_inp, use_qk_l2norm_in_kernel=True, state_v_first=state_v_first)
    assert rel_rms(out, out_ref) < 1e-5 and rel_rms(dev["state_pool"], ref_inp["state_pool"]) < 1e-5


@pytest.mark.parametrize("state_v_first", [False, True])
def test_triton_fused_recurrent_matches_recurrence(state_v_first):
    from triton_ref import decode as tr
    from tests.helpers import cu_from_lengths

    device = triton_device()
    lengths = [3, 0, 9, 1]
    inp = gdn_inputs(1, sum(lengths), 1, 16, 32, HV=2, h0=True, n_seqs=len(lengths), seed=2)
    if state_v_first:
        inp["initial_state"] = inp["initial_state"].transpose(-1, -2).contiguous()
    cu = cu_from_lengths(lengths)
    kw = dict(output_final_state=True, use_qk_l2norm_in_kernel=True, state_v_first=state_v_first)
    o_ref, ht_ref = recurrent_gated_delta_rule_ref(**inp, cu_seqlens=cu, **kw)
    o, ht = tr.fused_recurrent_gated_delta_rule(**{key: t.to(device) for key, t in inp.items()},
                                                cu_seqlens=cu.to(device), **kw)
    assert rel_rms(o, o_ref) < 1e-5 and rel_rms(ht, ht_ref) < 1e-5
