"""Chunked gated delta rule scan (fla's `chunk_gated_delta_rule` signature), with autograd."""

from __future__ import annotations

import warnings

import torch

from mom_ops._autograd import below_autograd, function_of, once_differentiable


def check_scan_args(q, k, v, initial_state, cu_seqlens, state_v_first, kwargs, allow_chunk_size: bool) -> bool:
    """fla's argument checks, with fla's messages; returns state_v_first after the deprecated alias."""
    if "transpose_state_layout" in kwargs:
        if state_v_first:
            raise ValueError("Cannot pass both `state_v_first` and the deprecated `transpose_state_layout`.")
        warnings.warn("`transpose_state_layout` is deprecated and renamed to `state_v_first`.", DeprecationWarning)
        state_v_first = kwargs.pop("transpose_state_layout")
    if "head_first" in kwargs:
        raise DeprecationWarning("head_first has been removed. Inputs must be in `[B, T, H, ...]` format.")
    if allow_chunk_size:  # (the result does not depend on it: mom_ops' kernels use 64 whatever is asked)
        chunk_size = kwargs.pop("chunk_size", 64)
        if chunk_size not in (16, 32, 64):
            raise ValueError(f"`chunk_size` must be 16, 32, or 64 for Gated Delta Rule, got {chunk_size}.")
    if kwargs:
        raise TypeError(f"unexpected keyword arguments: {sorted(kwargs)}")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, T, H, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(
            f"q and k must have the same number of heads, but got q.shape[2]={q.shape[2]} and k.shape[2]={k.shape[2]}"
        )
    H, HV = q.shape[2], v.shape[2]
    if H == 0 or q.shape[3] == 0:
        raise ValueError(f"q, k must have H >= 1 heads of dim K >= 1, got shape {tuple(q.shape)}")
    if v.shape[3] == 0:
        raise ValueError(f"v must have a value dim V >= 1, got shape {tuple(v.shape)}")
    if HV % H != 0:
        raise ValueError(
            f"For GVA, num_v_heads (HV={HV}) must be evenly divisible by num_heads (H={H}), but got HV % H = {HV % H}"
        )
    if initial_state is not None and initial_state.dim() != 4:
        raise ValueError(f"initial_state must be [N, HV, K, V] (or [N, HV, V, K]), got shape "
                         f"{tuple(initial_state.shape)}")
    if cu_seqlens is not None:
        if q.shape[0] != 1:
            raise ValueError(
                f"The batch size is expected to be 1 rather than {q.shape[0]} when using `cu_seqlens`."
                "Please flatten variable-length inputs before processing."
            )
        if initial_state is not None and initial_state.shape[0] != len(cu_seqlens) - 1:
            raise ValueError(
                "The number of initial states is expected to be equal to the number of input sequences, "
                f"i.e., {len(cu_seqlens) - 1} rather than {initial_state.shape[0]}."
            )
    return state_v_first


def fla_activations(g, beta, use_gate_in_kernel=False, A_log=None, dt_bias=None, use_beta_sigmoid_in_kernel=False,
                    allow_neg_eigval=False):
    """fla 0.6.0's in-kernel activations as torch expressions before the scan (fp32, fp64 for fp64; differentiable):
    with use_gate_in_kernel, g is the raw gate and becomes -exp(A_log) softplus(g + dt_bias); with
    use_beta_sigmoid_in_kernel, beta is a logit and becomes sigmoid(beta) (2 sigmoid(beta) with allow_neg_eigval)."""
    if allow_neg_eigval and not use_beta_sigmoid_in_kernel:
        raise ValueError("`allow_neg_eigval=True` requires `use_beta_sigmoid_in_kernel=True`.")
    if use_gate_in_kernel:
        if A_log is None:
            raise ValueError("`A_log` must be provided when `use_gate_in_kernel=True`.")
        if g is None:
            raise ValueError("`g` (raw pre-activation) must be provided when `use_gate_in_kernel=True`.")
        heads = g.shape[-1] if g.dim() > 0 else 0
        for name, t in (("A_log", A_log), ("dt_bias", dt_bias)):
            if t is not None and tuple(t.shape) != (heads,):
                raise ValueError(f"`{name}` must have shape ({heads},) (g's heads), got {tuple(t.shape)}")
        math = torch.promote_types(g.dtype, torch.float32)  # (fp64 stays fp64: gradcheck)
        x = g.to(math) if dt_bias is None else g.to(math) + dt_bias.to(math)
        g = -A_log.to(math).exp() * torch.nn.functional.softplus(x)
    if use_beta_sigmoid_in_kernel:
        math = torch.promote_types(beta.dtype, torch.float32)
        beta = torch.sigmoid(beta.to(math)) * (2.0 if allow_neg_eigval else 1.0)
    return g, beta


def state_in_fp32(initial_state: torch.Tensor | None) -> torch.Tensor | None:
    """A 16-bit initial state as fp32, as fla casts it (differentiable); any other as it is (the ops check it)."""
    if initial_state is not None and initial_state.dtype in (torch.float16, torch.bfloat16):
        return initial_state.float()
    return initial_state


