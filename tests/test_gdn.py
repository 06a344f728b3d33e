"""chunk_gated_delta_rule (+ fused_recurrent) against the naive recurrence: values, gradients, opcheck, errors."""

import pytest
import torch

import mom_ops
from mom_ops.reference import chunk_gated_delta_rule_ref, recurrent_gated_delta_rule_ref
from tests.helpers import (cu_from_lengths, device_param, gdn_inputs, hard_gdn_inputs, need_kernel,
                           recurrence_grads, rel_rms)

# (B, T, H, HV, K, V, lengths, decay, beta_range, h0, state_v_first)
CPU_CASES = [
    (2, 65, 2, 2, 16, 16, None, "normal", (0, 1), True, False),
    (1, 100, 1, 2, 16, 32, [1, 15, 0, 63, 21], "strong", (0, 1), True, True),  # GVA, varlen, empty segment
    (1, 64, 2, 2, 32, 16, [64], "zero", (0.0, 0.02), False, False),  # g = 0, beta near 0
    (3, 15, 2, 4, 16, 16, None, "normal", (0.98, 1.0), True, False),  # beta near 1
]


def _run(fn, inp, lengths, state_v_first, **kw):
    cu = None if lengths is None else cu_from_lengths(lengths).to(inp["q"].device)
    return fn(**inp, cu_seqlens=cu, output_final_state=True, use_qk_l2norm_in_kernel=True,
              state_v_first=state_v_first, **kw)


@pytest.mark.parametrize("case", CPU_CASES)
def test_cpu_forward_matches_recurrence(case):
    B, T, H, HV, K, V, lengths, decay, beta_range, h0, vf = case
    n = B if lengths is None else len(lengths)
    inp = gdn_inputs(B, T, H, K, V, HV=HV, decay=decay, beta_range=beta_range, h0=h0, n_seqs=n)
    if h0 and vf:
        inp["initial_state"] = inp["initial_state"].transpose(-1, -2).contiguous()
    o, ht = _run(mom_ops.chunk_gated_delta_rule, inp, lengths, vf)
    o_ref, ht_ref = _run(recurrent_gated_delta_rule_ref, inp, lengths, vf)
    o_chunk, ht_chunk = _run(chunk_gated_delta_rule_ref, inp, lengths, vf)
    assert rel_rms(o, o_ref) < 1e-5 and rel_rms(ht, ht_ref) < 1e-5
    assert rel_rms(o_chunk, o_ref) < 1e-4 and rel_rms(ht_chunk, ht_ref) < 1e-4  # the two references agree
    o_rec, ht_rec = _run(mom_ops.fused_recurrent_gated_delta_rule, inp, lengths, vf)
    assert torch.equal(o_rec, o) and torch.equal(ht_rec, ht)


def test_cpu_forward_head_dim_256():
    inp = gdn_inputs(1, 70, 1, 256, 256, h0=True)
    o, ht = mom_ops.chunk_gated_delta_rule(**inp, output_final_state=True, use_qk_l2norm_in_kernel=True)
    o_ref, ht_ref = recurrent_gated_delta_rule_ref(**inp, output_final_state=True, use_qk_l2norm_in_kernel=True)
    assert rel_rms(o, o_ref) < 1e-5 and rel_rms(ht, ht_ref) < 1e-5


@pytest.mark.parametrize("case", CPU_CASES)
def test_cpu_backward_matches_autograd_of_recurrence(case):
    B, T, H, HV, K, V, lengths, decay, beta_range, h0, vf = case
    n = B if lengths is None else len(lengths)
    inp = gdn_inputs(B, T, H, K, V, HV=HV, decay=decay, beta_range=beta_range, h0=h0, n_seqs=n, seed=1)
    if h0 and vf:
        inp["initial_state"] = inp["initial_state"].transpose(-1, -2).contiguous()
    grads = {}
    for name, fn in (("ours", mom_ops.chunk_gated_delta_rule), ("ref", recurrent_gated_delta_rule_ref)):
        leaves = {key: t.detach().clone().requires_grad_(True) for key, t in inp.items()}
        o, ht = _run(fn, leaves, lengths, vf)
        gen = torch.Generator().manual_seed(2)
        loss = (o * torch.randn(o.shape, generator=gen)).sum() + (ht * torch.randn(ht.shape, generator=gen)).sum()
        loss.backward()
        grads[name] = {key: t.grad for key, t in leaves.items()}
    for key in inp:
        assert rel_rms(grads["ours"][key], grads["ref"][key]) < 1e-4, key


