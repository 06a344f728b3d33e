"""Fake (meta) kernels: output shapes and dtypes of every op, for torch.compile and FakeTensor tracing."""

from __future__ import annotations

import functools
import inspect
import itertools

import torch
from torch.library import register_fake as _register_fake

from mom_ops._other_gpus import scan_kernels_take


def register_fake(op_name: str):
    """torch.library.register_fake with one check first: every tensor argument on one device, as the real kernels
    check. A meta tensor among real ones dispatches to the fake kernel instead of those checks, and its outputs (empty
    tensors on the first argument's device) would pass for results."""
    def register(fn):
        names = list(inspect.signature(fn).parameters)

        @functools.wraps(fn)
        def checked(*args, **kwargs):
            first = None
            for name, value in itertools.chain(zip(names, args), kwargs.items()):
                if isinstance(value, torch.Tensor):
                    if first is None:
                        first = (name, value.device)
                    elif value.device != first[1]:
                        raise ValueError(f"{name} is on {value.device} and {first[0]} on {first[1]}: the tensors "
                                         f"must be on one device")
            return fn(*args, **kwargs)

        return _register_fake(op_name)(checked)

    return register


def _empty(*shape, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A contiguous tensor on like's device (the kernels' outputs are contiguous, whatever their inputs' strides)."""
    return like.new_empty(shape, dtype=dtype if dtype is not None else like.dtype)


def _math(t: torch.Tensor) -> torch.dtype:
    """The kernels' fp32 math and state dtype: fp64 for fp64 inputs (CPU only)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@register_fake("mom_ops::route")
def _route_fake(router_logits, topk, batch_size, cu_seqlens, token_mask, chunk_size):
    n, m = router_logits.shape
    rows, segments = n * topk, m * batch_size
    w_dtype = torch.float64 if router_logits.dtype == torch.float64 else torch.float32  # fp64 only on CPU
    return (
        _empty(n, topk, like=router_logits, dtype=w_dtype),
        _empty(n, topk, like=router_logits, dtype=torch.int32),
        _empty(n, topk, like=router_logits, dtype=torch.int32),
        _empty(rows, like=router_logits, dtype=torch.int32),
        _empty(segments + 1, like=router_logits, dtype=torch.int32),
        _empty(rows // chunk_size + segments, 2, like=router_logits, dtype=torch.int32),
    )


@register_fake("mom_ops::permute")
def _permute_fake(x, dst_row, src_pair):
    return _empty(src_pair.shape[0], x.shape[1], like=x)


@register_fake("mom_ops::unpermute")
def _unpermute_fake(y, dst_row, src_pair, weights):
    return _empty(dst_row.shape[0], y.shape[1], like=y)


@register_fake("mom_ops::unpermute_backward")
def _unpermute_backward_fake(grad_x, y, dst_row, src_pair, weights, need_grad_weights):
    grad_w = _empty(*(dst_row.shape if need_grad_weights else (0,)), like=y, dtype=_math(y))
    return _empty(*y.shape, like=y), grad_w


def _state_shape(q, v, initial_state, state_v_first, cu_seqlens):
    n = q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    hv, dk, dv = v.shape[2], q.shape[3], v.shape[3]
    return (n, hv, dv, dk) if state_v_first else (n, hv, dk, dv)


@register_fake("mom_ops::chunk_gated_delta_rule_fwd")
def _gdn_fwd_fake(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm, state_v_first,
                  cu_seqlens, chunk_indices):
    o = _empty(*v.shape, like=q)
    shape = _state_shape(q, v, initial_state, state_v_first, cu_seqlens) if output_final_state else (0,)
    return o, _empty(*shape, like=q, dtype=_math(q))


@register_fake("mom_ops::fused_recurrent_gated_delta_rule_fwd")
def _fused_recurrent_fake(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm,
                          state_v_first, cu_seqlens):
    return _gdn_fwd_fake(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm, state_v_first,
                         cu_seqlens, None)


@register_fake("mom_ops::chunk_gated_delta_rule_fwd_train")
def _gdn_fwd_train_fake(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm, state_v_first,
                        cu_seqlens, chunk_indices):
    o, final_state = _gdn_fwd_fake(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm,
                                   state_v_first, cu_seqlens, chunk_indices)
    # the CPU backward and the Triton fallback (other GPUs and inputs the CUDA kernels do not take) save nothing
    if not scan_kernels_take(q, v):
        return o, final_state, _empty(0, like=q), _empty(0, like=q), _empty(0, like=q), _empty(0, like=q)
    rows, n = q.shape[0] * q.shape[1], (q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1)
    hv, dk, dv = v.shape[2], q.shape[3], v.shape[3]
    return (o, final_state, _empty(rows // 64 + n + 1, hv, dk, dv, like=q), _empty(rows, hv, dk, like=q),
            _empty(rows, hv, dv, like=q), _empty(rows, hv, 64, like=q))


@register_fake("mom_ops::chunk_gated_delta_rule_bwd")
def _gdn_bwd_fake(q, k, v, g, beta, scale, initial_state, grad_o, grad_final_state, use_qk_l2norm, state_v_first,
                  cu_seqlens, chunk_indices, chunk_states=None, w=None, v_new=None, t=None):
    dh0 = _empty(*(initial_state.shape if initial_state is not None else (0,)), like=q, dtype=_math(q))
    return (_empty(*q.shape, like=q), _empty(*k.shape, like=k), _empty(*v.shape, like=v), _empty(*g.shape, like=g),
            _empty(*beta.shape, like=beta), dh0)


@register_fake("mom_ops::memory_mix_fwd")
def _memory_mix_fwd_fake(o_routed, dst_row, src_pair, weights, shared, norm_weight, gate, eps):
    return _empty(dst_row.shape[0], o_routed.shape[1], o_routed.shape[2], like=o_routed)


@register_fake("mom_ops::memory_mix_bwd")
def _memory_mix_bwd_fake(grad_out, o_routed, dst_row, src_pair, weights, shared, norm_weight, gate, eps):
    none = lambda: _empty(0, like=o_routed, dtype=torch.float32)  # noqa: E731 (one each: outputs must not alias)
    return (
        _empty(*o_routed.shape, like=o_routed),
        _empty(*weights.shape, like=weights),
        _empty(*shared.shape, like=shared) if shared is not None else none(),
        _empty(*norm_weight.shape, like=norm_weight) if norm_weight is not None else none(),
        _empty(*gate.shape, like=gate) if gate is not None else none(),
    )


@register_fake("mom_ops::segment_conv_fwd")
def _segment_conv_fwd_fake(x, weight, cu_seqlens, history, activation, dst_row=None, src_pair=None):
    rows = x.shape[0] if src_pair is None else src_pair.shape[0]  # with the plan's maps: the stream's rows
    return _empty(rows, x.shape[1], like=x)


@register_fake("mom_ops::segment_conv_bwd")
def _segment_conv_bwd_fake(grad_y, x, weight, cu_seqlens, history, activation, dst_row=None, src_pair=None):
    rows = x.shape[0] if src_pair is None else src_pair.shape[0]
    return (_empty(rows, x.shape[1], like=x), _empty(*weight.shape, like=weight),
            _empty(*history.shape, like=history) if history is not None else _empty(0, like=x, dtype=torch.float32))


@register_fake("mom_ops::segment_conv_bwd_into")
def _segment_conv_bwd_into_fake(grad_y, x, weight, cu_seqlens, history, activation, grad_x):
    return (_empty(*weight.shape, like=weight),
            _empty(*history.shape, like=history) if history is not None else _empty(0, like=x, dtype=torch.float32))


@register_fake("mom_ops::mom_decode_step")
def _mom_decode_step_fake(q, k, v, g, beta, weights, slots, state_pool, scale, use_qk_l2norm, state_v_first):
    return _empty(q.shape[0], v.shape[2], v.shape[3], like=q)


@register_fake("mom_ops::gdn_gating_fwd")
def _gdn_gating_fwd_fake(a, b, A_log, dt_bias):
    g_dtype = torch.float64 if a.dtype == torch.float64 else torch.float32  # fp64 only on CPU
    return _empty(*a.shape, like=a, dtype=g_dtype), _empty(*b.shape, like=b)


@register_fake("mom_ops::gdn_gating_bwd")
def _gdn_gating_bwd_fake(grad_g, grad_beta, a, b, A_log, dt_bias, grad_a, grad_b):
    return _empty(2, A_log.shape[0], like=A_log)


@register_fake("mom_ops::route_backward")
def _route_backward_fake(grad_weights, weights, memory_ids, num_memories, dtype):
    return _empty(weights.shape[0], num_memories, like=weights, dtype=dtype)
