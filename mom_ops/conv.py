"""Per-segment causal depthwise conv (+ SiLU): the short conv of MoM's q, k, v streams, restarted in every segment."""

from __future__ import annotations

import torch


def segment_conv(x: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor,
                 history: torch.Tensor | None = None, activation: bool = True) -> torch.Tensor:
    """Depthwise causal conv inside each segment of a packed stream (never across segments), SiLU by default.

    x [R, C]; weight [C, W] (weight[:, W-1] multiplies the current row, 1 <= W <= 8); cu_seqlens [S+1] int32/int64
    (rows past cu_seqlens[-1] belong to no segment and give 0); history [S, W-1, C]: the inputs before each
    segment, oldest first (zeros when None).
    y[r] = silu(sum_i weight[:, W-1-i] * x(r-i)), x(r-i) taken from the history when r-i is before the segment.
    Differentiable in x, weight and history. Returns [R, C] in x's dtype.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be [R, C], got shape {tuple(x.shape)}")
    return torch.ops.mom_ops.segment_conv_fwd(x, weight, cu_seqlens, history, activation)


def _setup(ctx, inputs, output):
    x, weight, cu_seqlens, history, activation = inputs
    ctx.activation = activation
    ctx.save_for_backward(x, weight, cu_seqlens, history)


def _backward(ctx, grad_y):
    x, weight, cu_seqlens, history = ctx.saved_tensors
    need = ctx.needs_input_grad
    if not (need[0] or need[1] or need[3]):
        return None, None, None, None, None
    grad_x, grad_weight, grad_history = torch.ops.mom_ops.segment_conv_bwd(
        grad_y.contiguous(), x, weight, cu_seqlens, history, ctx.activation)
    return (grad_x if need[0] else None, grad_weight if need[1] else None, None,
            grad_history if history is not None and need[3] else None, None)


torch.library.register_autograd("mom_ops::segment_conv_fwd", _backward, setup_context=_setup)