def _fwd_bwd(inp, dtype=None, device="cpu", seed=1):
    """o, ht and every input's gradient of mom_ops.chunk_gated_delta_rule (l2norm in the kernel) for random do, dht."""
    leaves = {name: t.detach().to(device, dtype if dtype is not None and name != "g" else t.dtype).requires_grad_(True)
              for name, t in inp.items()}  # (detached first: a leaf of its own, never the caller's tensor)
    o, ht = mom_ops.chunk_gated_delta_rule(**leaves, output_final_state=True, use_qk_l2norm_in_kernel=True)
    gen = torch.Generator().manual_seed(seed)
    do, dht = torch.randn(o.shape, generator=gen), torch.randn(ht.shape, generator=gen)
    torch.autograd.backward((o, ht), (do.to(device, o.dtype), dht.to(device)))
    return o.double().cpu(), ht.double().cpu(), {name: t.grad.double().cpu() for name, t in leaves.items()}


@pytest.mark.parametrize("kind", ["masked", "correlated"])
def test_cpu_op_and_chunk_reference_on_hard_inputs(kind):
    """g rows of -inf / finfo.min / -1e9 (a state reset) and ill-conditioned chunks (tests.helpers.hard_gdn_inputs):
    the CPU op against autograd of the fp64 recurrence, and the chunk-form reference (which gave NaN or 2.8 relative
    error on the masked rows before g was floored)."""
    inp = hard_gdn_inputs(kind)
    o_ref, ht_ref, _, _, ref = recurrence_grads(inp)
    o, ht, grads = _fwd_bwd(inp)
    assert rel_rms(o, o_ref) < 1e-5 and rel_rms(ht, ht_ref) < 1e-5
    for name, got in grads.items():
        assert rel_rms(got, ref[name]) < 1e-5, name
    o_chunk, _ = chunk_gated_delta_rule_ref(**{name: t.double() for name, t in inp.items()},
                                            use_qk_l2norm_in_kernel=True)
    assert rel_rms(o_chunk, o_ref) < 1e-9


def test_gradcheck_fp64():
    inp = gdn_inputs(1, 10, 1, 4, 3, HV=2, h0=True, n_seqs=3)
    inp = {key: t.double().requires_grad_(True) for key, t in inp.items()}
    cu = cu_from_lengths([3, 0, 7])

    def f(q, k, v, g, beta, initial_state):
        o, ht = mom_ops.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=initial_state, output_final_state=True,
                                               use_qk_l2norm_in_kernel=True, cu_seqlens=cu)
        return o, ht

    assert torch.autograd.gradcheck(f, tuple(inp.values()))


def test_outputs_can_be_edited_in_place_under_autograd():
    """As with fla's op: o *= 2 after the forward, and the gradients follow (the CPU op's o was a view of its buffer:
    autograd refused the edit)."""
    inp = {key: t.requires_grad_(True) for key, t in gdn_inputs(1, 10, 1, 4, 3, h0=True).items()}
    o, ht = mom_ops.chunk_gated_delta_rule(**inp, output_final_state=True)
    o.mul_(2)
    ht.add_(1)
    dv_twice, = torch.autograd.grad((o * o.detach()).sum(), inp["v"])
    o_ref, _ = mom_ops.chunk_gated_delta_rule(**inp, output_final_state=True)
    dv_ref, = torch.autograd.grad((2 * o_ref * o.detach()).sum(), inp["v"])
    torch.testing.assert_close(dv_twice, dv_ref)


def test_gdn_opcheck():
    inp = gdn_inputs(1, 20, 2, 8, 8, h0=True, n_seqs=2)
    cu = cu_from_lengths([5, 15])
    args = (inp["q"], inp["k"], inp["v"], inp["g"], inp["beta"], 0.3, inp["initial_state"], True, True, False, cu, None)
    args = tuple(a.requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    torch.library.opcheck(torch.ops.mom_ops.chunk_gated_delta_rule_fwd.default, args)
    do = torch.randn_like(inp["v"])
    bwd_args = (*[a.detach() if isinstance(a, torch.Tensor) else a for a in args[:7]], do, None, True, False, cu, None)
    torch.library.opcheck(torch.ops.mom_ops.chunk_gated_delta_rule_bwd.default, bwd_args)
    torch.library.opcheck(torch.ops.mom_ops.chunk_gated_delta_rule_fwd_train.default, args)
    torch.library.opcheck(torch.ops.mom_ops.fused_recurrent_gated_delta_rule_fwd.default,
                          tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args[:11]))


