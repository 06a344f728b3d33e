"""The MoM layer's scan inputs from its packed projection rows k | v | b | a, in one autograd node: k and v conv'd
in place (segment_conv), g and beta from a and b (gdn_gating), and one gradient for the rows, each part written
into its columns (no slicing, copying or concatenating of the rows or their gradient)."""

from __future__ import annotations

import torch

from mom_ops._autograd import below_autograd, once_differentiable
from mom_ops.conv import conv_columns_bwd_into, conv_columns_fwd
from mom_ops.gating import gdn_gating_backward


class _ScanInputs(torch.autograd.Function):
    """Inputs (proj, cu_seqlens, k_conv, v_conv, A_log, dt_bias, k_history, v_history) -> (k, v, g, beta)."""

    @staticmethod
    def forward(ctx, proj, cu_seqlens, k_conv, v_conv, A_log, dt_bias, k_history, v_history):
        k, v = conv_columns_fwd(proj, cu_seqlens, (k_conv, v_conv), (k_history, v_history))
        b, a = _gate_columns(proj, k_conv.shape[0] + v_conv.shape[0])
        g, beta = below_autograd(torch.ops.mom_ops.gdn_gating_fwd, a, b, A_log, dt_bias)
        ctx.save_for_backward(proj, cu_seqlens, k_conv, v_conv, A_log, dt_bias, k_history, v_history)
        return k, v, g, beta

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_k, grad_v, grad_g, grad_beta):
        proj, cu_seqlens, k_conv, v_conv, A_log, dt_bias, k_history, v_history = ctx.saved_tensors
        grad_proj = torch.empty(proj.shape, dtype=proj.dtype, device=proj.device)  # every column written below
        (grad_k_conv, grad_v_conv), (grad_k_history, grad_v_history) = conv_columns_bwd_into(
            grad_proj, (grad_k, grad_v), proj, cu_seqlens, (k_conv, v_conv), (k_history, v_history))
        width = k_conv.shape[0] + v_conv.shape[0]
        b, a = _gate_columns(proj, width)
        grad_b, grad_a = _gate_columns(grad_proj, width)
        grad_A_log, grad_dt_bias = gdn_gating_backward(grad_g, grad_beta, a, b, A_log, dt_bias, grad_a, grad_b)
        grads = (grad_proj, None, grad_k_conv, grad_v_conv, grad_A_log, grad_dt_bias, grad_k_history, grad_v_history)
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad))


def _gate_columns(proj: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The b and a column slices [R, H] after the first `width` (conv'd) columns of [R, width + 2H] rows."""
    heads = (proj.shape[1] - width) // 2
    return proj[:, width:width + heads], proj[:, width + heads:]


def scan_inputs(proj: torch.Tensor, cu_seqlens: torch.Tensor, k_conv: torch.Tensor, v_conv: torch.Tensor,
                A_log: torch.Tensor, dt_bias: torch.Tensor, k_history: torch.Tensor | None = None,
                v_history: torch.Tensor | None = None):
    """proj [R, H*K + H*V + 2H] (k | v | b | a columns), cu_seqlens [S+1], k_conv [H*K, W], v_conv [H*V, W], A_log,
    dt_bias [H], histories [S, W-1, C] or None -> (k [R, H*K], v [R, H*V]: segment_conv with SiLU; g [R, H] fp32,
    beta [R, H]: gdn_gating of the a and b columns). Differentiable in everything but cu_seqlens."""
    if proj.dim() != 2:
        raise ValueError(f"proj must be [R, C], got shape {tuple(proj.shape)}")
    if not proj.is_floating_point():
        raise ValueError(f"proj must be a floating-point tensor, got {proj.dtype}")
    for name, w in (("k_conv", k_conv), ("v_conv", v_conv)):
        if w.dim() != 2 or w.shape[1] != k_conv.shape[-1]:
            raise ValueError(f"{name} must be [channels, W] (k_conv's W), got shape {tuple(w.shape)} (fla's [C, 1, W] "
                             "conv weight: pass weight[:, 0])")
    S, W = cu_seqlens.shape[0] - 1, k_conv.shape[1]
    for name, hist, w in (("k_history", k_history, k_conv), ("v_history", v_history, v_conv)):
        if hist is not None and tuple(hist.shape) != (S, W - 1, w.shape[0]):
            raise ValueError(f"{name} must be [S, W - 1, channels] = {(S, W - 1, w.shape[0])}, got "
                             f"{tuple(hist.shape)}")
    proj = proj if proj.stride(-1) == 1 else proj.contiguous()  # the gates' columns must be dense
    width, heads = k_conv.shape[0] + v_conv.shape[0], A_log.shape[0] if A_log.dim() == 1 else -1
    if proj.shape[1] != width + 2 * heads:
        raise ValueError(f"proj must have k_conv's + v_conv's channels + 2 * heads = {width} + 2 * {heads} columns "
                         f"(heads from A_log's shape {tuple(A_log.shape)}), got {proj.shape[1]}")
    return _ScanInputs.apply(proj, cu_seqlens, k_conv, v_conv, A_log, dt_bias, k_history, v_history)