def check_unsupported(**named) -> None:
    """fla arguments mom_ops takes only at their defaults (None / False): an error naming the others."""
    for name, value in named.items():
        if value is not None and value is not False:
            raise NotImplementedError(f"mom_ops does not support `{name}` (fla's); pass it as None / False")


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    use_beta_sigmoid_in_kernel: bool = False,
    allow_neg_eigval: bool = False,
    state_v_first: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None,
    chunk_indices: torch.Tensor | None = None,
    cp_context=None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated delta rule over [B, T] (or varlen with cu_seqlens), chunked form.

    q, k: [B, T, H, K]; v: [B, T, HV, V] (HV a multiple of H: grouped value heads); g: [B, T, HV] per-step log
    decay (<= 0); beta: [B, T, HV]; initial_state: fp32 [N, HV, K, V] ([N, HV, V, K] with state_v_first=True);
    cu_seqlens: [N+1] (then B == 1); rows past cu_seqlens[-1] belong to no sequence: their o and gradients are 0
    (MoM's packed stream ends in such rows). chunk_indices, cu_seqlens_cpu, chunk_size (16 / 32 / 64): accepted for
    fla's signature; the kernels derive the chunks from cu_seqlens on the device, in chunks of 64. scale defaults to
    K ** -0.5. fla 0.6.0's signature, in its order: use_beta_sigmoid_in_kernel / allow_neg_eigval and, as keywords,
    use_gate_in_kernel / A_log / dt_bias apply fla's activations to beta and g first (fla_activations); cp_context
    (context parallelism) is not supported. Unknown keywords are an error (fla ignores them).
    Returns o [B, T, HV, V] in q's dtype and the fp32 final state (None unless output_final_state).
    Differentiable w.r.t. q, k, v, g, beta and initial_state (a 16-bit initial_state is used in fp32, as fla does).
    """
    check_unsupported(cp_context=cp_context)
    gate = {name: kwargs.pop(name) for name in ("use_gate_in_kernel", "A_log", "dt_bias") if name in kwargs}
    state_v_first = check_scan_args(q, k, v, initial_state, cu_seqlens, state_v_first, kwargs, allow_chunk_size=True)
    g, beta = fla_activations(g, beta, **gate, use_beta_sigmoid_in_kernel=use_beta_sigmoid_in_kernel,
                              allow_neg_eigval=allow_neg_eigval)
    initial_state = state_in_fp32(initial_state)
    if scale is None:
        scale = k.shape[-1] ** -0.5
    args = (q, k, v, g, beta, float(scale), initial_state, output_final_state, use_qk_l2norm_in_kernel,
            state_v_first, cu_seqlens, chunk_indices)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, g, beta, initial_state)):
        # training: the forward also keeps what the backward reads (chunk-start states, W, V_new, T on CUDA)
        o, final_state, *_ = _FWD_TRAIN.apply(*args)
    else:
        o, final_state = below_autograd(torch.ops.mom_ops.chunk_gated_delta_rule_fwd, *args)
    return o, (final_state if output_final_state else None)


def _setup(ctx, inputs, output):
    """Saves the inputs, and the training forward's chunk_states, w, v_new, t (outputs past o and final_state; not
    differentiable) for the backward."""
    q, k, v, g, beta, scale, h0, _, use_l2norm, state_v_first, cu_seqlens, chunk_indices = inputs
    ctx.scale, ctx.use_l2norm, ctx.state_v_first = scale, use_l2norm, state_v_first
    # Outputs without a gradient come to the backward as None, not as zero tensors (autograd would otherwise fill
    # zeros the size of every saved chunk state, ~0.2 ms per layer step).
    ctx.set_materialize_grads(False)
    saved_forward = tuple(output[2:])
    ctx.mark_non_differentiable(*saved_forward)
    ctx.save_for_backward(q, k, v, g, beta, h0, cu_seqlens, chunk_indices, *saved_forward)


@once_differentiable
def _backward(ctx, grad_o, grad_final_state, *_grad_saved):
    q, k, v, g, beta, h0, cu_seqlens, chunk_indices, *saved = ctx.saved_tensors
    if grad_final_state is not None and grad_final_state.numel() == 0:
        grad_final_state = None
    if grad_o is None:
        grad_o = torch.zeros_like(v)
    dq, dk, dv, dg, dbeta, dh0 = torch.ops.mom_ops.chunk_gated_delta_rule_bwd(
        q, k, v, g, beta, ctx.scale, h0, grad_o.contiguous(), grad_final_state, ctx.use_l2norm, ctx.state_v_first,
        cu_seqlens, chunk_indices, *saved,
    )
    need = ctx.needs_input_grad
    pick = lambda i, t: t if need[i] else None  # noqa: E731
    return (pick(0, dq), pick(1, dk), pick(2, dv), pick(3, dg), pick(4, dbeta), None,
            pick(6, dh0) if h0 is not None else None, None, None, None, None, None)


torch.library.register_autograd("mom_ops::chunk_gated_delta_rule_fwd", _backward, setup_context=_setup)
torch.library.register_autograd("mom_ops::chunk_gated_delta_rule_fwd_train", _backward, setup_context=_setup)
_FWD_TRAIN = function_of(torch.ops.mom_ops.chunk_gated_delta_rule_fwd_train, _setup, _backward)
