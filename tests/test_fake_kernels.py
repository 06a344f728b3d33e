"""The fake (meta) kernels against the CPU kernels: every output's dtype, shape and strides, for fp32 and fp64 inputs
and for inputs in a transposed layout. torch.compile builds its graphs from the fakes: a fake stride that the kernel
does not produce failed inductor's checks (the backward fakes copied transposed inputs' strides), a fake fp32 state
where the kernel gives fp64 changed results under aot_eager."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import mom_ops

ops = torch.ops.mom_ops


def _t(*shape, dtype, transposed):
    x = torch.randn(*shape, dtype=dtype)
    return x.transpose(-1, -2).contiguous().transpose(-1, -2) if transposed else x


def _calls(dtype, transposed):
    """(name, op, args) of every op, on small inputs."""
    t = lambda *s, d=dtype: _t(*s, dtype=d, transposed=transposed)  # noqa: E731
    q, k, v = t(1, 9, 2, 4), t(1, 9, 2, 4), t(1, 9, 2, 3)
    g, beta = -torch.rand(1, 9, 2, dtype=dtype), torch.rand(1, 9, 2, dtype=dtype)
    cu, h0 = torch.tensor([0, 3, 9]), t(2, 2, 4, 3, d=torch.float32)
    plan = mom_ops.route(torch.randn(8, 3, dtype=dtype), 2, batch_size=1)
    x, y = t(8, 5), t(16, 5)
    o_routed, shared, gate, norm_w = t(16, 2, 4), t(8, 2, 4), t(8, 2, 4), torch.rand(4, dtype=dtype) + 0.5
    xc, w, hist, cu_c = t(10, 6), t(6, 4), t(1, 3, 6), torch.tensor([0, 10])
    a, b = torch.randn(7, 3, dtype=dtype), torch.randn(7, 3, dtype=dtype)  # (gating needs dense heads)
    A_log, dt_bias = torch.rand(3, dtype=dtype), torch.rand(3, dtype=dtype)
    gate_grad_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    scan = (q, k, v, g, beta, 0.5, h0, True, True, False, cu)
    return [
        ("gdn_fwd", ops.chunk_gated_delta_rule_fwd, scan + (None,)),
        ("gdn_fwd_train", ops.chunk_gated_delta_rule_fwd_train, scan + (None,)),
        ("fused_recurrent", ops.fused_recurrent_gated_delta_rule_fwd, scan),
        ("gdn_bwd", ops.chunk_gated_delta_rule_bwd, (q, k, v, g, beta, 0.5, h0, t(1, 9, 2, 3), t(2, 2, 4, 3), True,
                                                     False, cu, None)),
        ("gdn_bwd without h0", ops.chunk_gated_delta_rule_bwd, (q, k, v, g, beta, 0.5, None, t(1, 9, 2, 3), None, True,
                                                                False, cu, None)),
        ("permute", ops.permute, (x, plan.dst_row, plan.src_pair)),
        ("unpermute", ops.unpermute, (y, plan.dst_row, plan.src_pair, plan.weights)),
        ("unpermute_backward", ops.unpermute_backward, (x, y, plan.dst_row, plan.src_pair, plan.weights, True)),
        ("unpermute_backward without weights", ops.unpermute_backward, (x, y, plan.dst_row, plan.src_pair, None,
                                                                        False)),
        ("route", ops.route, (torch.randn(8, 3, dtype=dtype), 2, 1, None, None, 64)),
        ("route_backward", ops.route_backward, (torch.randn(8, 2, dtype=plan.weights.dtype), plan.weights,
                                                plan.memory_ids, 3, dtype)),
        ("memory_mix_fwd", ops.memory_mix_fwd, (o_routed, plan.dst_row, plan.src_pair, plan.weights, shared, norm_w,
                                                gate, 1e-6)),
        ("memory_mix_bwd", ops.memory_mix_bwd, (t(8, 2, 4), o_routed, plan.dst_row, plan.src_pair, plan.weights,
                                                shared, norm_w, gate, 1e-6)),
        ("memory_mix_bwd plain", ops.memory_mix_bwd, (t(8, 2, 4), o_routed, plan.dst_row, plan.src_pair,
                                                      plan.weights, None, None, None, 1e-6)),
        ("segment_conv_fwd", ops.segment_conv_fwd, (xc, w, cu_c, hist, True)),
        ("segment_conv_bwd", ops.segment_conv_bwd, (t(10, 6), xc, w, cu_c, hist, True)),
        ("segment_conv_bwd without history", ops.segment_conv_bwd, (t(10, 6), xc, w, cu_c, None, True)),
        ("segment_conv_bwd_into", ops.segment_conv_bwd_into, (t(10, 6), xc, w, cu_c, hist, True,
                                                              torch.empty(10, 6, dtype=dtype))),
        ("mom_decode_step", ops.mom_decode_step, (t(3, 2, 4), t(3, 2, 2, 4), t(3, 2, 2, 3),
                                                  -torch.rand(3, 2, 2, dtype=dtype), torch.rand(3, 2, 2, dtype=dtype),
                                                  torch.rand(3, 2), torch.tensor([[0, 4], [1, -1], [2, 3]]),
                                                  torch.zeros(5, 2, 4, 3), 0.5, True, False)),
        ("gdn_gating_fwd", ops.gdn_gating_fwd, (a, b, A_log, dt_bias)),
        ("gdn_gating_bwd", ops.gdn_gating_bwd, (torch.randn(7, 3, dtype=gate_grad_dtype), torch.randn(7, 3, dtype=dtype),
                                                a, b, A_log, dt_bias, torch.empty(7, 3, dtype=dtype),
                                                torch.empty(7, 3, dtype=dtype))),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("transposed", [False, True])
def test_fake_kernels_match_the_cpu_kernels(dtype, transposed):
    for name, op, args in _calls(dtype, transposed):
        real = op(*args)
        with FakeTensorMode() as mode:
            fake = op(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
        real, fake = (r if isinstance(r, (tuple, list)) else (r,) for r in (real, fake))
        for i, (r, f) in enumerate(zip(real, fake)):
            assert (r.dtype, r.shape, r.stride()) == (f.dtype, f.shape, f.stride()), f"{name} output {i}"


@pytest.mark.parametrize("transposed", [False, True])
def test_opcheck_every_op(transposed):
    """torch.library.opcheck: the schema (what each op mutates, outputs that do not alias), the fake kernel, the
    autograd registration and AOT dispatch with dynamic shapes, against the CPU kernels. memory_mix_bwd returned one
    empty tensor for all of its outputs not asked for (aliased outputs: the schema's test failed)."""
    for name, op, args in _calls(torch.float32, transposed):
        torch.library.opcheck(op.default, args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_cpu_output_is_a_view(dtype):
    """An output that is a view of the op's buffer (the CPU scan reshaped its o on return) cannot be edited in place
    under autograd ("Output 0 of _OpFunction is a view and is being modified inplace"), unlike fla's op's."""
    for transposed in (False, True):
        for name, op, args in _calls(dtype, transposed):
            out = op(*args)
            for i, o in enumerate(out if isinstance(out, (tuple, list)) else (out,)):
                assert not o._is_view(), f"{name} output {i}"
