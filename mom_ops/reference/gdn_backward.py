"""Chunked backward of the gated delta rule, written out by hand (no autograd): the formulas the CUDA backward
of issue #5 implements, checked here against autograd of the per-token recurrence (tests/test_gdn_backward_ref.py).

Per chunk of n rows (DESIGN.md §1; G = cumsum g inside the chunk, Γ_ij = exp(G_i - G_j), S0 the state at the
chunk start, all per value head):
    A  = strict_lower(diag(β) K Kᵀ ∘ Γ),   T = (I + A)⁻¹
    Kb = diag(β e^G) K,  Vb = diag(β) V,   W = T Kb,  U = T Vb,  Vn = U - W S0
    P  = lower(Q Kᵀ ∘ Γ),   O = scale (diag(e^G) Q S0 + P Vn)
    S1 = e^{G_L} S0 + Kᵀ diag(e^{G_L - G}) Vn
The backward walks the chunks of a sequence in reverse with dS = dS1 (dht for the last chunk); it needs S0 of
every chunk, which a forward pass over the sequence provides (the kernel stores them, or recomputes them).
"""

from __future__ import annotations

import torch

from mom_ops.reference.gdn import g_floor, l2norm


def _chunk_forward(Q, K, V, g, beta, S0):
    """The chunk's intermediates (every tensor per value head: Q, K [h, n, dk], V [h, n, dv], g, beta [h, n],
    S0 [h, dk, dv])."""
    n = g.shape[-1]
    G = g.clamp_min(g_floor(g.dtype)).cumsum(-1)
    diff = G[:, :, None] - G[:, None, :]
    strict = torch.ones(n, n, dtype=torch.bool, device=G.device).tril(-1)
    lower = strict | torch.eye(n, dtype=torch.bool, device=G.device)
    gamma_s = torch.where(strict, diff, -torch.inf).exp()  # Γ on the strict lower triangle, 0 elsewhere
    gamma_l = torch.where(lower, diff, -torch.inf).exp()
    KK = K @ K.transpose(-1, -2)
    A = beta[..., None] * KK * gamma_s
    T = torch.linalg.inv(torch.eye(n, dtype=A.dtype, device=A.device) + A)
    eG = G.exp()
    Kb = (beta * eG)[..., None] * K
    Vb = beta[..., None] * V
    W, U = T @ Kb, T @ Vb
    Vn = U - W @ S0
    P = (Q @ K.transpose(-1, -2)) * gamma_l
    decay_to_end = (G[:, -1:] - G).exp()  # e^{G_L - G_i}
    S1 = G[:, -1, None, None].exp() * S0 + K.transpose(-1, -2) @ (decay_to_end[..., None] * Vn)
    return dict(G=G, strict=strict, lower=lower, gamma_s=gamma_s, gamma_l=gamma_l, KK=KK, A=A, T=T, eG=eG, Kb=Kb,
                Vb=Vb, W=W, Vn=Vn, P=P, decay_to_end=decay_to_end, S1=S1)


def _chunk_backward(Q, K, V, g, beta, S0, scale, dO, dS1):
    """(dQ, dK, dV, dg, dbeta, dS0) of one chunk from dO [h, n, dv] and dS1 [h, dk, dv]."""
    f = _chunk_forward(Q, K, V, g, beta, S0)
    G, eG, T, Vn, W, P = f["G"], f["eG"], f["T"], f["Vn"], f["W"], f["P"]
    d_end = f["decay_to_end"]
    dO = scale * dO
    dG = torch.zeros_like(G)

    # S1 = e^{G_L} S0 + Kᵀ diag(e^{G_L - G}) Vn
    eGL = G[:, -1].exp()
    dS0 = eGL[:, None, None] * dS1
    kdS = K @ dS1  # [h, n, dv]: k_i ᵀ dS1
    c = d_end * (kdS * Vn).sum(-1)  # e^{G_L - G_i} k_iᵀ dS1 vn_i
    dK = d_end[..., None] * (Vn @ dS1.transpose(-1, -2))
    dVn = d_end[..., None] * kdS
    dG[:, -1] += eGL * (S0 * dS1).sum((-1, -2)) + c.sum(-1)
    dG -= c

    # O = diag(e^G) Q S0 + P Vn   (scale folded into dO)
    QS = Q @ S0
    dQ = eG[..., None] * (dO @ S0.transpose(-1, -2))
    dS0 = dS0 + Q.transpose(-1, -2) @ (eG[..., None] * dO)
    dG += eG * (QS * dO).sum(-1)
    dP = (dO @ Vn.transpose(-1, -2)) * f["lower"]  # P exists on the lower triangle only
    dVn = dVn + P.transpose(-1, -2) @ dO
    dQK = dP * f["gamma_l"]
    dQ = dQ + dQK @ K
    dK = dK + dQK.transpose(-1, -2) @ Q
    E = dP * P  # dΓ_ij Γ_ij for Γ = e^{G_i - G_j}
    dG += E.sum(-1) - E.sum(-2)

    # Vn = U - W S0,  U = T Vb,  W = T Kb
    dU, dW = dVn, -dVn @ S0.transpose(-1, -2)
    dS0 = dS0 - W.transpose(-1, -2) @ dVn
    dT = dU @ f["Vb"].transpose(-1, -2) + dW @ f["Kb"].transpose(-1, -2)
    dVb, dKb = T.transpose(-1, -2) @ dU, T.transpose(-1, -2) @ dW
    dV = beta[..., None] * dVb
    dbeta = (V * dVb).sum(-1)
    kdKb = (K * dKb).sum(-1)
    dK = dK + (beta * eG)[..., None] * dKb
    dbeta = dbeta + eG * kdKb
    dG += beta * eG * kdKb

    # T = (I + A)⁻¹,  A = strict_lower(diag(β) K Kᵀ ∘ Γ)
    dA = -(T.transpose(-1, -2) @ dT @ T.transpose(-1, -2)) * f["strict"]
    dbeta = dbeta + (dA * f["KK"] * f["gamma_s"]).sum(-1)
    dKK = dA * beta[..., None] * f["gamma_s"]
    dK = dK + (dKK + dKK.transpose(-1, -2)) @ K
    E2 = dA * f["A"]
    dG += E2.sum(-1) - E2.sum(-2)

    dg = dG.flip(-1).cumsum(-1).flip(-1)  # G = cumsum(g): dg_t = sum_{i >= t} dG_i
    dg = torch.where(g < g_floor(g.dtype), 0, dg)  # (the floor's chain rule)
    return dQ, dK, dV, dg, dbeta, dS0


