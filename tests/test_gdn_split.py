"""The split CUDA forward (csrc/gdn/gdn_split_kernels.cuh: chunk-local terms, state chain, outputs; forced with
MOM_OPS_GDN_SPLIT=1, the fused one with 0) against the fp32 recurrence and against the fused forward, and the backward fed by its saved
tensors. GPU only."""

import pytest
import torch

import mom_ops
from mom_ops.reference import recurrent_gated_delta_rule_ref
from tests.helpers import gdn_inputs, need_kernel, rel_rms
from tests.test_gdn import GPU_CASES, _run


def _both(inp, lengths, monkeypatch, state_v_first=False):
    """(o, ht) of the split forward, then of the fused one, on CUDA copies of inp."""
    gpu = {key: t.cuda() for key, t in inp.items()}
    monkeypatch.setenv("MOM_OPS_GDN_SPLIT", "1")
    split = _run(mom_ops.chunk_gated_delta_rule, gpu, lengths, state_v_first)
    monkeypatch.setenv("MOM_OPS_GDN_SPLIT", "0")
    fused = _run(mom_ops.chunk_gated_delta_rule, gpu, lengths, state_v_first)
    return split, fused


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", GPU_CASES)
def test_split_forward_matches_recurrence_and_fused(case, dtype, monkeypatch):
    need_kernel("chunk_gated_delta_rule_fwd", "cuda")
    B, T, H, HV, D, lengths, decay, beta_range, h0 = case
    n = B if lengths is None else len(lengths)
    inp = gdn_inputs(B, T, H, D, D, HV=HV, dtype=dtype, decay=decay, beta_range=beta_range, h0=h0, n_seqs=n)
    o_ref, ht_ref = _run(recurrent_gated_delta_rule_ref, inp, lengths, False)
    (o, ht), (o_fused, ht_fused) = _both(inp, lengths, monkeypatch)
    assert rel_rms(o, o_ref) < 5e-3 and rel_rms(ht, ht_ref) < 5e-3
    assert rel_rms(o, o_fused) < 3e-3 and rel_rms(ht, ht_fused) < 3e-3


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_wide_forward_matches_recurrence_and_split(dtype, monkeypatch):
    """The inference forward with 128-column V-blocks at K = 128 (the fused kernel that double-buffers its loads: the
    launch picks that width only for large grids) against the recurrence and the split forward; sequences of several
    chunks, so both buffers are used, and an empty and a 1-row one."""
    need_kernel("chunk_gated_delta_rule_fwd", "cuda")
    monkeypatch.setenv("MOM_OPS_GDN_BV", "wide")
    lengths = [300, 0, 193, 1]
    inp = gdn_inputs(1, sum(lengths), 2, 128, 128, HV=4, dtype=dtype, decay="strong", h0=True, n_seqs=len(lengths))
    o_ref, ht_ref = _run(recurrent_gated_delta_rule_ref, inp, lengths, False)
    (o_split, ht_split), (o, ht) = _both(inp, lengths, monkeypatch)
    assert rel_rms(o, o_ref) < 5e-3 and rel_rms(ht, ht_ref) < 5e-3
    assert rel_rms(o, o_split) < 3e-3 and rel_rms(ht, ht_split) < 3e-3


@pytest.mark.gpu
@pytest.mark.parametrize("K, V, H, HV, dtype", [(128, 512, 1, 2, torch.bfloat16), (64, 256, 2, 2, torch.float16),
                                                (256, 64, 1, 1, torch.bfloat16), (256, 256, 2, 2, torch.float16)])
