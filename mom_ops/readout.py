"""Memory-mix readout: weighted un-permute of the routed outputs + shared output + optional gated RMSNorm."""

from __future__ import annotations

import torch

from mom_ops._autograd import function_of, once_differentiable
from mom_ops.routing import RoutingPlan


def memory_mix(
    o_routed: torch.Tensor,
    plan: RoutingPlan,
    weights: torch.Tensor | None = None,
    shared: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Mix each token's k routed outputs back into token order, add the shared memory, then normalise.

    o_routed: [R, H, V] packed memory-major rows (the scan output); weights: fp32 [N, k] (default
    plan.weights); shared: [N, H, V]; norm_weight: [V]; gate: [N, H, V].
    out[n, h] = o * rsqrt(mean(o^2) + eps) * norm_weight * silu(gate[n, h])   (norm only with norm_weight; gate
    needs norm_weight) with o = sum_j weights[n, j] * o_routed[dst_row[n, j], h] + shared[n, h].  Returns [N, H, V].
    All tensor inputs are differentiable.
    """
    if o_routed.dim() != 3:
        raise ValueError(f"o_routed must be [R, H, V], got shape {tuple(o_routed.shape)}")
    if weights is None:
        weights = plan.weights
    return _MEMORY_MIX.apply(o_routed, plan.dst_row, plan.src_pair, weights, shared, norm_weight, gate, eps)


def _setup(ctx, inputs, output):
    o_routed, dst_row, src_pair, weights, shared, norm_weight, gate, eps = inputs
    ctx.eps = eps
    ctx.save_for_backward(o_routed, dst_row, src_pair, weights, shared, norm_weight, gate)


@once_differentiable
def _backward(ctx, grad_out):
    o_routed, dst_row, src_pair, weights, shared, norm_weight, gate = ctx.saved_tensors
    d_routed, d_w, d_shared, d_norm, d_gate = torch.ops.mom_ops.memory_mix_bwd(
        grad_out.contiguous(), o_routed, dst_row, src_pair, weights, shared, norm_weight, gate, ctx.eps
    )
    need = ctx.needs_input_grad
    return (
        d_routed if need[0] else None,
        None,
        None,
        d_w if need[3] else None,
        d_shared if shared is not None and need[4] else None,
        d_norm if norm_weight is not None and need[5] else None,
        d_gate if gate is not None and need[6] else None,
        None,
    )


torch.library.register_autograd("mom_ops::memory_mix_fwd", _backward, setup_context=_setup)
_MEMORY_MIX = function_of(torch.ops.mom_ops.memory_mix_fwd, _setup, _backward)