def test_training_forward_is_the_forward_plus_saved_tensors():
    """mom_ops.chunk_gated_delta_rule takes the training op when an input needs a gradient; its o and final state
    equal the plain forward's, and on the CPU it saves nothing (the CPU backward recomputes)."""
    inp = gdn_inputs(1, 20, 2, 8, 8, h0=True, n_seqs=2)
    args = (inp["q"], inp["k"], inp["v"], inp["g"], inp["beta"], 0.3, inp["initial_state"], True, True, False,
            cu_from_lengths([5, 15]), None)
    o, ht = torch.ops.mom_ops.chunk_gated_delta_rule_fwd(*args)
    o_t, ht_t, *saved = torch.ops.mom_ops.chunk_gated_delta_rule_fwd_train(*args)
    assert torch.equal(o, o_t) and torch.equal(ht, ht_t)
    assert len(saved) == 4 and all(t.numel() == 0 for t in saved)


def _bad(**override):
    inp = gdn_inputs(1, 8, 2, 4, 4)
    kw = dict(inp, **override)
    return kw


@pytest.mark.parametrize(
    "override, error, match",
    [
        (dict(k=torch.randn(1, 8, 3, 4)), ValueError, "q and k must have the same number of heads"),
        (dict(v=torch.randn(1, 8, 3, 4)), ValueError, "must be evenly divisible"),
        (dict(cu_seqlens=torch.tensor([0, 8], dtype=torch.int32), q=torch.randn(2, 8, 2, 4),
              k=torch.randn(2, 8, 2, 4)), ValueError, "The batch size is expected to be 1"),
        (dict(cu_seqlens=torch.tensor([0, 8], dtype=torch.int32), initial_state=torch.zeros(2, 2, 4, 4)),
         ValueError, "The number of initial states"),
        (dict(cu_seqlens=torch.tensor([0, 9], dtype=torch.int32)), ValueError, r"cu_seqlens\[-1\] must be <="),
        (dict(cu_seqlens=torch.tensor([0, 5, 3, 8], dtype=torch.int32)), ValueError, "non-decreasing"),
        (dict(g=torch.randn(1, 8, 3)), ValueError, "g must have shape"),
        (dict(v=torch.randn(1, 8, 2, 0)), ValueError, "v must have a value dim V >= 1"),
        (dict(beta=torch.rand(1, 7, 2)), ValueError, "beta must have shape"),
        (dict(v=torch.randn(1, 8, 2, 4, dtype=torch.float16)), ValueError, "v must have the dtype of q"),
        (dict(initial_state=torch.zeros(1, 2, 4, 4, dtype=torch.int32)), ValueError, "initial_state must be float32"),
        (dict(initial_state=torch.zeros(1, 2, 4, 5)), ValueError, "initial_state must have shape"),
        (dict(q=torch.randint(0, 2, (1, 8, 2, 4))), ValueError, "q must be a floating-point"),
        (dict(head_first=False), DeprecationWarning, "head_first has been removed"),
        (dict(chunk_size=48), ValueError, "`chunk_size` must be 16, 32, or 64"),
        (dict(cp_context=object()), NotImplementedError, "does not support `cp_context`"),
        (dict(allow_neg_eigval=True), ValueError, "requires `use_beta_sigmoid_in_kernel=True`"),
        (dict(use_gate_in_kernel=True), ValueError, "`A_log` must be provided"),
        (dict(use_gate_in_kernel=True, A_log=torch.zeros(3)), ValueError, r"`A_log` must have shape \(2,\)"),
        (dict(gk=None), TypeError, r"unexpected keyword arguments: \['gk'\]"),
    ],
)
def test_bad_input(override, error, match):
    with pytest.raises(error, match=match):
        mom_ops.chunk_gated_delta_rule(**_bad(**override))