@pytest.mark.parametrize("state_v_first", [False, True])
def test_split_forward_other_head_dims(K, V, H, HV, dtype, state_v_first, monkeypatch):
    """K != V, several V-blocks per head, GVA, both state layouts, short and empty segments."""
    need_kernel("chunk_gated_delta_rule_fwd", "cuda")
    lengths = [130, 0, 64, 7, 1]
    inp = gdn_inputs(1, sum(lengths), H, K, V, HV=HV, dtype=dtype, h0=True, n_seqs=len(lengths))
    o_ref, ht_ref = _run(recurrent_gated_delta_rule_ref, inp, lengths, False)
    if state_v_first:
        inp["initial_state"] = inp["initial_state"].transpose(-1, -2).contiguous()
    (o, ht), _ = _both(inp, lengths, monkeypatch, state_v_first)
    if state_v_first:
        ht = ht.transpose(-1, -2)
    assert rel_rms(o, o_ref) < 5e-3 and rel_rms(ht, ht_ref) < 5e-3


@pytest.mark.gpu
@pytest.mark.parametrize("D, lengths, value_blocks", [(128, [300, 0, 65, 1], None), (128, [300, 0, 65, 1], "wide"),
                                                       (256, [200, 64], None)])
def test_split_training_forward_gives_the_fused_gradients(D, lengths, value_blocks, monkeypatch):
    """The backward reads the split forward's saved chunk states, W, V_new and T: the gradients must be those of
    the fused forward's saves (up to rounding). "wide": 128-column fused forward and backward chain (the forward
    double-buffers its loads at that width)."""
    need_kernel("chunk_gated_delta_rule_bwd", "cuda")
    if value_blocks is not None:
        monkeypatch.setenv("MOM_OPS_GDN_BV", value_blocks)
    n = len(lengths)
    inp = gdn_inputs(1, sum(lengths), 2, D, D, HV=4, dtype=torch.bfloat16, decay="strong", h0=True, n_seqs=n)
    do = torch.randn(1, sum(lengths), 4, D, device="cuda", dtype=torch.bfloat16)
    dht = torch.randn(n, 4, D, D, device="cuda")

    def grads():
        leaves = {key: t.cuda().detach().requires_grad_(True) for key, t in inp.items()}
        o, ht = _run(mom_ops.chunk_gated_delta_rule, leaves, lengths, False)
        torch.autograd.backward((o, ht), (do, dht))
        return {key: t.grad.float() for key, t in leaves.items()}

    monkeypatch.setenv("MOM_OPS_GDN_SPLIT", "1")
    split = grads()
    monkeypatch.setenv("MOM_OPS_GDN_SPLIT", "0")
    fused = grads()
    for key in fused:
        assert torch.isfinite(split[key]).all(), key
        assert rel_rms(split[key], fused[key]) < 5e-3, (key, rel_rms(split[key], fused[key]))


@pytest.mark.gpu
@pytest.mark.parametrize("K, V, lengths", [(128, 128, [300, 0, 65, 1]), (64, 192, [200, 64]), (128, 64, [1000]),
                                          (256, 128, [300, 0, 65, 1]), (256, 64, [700])])
def test_split_backward_chain_gives_the_chain_kernels_gradients(K, V, lengths, monkeypatch):
    """MOM_OPS_GDN_BWD_SPLIT=1 (chunk-local P^T dO and diag(..) dO first, then the chain; at K = 256 q in a buffer
    of its own) against the one-kernel chain: the same gradients up to the order of one fp32 sum (dVn's two terms)
    before 16-bit rounding."""
    need_kernel("chunk_gated_delta_rule_bwd", "cuda")
    n = len(lengths)
    inp = gdn_inputs(1, sum(lengths), 2, K, V, HV=4, dtype=torch.bfloat16, decay="strong", h0=True, n_seqs=n)
    do = torch.randn(1, sum(lengths), 4, V, device="cuda", dtype=torch.bfloat16)
    dht = torch.randn(n, 4, K, V, device="cuda")

    def grads(split):
        monkeypatch.setenv("MOM_OPS_GDN_BWD_SPLIT", split)
        leaves = {key: t.cuda().detach().requires_grad_(True) for key, t in inp.items()}
        o, ht = _run(mom_ops.chunk_gated_delta_rule, leaves, lengths, False)
        torch.autograd.backward((o, ht), (do, dht))
        return {key: t.grad.float() for key, t in leaves.items()}

    split, chain = grads("1"), grads("0")
    for key in chain:
        assert torch.isfinite(split[key]).all(), key
        assert rel_rms(split[key], chain[key]) < 3e-3, (key, rel_rms(split[key], chain[key]))


