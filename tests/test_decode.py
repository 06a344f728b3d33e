"""mom_decode_step against the naive step; stepping token by token equals the scan."""

import pytest
import torch

import mom_ops
from mom_ops.reference import mom_decode_step_ref, recurrent_gated_delta_rule_ref
from tests.helpers import device_param, gdn_inputs, need_kernel, rel_rms


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


@pytest.mark.parametrize("device", device_param())
@pytest.mark.parametrize("state_v_first", [False, True])
def test_decode_step_matches_reference(device, state_v_first):
    need_kernel("mom_decode_step", device)
    inp = _step_inputs(device=device)
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


def test_decode_bad_input():
    inp = _step_inputs()
    bad = dict(inp, slots=inp["slots"].clone())
    bad["slots"][0, 0] = 99
    with pytest.raises(ValueError, match="out of range for state_pool"):
        mom_ops.mom_decode_step(**bad)
    bad["slots"][0, 0] = bad["slots"][0, 1]
    with pytest.raises(ValueError, match="must not repeat"):
        mom_ops.mom_decode_step(**bad)
    with pytest.raises(ValueError, match="state_pool must have dtype"):
        mom_ops.mom_decode_step(**dict(inp, state_pool=inp["state_pool"].double()))
    with pytest.raises(ValueError, match="weights must have shape"):
        mom_ops.mom_decode_step(**dict(inp, weights=inp["weights"][:, :2]))