@pytest.mark.parametrize("HV, V", [(0, 4), (2, 0)])
def test_the_ops_refuse_an_empty_value_head_or_dim(HV, V):
    """torch.ops.mom_ops called directly (the Python entry refuses V = 0 itself): the shared checks refuse it, so no
    CUDA kernel gets an empty grid (a launch error)."""
    q, k = torch.randn(1, 8, 2, 4), torch.randn(1, 8, 2, 4)
    v, g, beta = torch.randn(1, 8, HV, V), -torch.rand(1, 8, HV), torch.rand(1, 8, HV)
    match = "at least one value head and a value dim"
    with pytest.raises(ValueError, match=match):
        torch.ops.mom_ops.chunk_gated_delta_rule_fwd(q, k, v, g, beta, 0.5, None, False, False, False, None, None)
    with pytest.raises(ValueError, match=match):
        torch.ops.mom_ops.fused_recurrent_gated_delta_rule_fwd(q, k, v, g, beta, 0.5, None, False, False, False, None)
    with pytest.raises(ValueError, match=match):
        torch.ops.mom_ops.mom_decode_step(q[0], k[0, :, None], v[0, :, None], g[0, :, None], beta[0, :, None],
                                          torch.ones(8, 1), torch.zeros(8, 1, dtype=torch.int32),
                                          torch.zeros(1, HV, 4, V), 0.5, False, False)


@pytest.mark.parametrize("device", device_param())
@pytest.mark.parametrize("H", [1, 2])  # 1: GVA (HV = 2), whose l2norm backward runs after the head sum
def test_rows_past_the_end_get_zero_gradients_whatever_they_hold(device, H):
    """Rows past cu_seqlens[-1] holding NaN / inf q and k (never read by any sequence) get o = 0 and gradients 0
    with use_qk_l2norm_in_kernel: the l2norm backward over all rows made their dq / dk NaN (0 * NaN)."""
    need_kernel("chunk_gated_delta_rule_bwd", device)
    gen = torch.Generator().manual_seed(0)
    T, HV, K, V, end = 80, 2, 64, 64, 70
    q, k = torch.randn(1, T, H, K, generator=gen), torch.randn(1, T, H, K, generator=gen)
    q[:, end:], k[:, end:] = float("nan"), float("inf")
    v = torch.randn(1, T, HV, V, generator=gen)
    g, beta = -torch.rand(1, T, HV, generator=gen), torch.rand(1, T, HV, generator=gen)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    leaves = [t.to(device, dtype).requires_grad_(True) for t in (q, k, v)] + [
        t.to(device).requires_grad_(True) for t in (g, beta)]
    cu = torch.tensor([0, 30, end], dtype=torch.int32, device=device)
    o, _ = mom_ops.chunk_gated_delta_rule(*leaves, cu_seqlens=cu, use_qk_l2norm_in_kernel=True)
    assert torch.equal(o[0, end:].float().cpu(), torch.zeros(T - end, HV, V))
    o[:, :end].float().square().sum().backward()
    for name, t in zip("q k v g beta".split(), leaves):
        assert torch.equal(t.grad[0, end:].float().cpu(), torch.zeros_like(t.grad[0, end:].float().cpu())), name
        assert t.grad[0, :end].isfinite().all(), name


@pytest.mark.gpu
def test_gpu_rows_before_the_first_sequence_are_zero():
    """cu_seqlens[0] > 0 (invalid: the CPU refuses it; CUDA cannot check it without a host sync): the rows before
    it come out 0 in o and every gradient, not uninitialised memory."""
    need_kernel("chunk_gated_delta_rule_bwd", "cuda")
    gen = torch.Generator().manual_seed(0)
    T, H, K, V, first = 64, 2, 64, 64, 5
    leaves = [torch.randn(1, T, H, D, generator=gen).cuda().bfloat16().requires_grad_(True) for D in (K, K, V)] + [
        (-torch.rand(1, T, H, generator=gen)).cuda().requires_grad_(True),
        torch.rand(1, T, H, generator=gen).cuda().requires_grad_(True)]
    cu = torch.tensor([first, 30, T], dtype=torch.int32, device="cuda")
    o, _ = mom_ops.chunk_gated_delta_rule(*leaves, cu_seqlens=cu, use_qk_l2norm_in_kernel=True)
    assert torch.equal(o[0, :first].float().cpu(), torch.zeros(first, H, V))
    o.float().square().sum().backward()
    for name, t in zip("q k v g beta".split(), leaves):
        assert torch.equal(t.grad[0, :first].float().cpu(), torch.zeros_like(t.grad[0, :first].float().cpu())), name