def _split_outputs_and_gradients(K, V, lengths, monkeypatch):
    """run(**env) -> [o, ht, the inputs' gradients] of the split forward and backward (2 heads, GVA to 4, strong decay,
    h0 and dht given) with the environment variables env set; the same inputs on every call."""
    need_kernel("chunk_gated_delta_rule_bwd", "cuda")
    n = len(lengths)
    inp = gdn_inputs(1, sum(lengths), 2, K, V, HV=4, dtype=torch.bfloat16, decay="strong", h0=True, n_seqs=n)
    do = torch.randn(1, sum(lengths), 4, V, device="cuda", dtype=torch.bfloat16)
    dht = torch.randn(n, 4, K, V, device="cuda")
    monkeypatch.setenv("MOM_OPS_GDN_SPLIT", "1")
    monkeypatch.setenv("MOM_OPS_GDN_BWD_SPLIT", "1")

    def run(**env):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        leaves = {key: t.cuda().detach().requires_grad_(True) for key, t in inp.items()}
        o, ht = _run(mom_ops.chunk_gated_delta_rule, leaves, lengths, False)
        torch.autograd.backward((o, ht), (do, dht))
        return [o, ht] + [leaves[key].grad for key in sorted(leaves)]

    return run


@pytest.mark.gpu
@pytest.mark.parametrize("K, V, lengths", [(128, 128, [300, 0, 65, 1]), (64, 192, [200, 64]), (256, 64, [130, 7])])
@pytest.mark.parametrize("narrow", ["16", "32"])
def test_split_chains_narrow_value_blocks_are_bitwise_equal(K, V, lengths, narrow, monkeypatch):
    """MOM_OPS_GDN_CHAIN_BV=16 / 32 (the split chains' V-blocks for few sequences) against 64: each element of the state
    and of its gradient sums the same products in the same order either way, so outputs and gradients are bitwise
    equal (at K = 256 the backward's split chain takes 32 columns for 64)."""
    run = _split_outputs_and_gradients(K, V, lengths, monkeypatch)
    for got, want in zip(run(MOM_OPS_GDN_CHAIN_BV=narrow), run(MOM_OPS_GDN_CHAIN_BV="64")):
        assert torch.equal(got, want)


@pytest.mark.gpu
@pytest.mark.parametrize("K, V, lengths", [(128, 128, [300, 0, 65, 1]), (256, 64, [130, 7]), (256, 256, [700, 1])])
@pytest.mark.parametrize("chain_bv", ["32", "64"])
def test_split_chain_on_wgmma_is_bitwise_the_mma_sync_chain(K, V, lengths, chain_bv, monkeypatch):
    """The split chains on wgmma (MOM_OPS_GDN_CHAIN_WGMMA, the default at K = 128 / 256 with 32- or 64-column
    V-blocks; the backward's takes 32 for 64 at K = 256) against the mma.sync chains: the same 16-bit operands and the
    same k-step order, so outputs and gradients are bitwise equal."""
    run = _split_outputs_and_gradients(K, V, lengths, monkeypatch)
    monkeypatch.setenv("MOM_OPS_GDN_CHAIN_BV", chain_bv)
    for got, want in zip(run(MOM_OPS_GDN_CHAIN_WGMMA="1"), run(MOM_OPS_GDN_CHAIN_WGMMA="0")):
        assert torch.equal(got, want), (got.float() - want.float()).abs().max().item()


