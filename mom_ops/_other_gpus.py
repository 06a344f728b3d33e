"""The ops on GPUs this build's CUDA kernels do not run on: Triton fallbacks (csrc/common/other_gpus.h).

The CUDA kernels are built for sm_90a (H100, H200, GH200) only: wgmma, TMA and setmaxnreg have no other target. On
any other GPU (an A100, a B200) an op's CUDA entry checks its arguments as usual, then calls `mom_ops::<op>_triton`,
an op with the same schema defined here, whose CUDA kernel (registered when Triton is installed) runs the op's
Triton reference from triton_ref/ (torch ops for unpermute's backward). The scan and decode ops do the same, with a
warning once, for inputs their kernels do not take (float32 q, k, v, head dims other than 64 / 128 / 256: fla's op
takes them). In a build without CUDA kernels (a CUDA torch but no nvcc) the same functions serve the ops' own CUDA
key. MOM_OPS_TRITON_FALLBACK=1 sends every GPU here, so that the H100 tests them too.

Correct rather than fast: the scan is the Triton reference's (one program per sequence, head and 32 value columns;
its backward is the recurrent one), and the forward's dots take "tf32" (fp32 operands rounded to 10-bit mantissas:
~5e-4, less than the 16-bit operands of the CUDA kernels and fla). No host syncs, so CUDA graphs still capture.
"""

from __future__ import annotations

import importlib.util
import os
import types

import torch

from mom_ops import _C

_LIB = torch.library.Library("mom_ops", "FRAGMENT")
_CUDA_BUILD = _C.build_info()["cuda"]  # whether this build has CUDA kernels at all
FALLBACKS = {}  # op name -> its fallback, a function with the op's arguments and returns


def _fallback(op: str):
    def register(fn):
        FALLBACKS[op] = fn
        return fn

    return register


def kernels_run_on(device: torch.device) -> bool:
    """Whether this build's CUDA kernels run on `device` (a CUDA device); False in a build without them."""
    if not _CUDA_BUILD or os.environ.get("MOM_OPS_TRITON_FALLBACK") == "1":
        return False
    if not torch.cuda.is_available():  # (fake CUDA tensors traced without a GPU: for the GPU the build targets)
        return True
    return _C.cuda_kernels_run_on(device.index if device.index is not None else torch.cuda.current_device())


