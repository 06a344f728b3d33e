"""Decoding: token-by-token gated delta rule (fla's fused_recurrent signature) and the one-launch MoM step."""

from __future__ import annotations

import torch

from mom_ops.gdn import check_scan_args, check_unsupported, fla_activations, state_in_fp32


def fused_recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    gk: torch.Tensor | None = None,
    gv: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    use_gate_in_kernel: bool = False,
    A_log: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    use_beta_sigmoid_in_kernel: bool = False,
    allow_neg_eigval: bool = False,
    state_v_first: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Recurrent (token-by-token) gated delta rule for short inputs; forward only. Shapes as
    `mom_ops.chunk_gated_delta_rule`; fla 0.6.0's signature, in its order: g None means no decay (g = 0), beta None
    means beta = 1, the gate / beta activations as in chunk_gated_delta_rule (fla_activations); per-key / per-value
    decays (gk, gv) are not supported. Returns o [B, T, HV, V] in v's dtype and the fp32 final state (None unless
    output_final_state)."""
    check_unsupported(gk=gk, gv=gv)
    state_v_first = check_scan_args(q, k, v, initial_state, cu_seqlens, state_v_first, kwargs, allow_chunk_size=False)
    if beta is None:
        beta = torch.ones(v.shape[:3], dtype=torch.float32, device=v.device)
    g, beta = fla_activations(g, beta, use_gate_in_kernel, A_log, dt_bias, use_beta_sigmoid_in_kernel,
                              allow_neg_eigval)
    if g is None:
        g = torch.zeros(v.shape[:3], dtype=torch.float32, device=v.device)
    initial_state = state_in_fp32(initial_state)
    if scale is None:
        scale = k.shape[-1] ** -0.5
    o, final_state = torch.ops.mom_ops.fused_recurrent_gated_delta_rule_fwd(
        q, k, v, g, beta, float(scale), initial_state, output_final_state, use_qk_l2norm_in_kernel, state_v_first,
        cu_seqlens,
    )
    return o, (final_state if output_final_state else None)


def _no_backward(name: str, use: str):
    def backward(ctx, *grads):  # (NotImplementedError, as fla's fused_recurrent; a RuntimeError too)
        raise NotImplementedError(f"mom_ops.{name} has no backward (it is an inference op): {use}")

    return backward


# Without these, autograd would give the inputs a None gradient with only a warning.
torch.library.register_autograd(
    "mom_ops::fused_recurrent_gated_delta_rule_fwd",
    _no_backward("fused_recurrent_gated_delta_rule", "train with mom_ops.chunk_gated_delta_rule"),
    setup_context=lambda ctx, inputs, output: None,
)


def mom_decode_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    weights: torch.Tensor,
    slots: torch.Tensor,
    state_pool: torch.Tensor,
    scale: float | None = None,
    use_qk_l2norm_in_kernel: bool = False,
    state_v_first: bool = False,
) -> torch.Tensor:
    """One decode step of N tokens over J memory slots each (routed memories + shared), states in a pool.

    q: [N, H, K], or [N, J, H, K] for one query per slot (MoM: q is convolved per memory); k: [N, J, H, K];
    v: [N, J, HV, V]; g, beta: [N, J, HV]; weights: fp32 [N, J] (1 for the shared slot); slots: int [N, J] pool
    rows (negative = skip); state_pool: fp32 [P, HV, K, V] ([P, HV, V, K] with state_v_first), updated in place.
    Returns out [N, HV, V] = sum_j w_j * scale * S_j^T q_j. Pool rows must not repeat within one call. Inference
    only: no backward (inputs must not need a gradient).
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, g, beta, weights, state_pool)):
        raise ValueError("mom_decode_step has no backward and updates state_pool in place: call it under "
                         "torch.no_grad() or torch.inference_mode()")
    if k.dim() == 0 or k.shape[-1] == 0:
        raise ValueError(f"k must have a head dim K >= 1, got shape {tuple(k.shape)}")
    if scale is None:
        scale = k.shape[-1] ** -0.5
    return torch.ops.mom_ops.mom_decode_step(
        q, k, v, g, beta, weights, slots, state_pool, float(scale), use_qk_l2norm_in_kernel, state_v_first
    )