@pytest.mark.gpu
@pytest.mark.parametrize("K, V, lengths", [(128, 128, [300, 0, 65, 1]), (256, 64, [130, 7]), (256, 256, [700, 1])])
@pytest.mark.parametrize("chain_bv", ["32", "64"])
@pytest.mark.parametrize("wgmma", ["0", "1"])
def test_split_chain_tma_loads_are_bitwise_the_cp_async_ones(K, V, lengths, chain_bv, wgmma, monkeypatch):
    """The chains' stage tiles by TMA (MOM_OPS_GDN_CHAIN_TMA, the default: the forward wgmma chain's W and K, the
    backward split chain's q, k and W, on wgmma or mma.sync) against cp.async: the same tiles (the rows past a sequence
    zeroed either way), so everything downstream is bitwise equal."""
    run = _split_outputs_and_gradients(K, V, lengths, monkeypatch)
    monkeypatch.setenv("MOM_OPS_GDN_CHAIN_BV", chain_bv)
    monkeypatch.setenv("MOM_OPS_GDN_CHAIN_WGMMA", wgmma)
    for got, want in zip(run(MOM_OPS_GDN_CHAIN_TMA="1"), run(MOM_OPS_GDN_CHAIN_TMA="0")):
        assert torch.equal(got, want), (got.float() - want.float()).abs().max().item()


@pytest.mark.gpu
@pytest.mark.parametrize("K, V, HV", [(64, 128, 2), (128, 256, 4), (256, 256, 2)])
def test_split_output_kernels_agree(K, V, HV, monkeypatch):
    """The split forward's 128-column output kernel on wgmma (the default where V % 128 == 0) against the mma.sync one
    (MOM_OPS_GDN_OUTPUT_WGMMA=0): the same products in k-steps of 16 and the same 16-bit QKm, so o agrees to fp32
    summation order (the CPU emulator has them bit for bit); ht comes from the chain and is identical."""
    need_kernel("chunk_gated_delta_rule_fwd", "cuda")
    monkeypatch.setenv("MOM_OPS_GDN_SPLIT", "1")
    lengths = [300, 0, 65, 1, 129]
    inp = {key: t.cuda() for key, t in gdn_inputs(1, sum(lengths), 2, K, V, HV=HV, dtype=torch.bfloat16, h0=True,
                                                    n_seqs=len(lengths)).items()}
    o, ht = _run(mom_ops.chunk_gated_delta_rule, inp, lengths, False)
    monkeypatch.setenv("MOM_OPS_GDN_OUTPUT_WGMMA", "0")
    o_mma, ht_mma = _run(mom_ops.chunk_gated_delta_rule, inp, lengths, False)
    assert torch.isfinite(o).all() and torch.equal(ht, ht_mma)
    assert rel_rms(o, o_mma) < 1e-3, rel_rms(o, o_mma)


@pytest.mark.gpu
@pytest.mark.parametrize("K, V, lengths", [(128, 128, [2000]), (128, 256, [300, 0, 65, 1]), (256, 256, [700, 7]),
                                           (64, 192, [500]), (128, 128, [9000, 4500])])
