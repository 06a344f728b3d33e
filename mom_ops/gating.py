"""GDN gating: the gated delta rule's per-head decay g and write strength beta from raw projections, in one launch
(the six to eight element-wise launches of the torch expression, and their backward, in one or two)."""

from __future__ import annotations

import torch

from mom_ops._autograd import function_of, once_differentiable


def gdn_gating(a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor,
               dt_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """g = -exp(A_log) * softplus(a + dt_bias) and beta = sigmoid(b), per token and head (fla's and vLLM's GDN
    gating, computed in fp32).

    a, b [R, H] (rows may be any stride apart, e.g. column slices of one projection; heads dense); A_log,
    dt_bias [H]. Returns (g [R, H] fp32 (fp64 for fp64 inputs), beta [R, H] in b's dtype): the scan's g and beta.
    Differentiable in a, b, A_log and dt_bias; the parameter gradients are fixed-order sums (deterministic).
    """
    if a.dim() != 2:
        raise ValueError(f"a must be [R, H], got shape {tuple(a.shape)}")
    return _GDN_GATING.apply(a, b, A_log, dt_bias)


def gdn_gating_backward(grad_g: torch.Tensor | None, grad_beta: torch.Tensor | None, a: torch.Tensor,
                        b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor, grad_a: torch.Tensor,
                        grad_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The backward into given grad_a, grad_b ([R, H] in a's dtype; column slices of one gradient allowed); missing
    output gradients count as zeros. Returns (grad_A_log, grad_dt_bias)."""
    g_dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    if grad_g is None:
        grad_g = a.new_zeros(a.shape, dtype=g_dtype)
    if grad_beta is None:
        grad_beta = torch.zeros(b.shape, dtype=b.dtype, device=b.device)
    # dense rows (a column slice may stay as it is); under torch.compile a copy where needed (dynamo before torch 2.7
    # cannot trace stride() in a backward)
    dense = lambda t: (t.contiguous() if torch.compiler.is_compiling()  # noqa: E731
                       else t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous())
    grad_params = torch.ops.mom_ops.gdn_gating_bwd(dense(grad_g), dense(grad_beta), a, b, A_log, dt_bias, grad_a,
                                                   grad_b)
    return grad_params[0], grad_params[1]


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


@once_differentiable
def _backward(ctx, grad_g, grad_beta):
    a, b, A_log, dt_bias = ctx.saved_tensors
    grad_a, grad_b = (torch.empty(a.shape, dtype=a.dtype, device=a.device) for _ in range(2))
    grad_A_log, grad_dt_bias = gdn_gating_backward(grad_g, grad_beta, a, b, A_log, dt_bias, grad_a, grad_b)
    need = ctx.needs_input_grad
    return (grad_a if need[0] else None, grad_b if need[1] else None, grad_A_log if need[2] else None,
            grad_dt_bias if need[3] else None)


torch.library.register_autograd("mom_ops::gdn_gating_fwd", _backward, setup_context=_setup)
_GDN_GATING = function_of(torch.ops.mom_ops.gdn_gating_fwd, _setup, _backward)
