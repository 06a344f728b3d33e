"""Reference gated delta rule (DESIGN.md §1): the per-token recurrence and the chunked form, in fp32 (fp64 for
fp64 inputs, so autograd through them checks hand-written backwards)."""

from __future__ import annotations

import torch


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + eps)


def sequences(B, T, cu_seqlens):
    """The sequences as (batch, start, end): each batch row, or cu_seqlens' segments of batch row 0."""
    if cu_seqlens is None:
        return [(b, 0, T) for b in range(B)]
    cu = cu_seqlens.tolist()
    return [(0, cu[i], cu[i + 1]) for i in range(len(cu) - 1)]


def _prepare(q, k, v, g, beta, scale, initial_state, use_qk_l2norm, state_v_first, cu_seqlens):
    """fp32 (fp64) inputs with q, k repeated over the value heads of their group; the sequences as (batch, start,
    end); the initial states as [N, HV, K, V]."""
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v, g, beta = (x.to(ct) for x in (q, k, v, g, beta))
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    q, k = q.repeat_interleave(HV // H, dim=2), k.repeat_interleave(HV // H, dim=2)
    seqs = sequences(B, T, cu_seqlens)
    if initial_state is None:
        h0 = q.new_zeros(len(seqs), HV, K, V)
    else:
        h0 = initial_state.to(ct).transpose(-1, -2) if state_v_first else initial_state.to(ct)
    scale = K**-0.5 if scale is None else scale
    return q, k, v, g, beta, scale, seqs, h0


def _finish(o, dtype, states, output_final_state, state_v_first):
    ht = None
    if output_final_state:
        ht = torch.stack(states)
        ht = ht.transpose(-1, -2).contiguous() if state_v_first else ht
    return o.to(dtype), ht


def recurrent_gated_delta_rule_ref(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                                   use_qk_l2norm_in_kernel=False, state_v_first=False, cu_seqlens=None):
    """Token by token: S = exp(g) S; u = beta (v - S^T k); S = S + k u^T; o = scale S^T q.
    Shapes as mom_ops.chunk_gated_delta_rule; rows outside every sequence give o = 0."""
    dtype = q.dtype
    q, k, v, g, beta, scale, seqs, h0 = _prepare(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel,
                                                 state_v_first, cu_seqlens)
    rows = {}  # (b, t) -> o[b, t]: stacked at the end (in-place row writes would make autograd quadratic in T)
    states = []
    for i, (b, start, end) in enumerate(seqs):
        S = h0[i]  # [HV, K, V]
        for t in range(start, end):
            S = S * g[b, t].exp()[:, None, None]
            u = beta[b, t][:, None] * (v[b, t] - torch.einsum("hkv,hk->hv", S, k[b, t]))
            S = S + k[b, t][:, :, None] * u[:, None, :]
            rows[b, t] = scale * torch.einsum("hkv,hk->hv", S, q[b, t])
        states.append(S)
    zero = v.new_zeros(v.shape[2:])  # rows outside every sequence
    B, T = v.shape[:2]
    o = torch.stack([torch.stack([rows.get((b, t), zero) for t in range(T)]) for b in range(B)]) if B * T else \
        torch.zeros_like(v)
    return _finish(o, dtype, states, output_final_state, state_v_first)


def chunk_gated_delta_rule_ref(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                               use_qk_l2norm_in_kernel=False, state_v_first=False, cu_seqlens=None, chunk_size=64):
    """The chunked form of DESIGN.md §1, chunk by chunk inside each sequence (the last chunk partial)."""
    dtype = q.dtype
    q, k, v, g, beta, scale, seqs, h0 = _prepare(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel,
                                                 state_v_first, cu_seqlens)
    o = torch.zeros_like(v)
    states = []
    for i, (b, start, end) in enumerate(seqs):
        S = h0[i]  # [HV, K, V]
        for c in range(start, end, chunk_size):
            sl = slice(c, min(c + chunk_size, end))
            O, S = chunk_step(q[b, sl], k[b, sl], v[b, sl], g[b, sl], beta[b, sl], S, scale)
            o[b, sl] = O
        states.append(S)
    return _finish(o, dtype, states, output_final_state, state_v_first)


def g_floor(dtype: torch.dtype) -> float:
    """The chunked forms read g clamped below at this: it decays as g = -inf does (e^floor is 0 in the dtype) but
    keeps G = cumsum(g) finite (-inf gave G_i - G_j = -inf + inf = NaN, and g ~ finfo.min absorbed the chunk's other g
    into G: decays of 1). The kernels: gdn_floor_g (csrc/gdn/g_floor.cuh); the recurrence needs none."""
    return -800.0 if dtype == torch.float64 else -110.0


def chunk_step(q, k, v, g, beta, S, scale):
    """One chunk of the chunked form: q, k [L, HV, K], v [L, HV, V], g, beta [L, HV] (fp32, q and k already
    normalised and repeated over the value heads), S [HV, K, V] the state before the chunk.
    Returns o [L, HV, V] and the state after the chunk."""
    # per head: Q, K [HV, L, K]; Vc [HV, L, V]; G, bc [HV, L]
    Q, Kc, Vc = (x.transpose(0, 1) for x in (q, k, v))
    g = g.clamp_min(g_floor(g.dtype))
    G, bc = g.t().cumsum(-1), beta.t()
    L = G.shape[-1]
    diff = G[:, :, None] - G[:, None, :]  # G_i - G_j
    lower = torch.ones(L, L, dtype=torch.bool).tril(-1)
    decay_strict = torch.where(lower, diff, -torch.inf).exp()
    decay_incl = torch.where(lower | torch.eye(L, dtype=torch.bool), diff, -torch.inf).exp()
    A = bc[:, :, None] * (Kc @ Kc.transpose(-1, -2)) * decay_strict
    Tinv = torch.linalg.inv(torch.eye(L, dtype=A.dtype) + A)
    W = Tinv @ (bc[..., None] * G.exp()[..., None] * Kc)
    U = Tinv @ (bc[..., None] * Vc)
    Vnew = U - W @ S
    O = scale * (G.exp()[..., None] * (Q @ S) + ((Q @ Kc.transpose(-1, -2)) * decay_incl) @ Vnew)
    G_last = G[:, -1:]
    S = G_last.exp()[..., None] * S + Kc.transpose(-1, -2) @ ((G_last - G).exp()[..., None] * Vnew)
    return O.transpose(0, 1), S