def test_split_outputs_beside_the_chain_are_the_same(K, V, lengths, monkeypatch):
    """MOM_OPS_GDN_OVERLAP=1 (the output kernel launched beside the chain, taking each chunk once the chain's counters
    say its S0 and V_new are written; one long sequence takes the chain with fewer load stages): the same kernels and
    sums, so o and ht are bitwise those of the launches one after another, inference and training (the saves too),
    whether the chain signals each chunk (MOM_OPS_GDN_CHUNK_SIGNAL=1) or several at a time (141 and 71 chunks: every
    4 and 2)."""
    need_kernel("chunk_gated_delta_rule_bwd", "cuda")
    monkeypatch.setenv("MOM_OPS_GDN_SPLIT", "1")
    n = len(lengths)
    inp = gdn_inputs(1, sum(lengths), 2, K, V, HV=2, dtype=torch.bfloat16, h0=True, n_seqs=n)
    do = torch.randn(1, sum(lengths), 2, V, device="cuda", dtype=torch.bfloat16)

    def run():
        gpu = {key: t.cuda() for key, t in inp.items()}
        with torch.no_grad():
            o_inf, ht_inf = _run(mom_ops.chunk_gated_delta_rule, gpu, lengths, False)
        leaves = {key: t.detach().requires_grad_(True) for key, t in gpu.items()}
        o, ht = _run(mom_ops.chunk_gated_delta_rule, leaves, lengths, False)
        torch.autograd.backward(o, do)
        return [o_inf, ht_inf, o.detach(), ht.detach()] + [t.grad for t in leaves.values()]

    monkeypatch.setenv("MOM_OPS_GDN_OVERLAP", "0")
    apart = run()
    monkeypatch.setenv("MOM_OPS_GDN_OVERLAP", "1")
    for signal in ("1", "16"):
        monkeypatch.setenv("MOM_OPS_GDN_CHUNK_SIGNAL", signal)
        beside = run()
        for x, y in zip(apart, beside):
            assert torch.equal(x, y), signal


@pytest.mark.gpu
@pytest.mark.parametrize("value", ["0", "x", "4x", "99999999999"])
def test_chunk_signal_must_be_a_count(value, monkeypatch):
    """A bad MOM_OPS_GDN_CHUNK_SIGNAL (read where the outputs run beside the chain) is a ValueError naming it."""
    need_kernel("chunk_gated_delta_rule_fwd", "cuda")
    for name, setting in (("MOM_OPS_GDN_SPLIT", "1"), ("MOM_OPS_GDN_OVERLAP", "1"), ("MOM_OPS_GDN_CHUNK_SIGNAL", value)):
        monkeypatch.setenv(name, setting)
    inp = {key: t.cuda() for key, t in gdn_inputs(1, 300, 2, 128, 128, dtype=torch.bfloat16).items()}
    with pytest.raises(ValueError, match="MOM_OPS_GDN_CHUNK_SIGNAL"):
        _run(mom_ops.chunk_gated_delta_rule, inp, [300], False)


@pytest.mark.gpu
@pytest.mark.parametrize("lengths", [[500, 120, 110, 100, 90], [200, 200, 200, 200, 200]], ids=["one_long", "even"])
def test_split_chain_width_chosen_on_the_device(lengths, monkeypatch):
    """K = 256, five sequences x 4 heads: 160 narrow (32-column) split chain CTAs, more than the SMs, so the order
    kernel simulates both widths from the lengths (narrow for one long sequence, wide for even ones) and both chain
    launches go out, the one not chosen returning at once (forward_chain_width_choice). Either width gives bitwise
    the same outputs (test_split_chains_narrow_value_blocks_are_bitwise_equal), so the chosen run equals both forced
    ones (MOM_OPS_GDN_CHAIN_BV, which skips the choice)."""
    need_kernel("chunk_gated_delta_rule_fwd", "cuda")
    if torch.cuda.get_device_properties(0).multi_processor_count >= 160:
        pytest.skip("160 narrow chain CTAs fit in one wave on this GPU: no choice to make")
    for name in ("MOM_OPS_GDN_CHAIN_BV", "MOM_OPS_GDN_OVERLAP", "MOM_OPS_GDN_SPLIT"):
        monkeypatch.delenv(name, raising=False)
    inp = gdn_inputs(1, sum(lengths), 4, 256, 256, dtype=torch.bfloat16, decay="strong", h0=True, n_seqs=5)
    gpu = {key: t.cuda() for key, t in inp.items()}
    chosen = _run(mom_ops.chunk_gated_delta_rule, gpu, lengths, False)
    for chain_bv in ("32", "64"):
        monkeypatch.setenv("MOM_OPS_GDN_CHAIN_BV", chain_bv)
        forced = _run(mom_ops.chunk_gated_delta_rule, gpu, lengths, False)
        for got, want in zip(chosen, forced):
            assert torch.equal(got, want), chain_bv