def scan_kernels_take(q: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the scan's CUDA kernels (not its fallback) run on these inputs: csrc/gdn/gdn_cuda.cu's
    scan_kernels_take, for the fake kernels (only the CUDA kernels' training forward saves tensors)."""
    K, V = q.shape[-1], v.shape[-1]
    return (q.device.type == "cuda" and kernels_run_on(q.device) and q.dtype in (torch.bfloat16, torch.float16)
            and K in (64, 128, 256) and V % (32 if K == 256 else 64) == 0)


def _no_tensor(like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The ops' stand-in for an output that was not asked for."""
    return like.new_empty(0, dtype=dtype if dtype is not None else like.dtype)


def _plan(dst_row: torch.Tensor, src_pair: torch.Tensor) -> types.SimpleNamespace:
    """The fields of a RoutingPlan that triton_ref's routing, conv and readout functions read."""
    return types.SimpleNamespace(dst_row=dst_row.contiguous(), src_pair=src_pair.contiguous(), topk=dst_row.shape[1],
                                 num_tokens=dst_row.shape[0], num_rows=src_pair.shape[0])


# ---- routing


@_fallback("route")
def _route(router_logits, topk, batch_size, cu_seqlens, token_mask, chunk_size):
    from triton_ref.routing import route

    plan = route(router_logits, topk, batch_size=batch_size, cu_seqlens=cu_seqlens, mask=token_mask,
                 chunk_size=chunk_size)
    return plan.weights, plan.memory_ids, plan.dst_row, plan.src_pair, plan.cu_seqlens, plan.chunk_indices


@_fallback("route_backward")
def _route_backward(grad_weights, weights, memory_ids, num_memories, dtype):
    from triton_ref.routing import route_backward

    return route_backward(grad_weights, weights, memory_ids, num_memories, dtype)


@_fallback("permute")
def _permute(x, dst_row, src_pair):
    from triton_ref.routing import permute

    return permute(x, _plan(dst_row, src_pair))


@_fallback("unpermute")
def _unpermute(y, dst_row, src_pair, weights):
    from triton_ref.routing import unpermute

    return unpermute(y, _plan(dst_row, src_pair), weights.contiguous() if weights is not None else None)


@_fallback("unpermute_backward")
def _unpermute_backward(grad_x, y, dst_row, src_pair, weights, need_grad_weights):
    # grad_y[r] = w[p] grad_x[p // k] and grad_weights[p] = <grad_x[p // k], y[dst_row[p]]>, in torch ops
    k = dst_row.shape[1]
    pair = src_pair.long()
    used = (pair >= 0).unsqueeze(1)
    pair = pair.clamp_min(0)
    grad_y = grad_x.float()[pair // k]
    if weights is not None:
        grad_y = grad_y * weights.reshape(-1)[pair].unsqueeze(1)
    grad_y = torch.where(used, grad_y, 0.0).to(y.dtype)
    if not need_grad_weights:
        return grad_y, _no_tensor(y, torch.float32)
    row = dst_row.reshape(-1).long()
    per_pair = (grad_x.float().repeat_interleave(k, 0) * y.float()[row.clamp_min(0)]).sum(1)
    return grad_y, torch.where(row >= 0, per_pair, 0.0).view(dst_row.shape)


# ---- gated delta rule scan


@_fallback("chunk_gated_delta_rule_fwd")
def _gdn_fwd(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm, state_v_first, cu_seqlens,
             chunk_indices):
    from triton_ref.gdn import chunk_gated_delta_rule

    o, ht = chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm,
                                   state_v_first, cu_seqlens, precision="tf32")
    return o, ht if ht is not None else _no_tensor(q, torch.float32)


@_fallback("chunk_gated_delta_rule_fwd_train")
def _gdn_fwd_train(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm, state_v_first,
                   cu_seqlens, chunk_indices):
    o, ht = _gdn_fwd(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm, state_v_first,
                     cu_seqlens, chunk_indices)
    return o, ht, _no_tensor(q), _no_tensor(q), _no_tensor(q), _no_tensor(q)  # saves nothing: the backward recomputes


@_fallback("chunk_gated_delta_rule_bwd")
def _gdn_bwd(q, k, v, g, beta, scale, initial_state, grad_o, grad_final_state, use_qk_l2norm, state_v_first,
             cu_seqlens, chunk_indices, chunk_states=None, w=None, v_new=None, t=None):
    from triton_ref.gdn import chunk_gated_delta_rule_bwd

    dq, dk, dv, dg, dbeta, dh0 = chunk_gated_delta_rule_bwd(q, k, v, g, beta, scale, initial_state, grad_o,
                                                            grad_final_state, use_qk_l2norm, state_v_first, cu_seqlens)
    return dq, dk, dv, dg, dbeta, dh0 if dh0 is not None else _no_tensor(q, torch.float32)


@_fallback("fused_recurrent_gated_delta_rule_fwd")
def _fused_recurrent(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm, state_v_first,
                     cu_seqlens):
    from triton_ref.decode import fused_recurrent_gated_delta_rule

    o, ht = fused_recurrent_gated_delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state,
                                             use_qk_l2norm, state_v_first, cu_seqlens)
    return o, ht if ht is not None else _no_tensor(q, torch.float32)


@_fallback("mom_decode_step")
def _decode_step(q, k, v, g, beta, weights, slots, state_pool, scale, use_qk_l2norm, state_v_first):
    from triton_ref.decode import mom_decode_step

    def run(n0, n1):
        return mom_decode_step(q[n0:n1], k[n0:n1], v[n0:n1], g[n0:n1], beta[n0:n1], weights[n0:n1], slots[n0:n1],
                               state_pool, scale, use_qk_l2norm, state_v_first)

    step = 65535  # the Triton kernel's grid takes the tokens on its z axis: more in pieces, in token order
    tokens = k.shape[0]
    return run(0, tokens) if tokens <= step else torch.cat([run(n, n + step) for n in range(0, tokens, step)])


# ---- gating


@_fallback("gdn_gating_fwd")
def _gating_fwd(a, b, A_log, dt_bias):
    from triton_ref.gating import gdn_gating

    return gdn_gating(a, b, A_log, dt_bias)


@_fallback("gdn_gating_bwd")
def _gating_bwd(grad_g, grad_beta, a, b, A_log, dt_bias, grad_a, grad_b):
    from triton_ref.gating import gdn_gating_backward

    da, db, d_A_log, d_dt_bias = gdn_gating_backward(grad_g, grad_beta, a, b, A_log, dt_bias)
    grad_a.copy_(da)
    grad_b.copy_(db)
    return torch.stack([d_A_log, d_dt_bias])


# ---- readout


def _mix_inputs(o_routed, weights, shared, norm_weight, gate):
    dense = lambda t: t.contiguous() if t is not None else None  # noqa: E731
    return o_routed.contiguous(), weights.contiguous(), dense(shared), dense(norm_weight), dense(gate)


@_fallback("memory_mix_fwd")
def _mix_fwd(o_routed, dst_row, src_pair, weights, shared, norm_weight, gate, eps):
    from triton_ref.readout import memory_mix

    o_routed, weights, shared, norm_weight, gate = _mix_inputs(o_routed, weights, shared, norm_weight, gate)
    with torch.no_grad():
        return memory_mix(o_routed, _plan(dst_row, src_pair), weights, shared, norm_weight, gate, eps)


@_fallback("memory_mix_bwd")
def _mix_bwd(grad_out, o_routed, dst_row, src_pair, weights, shared, norm_weight, gate, eps):
    from triton_ref.readout import memory_mix_backward

    inputs = _mix_inputs(o_routed, weights, shared, norm_weight, gate)
    d_o, d_w, d_shared, d_norm, d_gate = memory_mix_backward(grad_out, *inputs, _plan(dst_row, src_pair), eps)
    none = lambda: _no_tensor(o_routed, torch.float32)  # noqa: E731 (one each: outputs must not alias)
    return (d_o, d_w, d_shared if d_shared is not None else none(), d_norm if d_norm is not None else none(),
            d_gate if d_gate is not None else none())


# ---- conv


def _conv_rows(x, dst_row, src_pair):
    """The conv's input rows: x itself, or permute(x) where the plan's maps are given."""
    if src_pair is None:
        return x
    from triton_ref.routing import permute

    return permute(x, _plan(dst_row, src_pair))


@_fallback("segment_conv_fwd")
def _conv_fwd(x, weight, cu_seqlens, history, activation, dst_row=None, src_pair=None):
    from triton_ref.conv import segment_conv

    return segment_conv(_conv_rows(x, dst_row, src_pair), weight, cu_seqlens, history, activation)


@_fallback("segment_conv_bwd")
def _conv_bwd(grad_y, x, weight, cu_seqlens, history, activation, dst_row=None, src_pair=None):
    from triton_ref.conv import segment_conv_backward

    dx, dw, dh = segment_conv_backward(grad_y, _conv_rows(x, dst_row, src_pair), weight, cu_seqlens, history,
                                       activation)
    return dx, dw, dh if dh is not None else _no_tensor(x, torch.float32)


@_fallback("segment_conv_bwd_into")
def _conv_bwd_into(grad_y, x, weight, cu_seqlens, history, activation, grad_x):
    dx, dw, dh = _conv_bwd(grad_y, x, weight, cu_seqlens, history, activation)
    grad_x.copy_(dx)
    return dw, dh


def _register() -> list[str]:
    """Defines mom_ops::<op>_triton for every op above; with Triton installed, registers the fallbacks as their CUDA
    kernels (or as the ops' own, in a build without CUDA kernels). Returns the ops that have one."""
    have_triton = importlib.util.find_spec("triton") is not None  # (not imported: no start-up cost)
    served = []
    for op, fn in FALLBACKS.items():
        schema = str(getattr(torch.ops.mom_ops, op).default._schema)  # "mom_ops::op(...) -> ..."
        _LIB.define(f"{op}_triton" + schema[len(f"mom_ops::{op}"):])
        if not have_triton:
            continue
        if torch._C._dispatch_has_kernel_for_dispatch_key(f"mom_ops::{op}", "CUDA"):
            _LIB.impl(f"{op}_triton", fn, "CUDA")
        else:
            _LIB.impl(op, fn, "CUDA")
        served.append(op)
    return sorted(served)


TRITON_FALLBACKS = _register()