def chunk_gated_delta_rule_bwd_ref(q, k, v, g, beta, scale, initial_state, do, dht, use_qk_l2norm_in_kernel=False,
                                   state_v_first=False, cu_seqlens=None, chunk_size=64):
    """(dq, dk, dv, dg, dbeta, dh0) of mom_ops.chunk_gated_delta_rule, in fp64 for fp64 inputs, else fp32;
    dh0 is None without an initial state. Shapes as the forward; dht may be None."""
    B, T_, H, Kd = q.shape
    HV, Vd = v.shape[2], v.shape[3]
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    q0, k0 = q.to(ct), k.to(ct)
    qn, kn = (l2norm(q0), l2norm(k0)) if use_qk_l2norm_in_kernel else (q0, k0)
    rep = HV // H
    qn, kn = qn.repeat_interleave(rep, dim=2), kn.repeat_interleave(rep, dim=2)
    v_, g_, b_, do_ = v.to(ct), g.to(ct), beta.to(ct), do.to(ct)
    if cu_seqlens is None:
        seqs = [(b, 0, T_) for b in range(B)]
    else:
        cu = cu_seqlens.tolist()
        seqs = [(0, cu[i], cu[i + 1]) for i in range(len(cu) - 1)]
    to_kv = (lambda s: s.transpose(-1, -2)) if state_v_first else (lambda s: s)
    h0 = None if initial_state is None else to_kv(initial_state.to(ct))
    dq, dk = torch.zeros_like(qn), torch.zeros_like(kn)
    dv, dg, dbeta = torch.zeros_like(v_), torch.zeros_like(g_), torch.zeros_like(b_)
    dh0 = None if h0 is None else torch.zeros_like(h0)
    per_head = lambda x, b, sl: x[b, sl].transpose(0, 1)  # noqa: E731  [rows, HV, ...] -> [HV, rows, ...]
    for i, (b, start, end) in enumerate(seqs):
        chunks = [slice(c, min(c + chunk_size, end)) for c in range(start, end, chunk_size)]
        S = h0[i] if h0 is not None else qn.new_zeros(HV, Kd, Vd)
        starts = []  # S0 of every chunk (the forward pass)
        for sl in chunks:
            starts.append(S)
            S = _chunk_forward(per_head(qn, b, sl), per_head(kn, b, sl), per_head(v_, b, sl), g_[b, sl].t(),
                               b_[b, sl].t(), S)["S1"]
        dS = qn.new_zeros(HV, Kd, Vd) if dht is None else to_kv(dht[i].to(ct))
        for sl, S0 in zip(reversed(chunks), reversed(starts)):
            grads = _chunk_backward(per_head(qn, b, sl), per_head(kn, b, sl), per_head(v_, b, sl), g_[b, sl].t(),
                                    b_[b, sl].t(), S0, scale, per_head(do_, b, sl), dS)
            dQ, dK, dV, dgc, dbc, dS = grads
            dq[b, sl], dk[b, sl], dv[b, sl] = dQ.transpose(0, 1), dK.transpose(0, 1), dV.transpose(0, 1)
            dg[b, sl], dbeta[b, sl] = dgc.t(), dbc.t()
        if dh0 is not None:
            dh0[i] = dS
    dq = dq.view(B, T_, H, rep, Kd).sum(3)
    dk = dk.view(B, T_, H, rep, Kd).sum(3)
    if use_qk_l2norm_in_kernel:  # y = x r, r = (|x|^2 + eps)^-1/2:  dx = r (dy - y (y . dy))
        for x, d in ((q0, dq), (k0, dk)):
            y = l2norm(x)
            r = torch.rsqrt(x.square().sum(-1, keepdim=True) + 1e-6)
            d.copy_(r * (d - y * (y * d).sum(-1, keepdim=True)))
    dh0 = None if dh0 is None else to_kv(dh0)
    return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg.to(g.dtype), dbeta.to(beta.dtype), dh0)