# ---- GPU: the CUDA kernels of #4 / #5 against the fp32 recurrence ----

GPU_CASES = [
    # (B, T, H, HV, D, lengths, decay, beta_range, h0)
    (2, 1000, 2, 2, 64, None, "normal", (0, 1), True),
    (1, 1000, 2, 4, 128, [1, 15, 0, 63, 65, 856], "strong", (0, 1), True),
    (1, 300, 1, 1, 256, [100, 0, 200], "zero", (0.0, 0.02), False),
    (1, 300, 2, 2, 128, [299, 1], "normal", (0.98, 1.0), True),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", GPU_CASES)
def test_gpu_forward(case, dtype):
    need_kernel("chunk_gated_delta_rule_fwd", "cuda")
    B, T, H, HV, D, lengths, decay, beta_range, h0 = case
    n = B if lengths is None else len(lengths)
    inp = gdn_inputs(B, T, H, D, D, HV=HV, dtype=dtype, decay=decay, beta_range=beta_range, h0=h0, n_seqs=n)
    o_ref, ht_ref = _run(recurrent_gated_delta_rule_ref, inp, lengths, False)
    gpu = {key: t.cuda() for key, t in inp.items()}
    o, ht = _run(mom_ops.chunk_gated_delta_rule, gpu, lengths, False)
    assert rel_rms(o, o_ref) < 5e-3 and rel_rms(ht, ht_ref) < 5e-3
    # no worse than the Triton reference on the same inputs (with a little slack for rounding order)
    from triton_ref import gdn as tg

    o_tr, ht_tr = _run(tg.chunk_gated_delta_rule, gpu, lengths, False)
    assert rel_rms(o, o_ref) <= 1.5 * rel_rms(o_tr, o_ref) + 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("D", [64, 128, 256])
def test_gpu_forward_state_layouts_agree(D):
    """state_v_first=True ([N, HV, V, K] states) gives the same o and the transposed final state."""
    need_kernel("chunk_gated_delta_rule_fwd", "cuda")
    lengths = [70, 0, 129, 1]
    inp = gdn_inputs(1, 200, 2, D, D, HV=4, dtype=torch.bfloat16, h0=True, n_seqs=len(lengths), device="cuda")
    o, ht = _run(mom_ops.chunk_gated_delta_rule, inp, lengths, False)
    inp["initial_state"] = inp["initial_state"].transpose(-1, -2).contiguous()
    o_vf, ht_vf = _run(mom_ops.chunk_gated_delta_rule, inp, lengths, True)
    assert torch.equal(o, o_vf)
    assert torch.equal(ht, ht_vf.transpose(-1, -2))


@pytest.mark.gpu
@pytest.mark.parametrize("D, lengths, h0", [(64, [70, 0, 129, 1], True), (128, None, False)])
def test_gpu_backward_matches_cpu(D, lengths, h0):
    """The CUDA backward against the CPU backward in fp32 on the same inputs."""
    need_kernel("chunk_gated_delta_rule_bwd", "cuda")
    B = 2 if lengths is None else 1
    T = 150 if lengths is None else sum(lengths)
    n = B if lengths is None else len(lengths)
    inp = gdn_inputs(B, T, 2, D, D, HV=4, dtype=torch.bfloat16, h0=h0, n_seqs=n)
    do = torch.randn(B, T, 4, D)
    dht = torch.randn(n, 4, D, D)

    def grads(tensors, device, dtype):
        leaves = {key: t.to(device=device, dtype=dtype if t.dtype == torch.bfloat16 else t.dtype)
                  .detach().requires_grad_(True) for key, t in tensors.items()}
        o, ht = _run(mom_ops.chunk_gated_delta_rule, leaves, lengths, False)
        torch.autograd.backward((o, ht), (do.to(device, o.dtype), dht.to(device)))
        return {key: t.grad.float().cpu() for key, t in leaves.items()}

    ref = grads(inp, "cpu", torch.float32)
    got = grads(inp, "cuda", torch.bfloat16)
    for key in ref:
        assert rel_rms(got[key], ref[key]) < 2e-2, key


@pytest.mark.gpu
@pytest.mark.parametrize("value_blocks", ["narrow", "wide"])
@pytest.mark.parametrize("K, V, H, HV, dtype", [(128, 512, 1, 2, torch.bfloat16), (64, 256, 2, 2, torch.float16),
                                                (256, 64, 1, 1, torch.bfloat16), (256, 256, 2, 2, torch.float16)])
def test_gpu_forward_other_head_dims(K, V, H, HV, dtype, value_blocks, monkeypatch):
    """K != V, several V-blocks per head, GVA: against the fp32 recurrence, with both V-block widths of the
    kernel (the launch picks wide blocks only for large grids, so small tests force them)."""
    need_kernel("chunk_gated_delta_rule_fwd", "cuda")
    monkeypatch.setenv("MOM_OPS_GDN_BV", value_blocks)
    lengths = [130, 0, 64, 7]
    inp = gdn_inputs(1, sum(lengths), H, K, V, HV=HV, dtype=dtype, h0=True, n_seqs=len(lengths))
    o_ref, ht_ref = _run(recurrent_gated_delta_rule_ref, inp, lengths, False)
    o, ht = _run(mom_ops.chunk_gated_delta_rule, {key: t.cuda() for key, t in inp.items()}, lengths, False)
    assert rel_rms(o, o_ref) < 5e-3 and rel_rms(ht, ht_ref) < 5e-3


@pytest.mark.gpu
@pytest.mark.parametrize("D, T, H", [(64, 300, 2), (128, 1100, 2), (128, 300, 8), (256, 600, 1)])
def test_gpu_masked_decay_rows_match_cpu(D, T, H):
    """g rows of -inf / finfo.min / -1e9 (a state reset; tests.helpers.hard_gdn_inputs) through the CUDA forward and
    backward (g floored at -110 where the kernels read it; the scan's exclusive prefix by a shuffle, not incl - pair)
    against the CPU op in fp32: finite, and within the bf16 bars."""
    need_kernel("chunk_gated_delta_rule_bwd", "cuda")
    inp = hard_gdn_inputs("masked", T=T, H=H, HV=2 * H, K=D, V=D)
    inp = {name: t if name == "g" else t.bfloat16().float() for name, t in inp.items()}  # the GPU's inputs, in fp32
    o_ref, ht_ref, ref = _fwd_bwd(inp)
    o, ht, got = _fwd_bwd(inp, torch.bfloat16, "cuda")
    assert torch.isfinite(o).all() and torch.isfinite(ht).all()
    assert rel_rms(o, o_ref) < 1e-2 and rel_rms(ht, ht_ref) < 1e-2
    for name in ref:
        assert torch.isfinite(got[name]).all(), name
        assert rel_rms(got[name], ref[name]) < 2e-2, name


@pytest.mark.gpu
def test_gpu_forward_more_than_65535_ctas():
    """70000 one-token sequences (70000 CTAs in x): equal to the token-by-token CUDA kernel, run on two halves
    (it takes fewer than 65536 sequences per call)."""
    need_kernel("chunk_gated_delta_rule_fwd", "cuda")
    n, half = 70000, 35000
    inp = gdn_inputs(1, n, 1, 64, 64, dtype=torch.bfloat16, device="cuda")
    kw = dict(output_final_state=True, use_qk_l2norm_in_kernel=True)
    o, ht = mom_ops.chunk_gated_delta_rule(**inp, cu_seqlens=torch.arange(n + 1, device="cuda"), **kw)
    parts = [mom_ops.fused_recurrent_gated_delta_rule(**{key: t[:, s:s + half] for key, t in inp.items()},
                                                      cu_seqlens=torch.arange(half + 1, device="cuda"), **kw)
             for s in (0, half)]
    o_ref = torch.cat([p[0] for p in parts], 1)
    ht_ref = torch.cat([p[1] for p in parts], 0)
    assert rel_rms(o, o_ref) < 5e-3 and rel_rms(ht, ht_ref) < 5e-3


# ---- fla 0.6.0's signatures and options


FLA_CHUNK_PARAMS = ["q", "k", "v", "g", "beta", "scale", "initial_state", "output_final_state",
                    "use_qk_l2norm_in_kernel", "use_beta_sigmoid_in_kernel", "allow_neg_eigval", "state_v_first",
                    "cu_seqlens", "cu_seqlens_cpu", "chunk_indices", "cp_context", "kwargs"]
FLA_RECURRENT_PARAMS = ["q", "k", "v", "g", "gk", "gv", "beta", "scale", "initial_state", "output_final_state",
                        "use_qk_l2norm_in_kernel", "use_gate_in_kernel", "A_log", "dt_bias",
                        "use_beta_sigmoid_in_kernel", "allow_neg_eigval", "state_v_first", "cu_seqlens", "kwargs"]


def test_signatures_are_fla_060s():
    """The parameters in fla 0.6.0's order (fla/ops/gated_delta_rule/chunk.py and fused_recurrent.py), so that
    positional calls mean the same."""
    import inspect

    assert list(inspect.signature(mom_ops.chunk_gated_delta_rule).parameters) == FLA_CHUNK_PARAMS
    assert list(inspect.signature(mom_ops.fused_recurrent_gated_delta_rule).parameters) == FLA_RECURRENT_PARAMS


@pytest.mark.parametrize("fn", ["chunk", "recurrent"])
def test_fla_options_are_their_expressions(fn):
    """use_gate_in_kernel (A_log, dt_bias), use_beta_sigmoid_in_kernel, allow_neg_eigval, chunk_size, a 16-bit
    initial_state: the same as passing the activated g / beta (and an fp32 state) in the first place."""
    scan = mom_ops.chunk_gated_delta_rule if fn == "chunk" else mom_ops.fused_recurrent_gated_delta_rule
    inp = gdn_inputs(1, 20, 2, 8, 8, h0=True)
    raw_g, raw_beta = torch.randn(1, 20, 2), torch.randn(1, 20, 2)
    A_log, dt_bias = torch.rand(2), torch.randn(2)
    g = -A_log.exp() * torch.nn.functional.softplus(raw_g + dt_bias)
    h0 = inp["initial_state"].half()
    base = dict(q=inp["q"], k=inp["k"], v=inp["v"], output_final_state=True)
    extra = {"chunk_size": 32} if fn == "chunk" else {}
    got = scan(**base, g=raw_g, beta=raw_beta, initial_state=h0, use_gate_in_kernel=True, A_log=A_log,
               dt_bias=dt_bias, use_beta_sigmoid_in_kernel=True, allow_neg_eigval=True, **extra)
    want = scan(**base, g=g, beta=2 * torch.sigmoid(raw_beta), initial_state=h0.float())
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_fused_recurrent_defaults_and_unsupported():
    """fla's fused_recurrent: g None is no decay, beta None is 1, beta in its 7th place; gk / gv are refused."""
    inp = gdn_inputs(1, 12, 2, 8, 8)
    q, k, v = inp["q"], inp["k"], inp["v"]
    zeros, ones = torch.zeros(1, 12, 2), torch.ones(1, 12, 2)
    got = mom_ops.fused_recurrent_gated_delta_rule(q, k, v, None, None, None, None)
    want = mom_ops.fused_recurrent_gated_delta_rule(q, k, v, zeros, beta=ones)
    torch.testing.assert_close(got[0], want[0])
    positional = mom_ops.fused_recurrent_gated_delta_rule(q, k, v, inp["g"], None, None, inp["beta"])
    torch.testing.assert_close(positional[0], mom_ops.fused_recurrent_gated_delta_rule(q, k, v, inp["g"],
                                                                                       beta=inp["beta"])[0])
    with pytest.raises(NotImplementedError, match="`gk`"):
        mom_ops.fused_recurrent_gated_delta_rule(q, k, v, gk=torch.zeros(1, 12, 2, 8), beta=inp["beta"])


def test_fla_activations_gradcheck():
    """The activations in fp64 for fp64 inputs: gradients w.r.t. the raw gate, beta logits, A_log and dt_bias."""
    from mom_ops.gdn import fla_activations

    d = torch.float64
    args = tuple(t.requires_grad_(True) for t in (torch.randn(1, 5, 2, dtype=d), torch.randn(1, 5, 2, dtype=d),
                                                    torch.rand(2, dtype=d), torch.randn(2, dtype=d)))
    fn = lambda g, b, A, dt: fla_activations(g, b, True, A, dt, True, True)  # noqa: E731
    assert all(t.dtype == d for t in fn(*args))
    assert torch.autograd.gradcheck(fn, args)
