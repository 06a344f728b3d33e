"""Per-segment causal depthwise conv (+ SiLU): the short conv of MoM's q, k, v streams, restarted in every segment."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import torch

from mom_ops._autograd import below_autograd, function_of, once_differentiable

if TYPE_CHECKING:
    from mom_ops.routing import RoutingPlan


def segment_conv(x: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor,
                 history: torch.Tensor | None = None, activation: bool = True,
                 plan: RoutingPlan | None = None) -> torch.Tensor:
    """Depthwise causal conv inside each segment of a packed stream (never across segments), SiLU by default.

    x [R, C]; weight [C, W] (weight[:, W-1] multiplies the current row, 1 <= W <= 8); cu_seqlens [S+1] int32/int64
    (rows past cu_seqlens[-1] belong to no segment and give 0); history [S, W-1, C]: the inputs before each
    segment, oldest first (zeros when None).
    y[r] = silu(sum_i weight[:, W-1-i] * x(r-i)), x(r-i) taken from the history when r-i is before the segment.
    With a routing plan, x holds its N tokens' rows [N, C] and the conv runs on the plan's stream permute(x, plan)
    ([R, C]) without writing it out: the same values, one gather-and-write pass fewer, and x's gradient comes back
    through unpermute. Differentiable in x, weight and history. Returns [R, C] in x's dtype.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be [R, C], got shape {tuple(x.shape)}")
    maps = (None, None) if plan is None else (plan.dst_row, plan.src_pair)
    return _SEGMENT_CONV.apply(x, weight, cu_seqlens, history, activation, *maps)


def _setup(ctx, inputs, output):
    x, weight, cu_seqlens, history, activation, dst_row, src_pair = inputs
    ctx.activation = activation
    ctx.save_for_backward(x, weight, cu_seqlens, history, dst_row, src_pair)


@once_differentiable
def _backward(ctx, grad_y):
    x, weight, cu_seqlens, history, dst_row, src_pair = ctx.saved_tensors
    need = ctx.needs_input_grad
    if not (need[0] or need[1] or need[3]):
        return None, None, None, None, None, None, None
    grad_x, grad_weight, grad_history = torch.ops.mom_ops.segment_conv_bwd(
        grad_y.contiguous(), x, weight, cu_seqlens, history, ctx.activation, dst_row, src_pair)
    if dst_row is not None and need[0]:  # grad_x holds the stream rows' gradients: sum each token's rows
        grad_x = below_autograd(torch.ops.mom_ops.unpermute, grad_x, dst_row, src_pair, None)
    return (grad_x if need[0] else None, grad_weight if need[1] else None, None,
            grad_history if history is not None and need[3] else None, None, None, None)


torch.library.register_autograd("mom_ops::segment_conv_fwd", _backward, setup_context=_setup)
_SEGMENT_CONV = function_of(torch.ops.mom_ops.segment_conv_fwd, _setup, _backward)


def conv_columns_fwd(x: torch.Tensor, cu_seqlens: torch.Tensor, weights, histories) -> list[torch.Tensor]:
    """segment_conv (with SiLU) of x's consecutive leading column slices, slice i with weights[i].shape[0] columns,
    read in place: [conv of slice 0, ..., conv of slice n-1]."""
    ends = list(itertools.accumulate(w.shape[0] for w in weights))
    return [below_autograd(torch.ops.mom_ops.segment_conv_fwd, x[:, a:b], w, cu_seqlens, h, True)
            for a, b, w, h in zip([0] + ends[:-1], ends, weights, histories)]


def conv_columns_bwd_into(grad_x: torch.Tensor, grads, x: torch.Tensor, cu_seqlens: torch.Tensor, weights,
                          histories) -> tuple[list, list]:
    """conv_columns_fwd's backward: each slice's grad_x straight into its columns of grad_x (zeros where its output
    got no gradient). Returns (grad_weights, grad_histories), None where there is none."""
    ends = list(itertools.accumulate(w.shape[0] for w in weights))
    grad_weights, grad_histories = [None] * len(weights), [None] * len(weights)
    for i, (a, b, w, h) in enumerate(zip([0] + ends[:-1], ends, weights, histories)):
        if grads[i] is None:
            grad_x[:, a:b].zero_()
            continue
        grad_weights[i], grad_h = torch.ops.mom_ops.segment_conv_bwd_into(
            grads[i], x[:, a:b], w, cu_seqlens, h, True, grad_x[:, a:b])
        grad_histories[i] = grad_h if h is not None else None
    return grad_weights, grad_histories


class _SegmentConvColumns(torch.autograd.Function):
    """segment_conv_columns' autograd: inputs (x, cu_seqlens, n, weight_0 .. weight_{n-1}, history_0 ..)."""

    @staticmethod
    def forward(ctx, x, cu_seqlens, n, *weights_and_histories):
        weights, histories = weights_and_histories[:n], weights_and_histories[n:]
        ctx.n, ctx.width = n, sum(w.shape[0] for w in weights)
        ctx.save_for_backward(x, cu_seqlens, *weights_and_histories)
        return (*conv_columns_fwd(x, cu_seqlens, weights, histories), x[:, ctx.width:].clone())

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        x, cu_seqlens, *weights_and_histories = ctx.saved_tensors
        n = ctx.n
        weights, histories = weights_and_histories[:n], weights_and_histories[n:]
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # every column written below
        grad_weights, grad_histories = conv_columns_bwd_into(grad_x, grads, x, cu_seqlens, weights, histories)
        rest = grad_x[:, ctx.width:]
        if grads[n] is None:
            rest.zero_()
        else:
            rest.copy_(grads[n])
        need = ctx.needs_input_grad
        grad_weights = [g if need[3 + i] else None for i, g in enumerate(grad_weights)]
        grad_histories = [g if need[3 + n + i] else None for i, g in enumerate(grad_histories)]
        return (grad_x if need[0] else None, None, None, *grad_weights, *grad_histories)


def segment_conv_columns(x: torch.Tensor, weights: list[torch.Tensor], cu_seqlens: torch.Tensor,
                         histories: list[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
    """segment_conv (with SiLU) of consecutive leading column slices of one packed tensor, the columns after them
    passed through: x [R, C]; slice i has weights[i].shape[0] columns, weight weights[i] and history histories[i]
    (None: zeros). Returns [conv of slice 0, ..., conv of slice n-1, the remaining columns (a copy)].

    The values of segment_conv on each slice of x.split(...); the difference is the backward: the slices' grad_x go
    straight into one [R, C] gradient (segment_conv_bwd_into), where autograd's split would concatenate separate
    gradients (an extra write and read of all of x; the MoM layer's k | v | b | a projection rows)."""
    if x.dim() != 2:
        raise ValueError(f"x must be [R, C], got shape {tuple(x.shape)}")
    if not weights:
        raise ValueError("weights must name at least one column slice")
    histories = list(histories) if histories is not None else [None] * len(weights)
    if len(histories) != len(weights):
        raise ValueError(f"histories must have one entry per weight ({len(weights)}), got {len(histories)}")
    for i, w in enumerate(weights):
        if not isinstance(w, torch.Tensor) or w.dim() != 2:
            raise ValueError(f"weights[{i}] must be a [C, W] tensor, got "
                             f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    width = sum(w.shape[0] for w in weights)
    if width > x.shape[1]:
        raise ValueError(f"the weights' channels ({width}) exceed x's columns ({x.shape[1]})")
    return list(_SegmentConvColumns.apply(x, cu_seqlens, len(weights), *weights, *histories))
