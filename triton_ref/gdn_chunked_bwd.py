"""Triton chunked backward of the gated delta rule: the formulas of mom_ops/reference/gdn_backward.py (the plan of
the CUDA backward, issue #5) on matrix products, one program per (sequence, value head) with the whole K x V
state. Pass 1 walks the sequence forward and keeps the state at every chunk start in a workspace; pass 2 walks
it backward, recomputes the chunk (A, T, W, U, V_new, P) and applies the chain rule with dS carried in registers.
dq, dk are per value head (summed over the GVA group by the caller), with respect to the l2-normalised q, k.
Runs under TRITON_INTERPRET=1 on the CPU (fp32 only there). On the H100 (triton 3.6) it is right where it compiles
(K 16 / V 64, K 32 / V 16) but the fp32 (ieee) build of K = V = 32 did not finish in 8 minutes and tf32x3 dots
gave an illegal-address error, so its GPU test is skipped until the kernel is split into smaller programs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triton_ref.gdn import (CHUNK, G_FLOOR, _masked_decay, _sequence_bounds, _unit_lower_inverse,
                            l2norm_backward_, normalised_fp32)


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _gdn_chunked_bwd_kernel(q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, do_ptr, h0_ptr, dht_ptr, cu_ptr, ckpt_ptr,
                            dq_ptr, dk_ptr, dv_ptr, dg_ptr, db_ptr, dh0_ptr, scale, T, NB, stride_sk, stride_sv,
                            HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr,
                            BK: tl.constexpr, BV: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_H0: tl.constexpr,
                            HAS_DHT: tl.constexpr, PRECISION: tl.constexpr):
    """Grid (N, HV). q, k: [rows, HV, K] fp32 (normalised, repeated over the group); v, do: [rows, HV, V];
    g, beta: [rows, HV]; h0, dht, dh0: [N, HV, *, *] fp32 (element (k, v) at k * stride_sk + v * stride_sv);
    ckpt: [NB, HV, BK, BV] fp32 workspace (chunk starting at row r of sequence n -> slot r // C + n);
    dq, dk: [rows, HV, K]; dv: [rows, HV, V]; dg, db: [rows, HV], all fp32 and zero-initialised."""
    i_n, i_hv = tl.program_id(0), tl.program_id(1)
    bos, eos = _sequence_bounds(cu_ptr, i_n, T, IS_VARLEN)
    r = tl.arange(0, C)
    ck, cv = tl.arange(0, BK), tl.arange(0, BV)
    mk, mv = ck < K, cv < V
    s_off = (i_n.to(tl.int64) * HV + i_hv) * K * V + ck[:, None] * stride_sk + cv[None, :] * stride_sv
    s_mask = mk[:, None] & mv[None, :]
    ck_off = ck[:, None] * BV + cv[None, :]  # inside one workspace slot
    strict = r[:, None] > r[None, :]
    incl = r[:, None] >= r[None, :]
    n_chunks = tl.cdiv(eos - bos, C)

    # Pass 1: the state at the start of every chunk -> workspace.
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S = tl.load(h0_ptr + s_off, mask=s_mask, other=0.0)
    for c in range(0, n_chunks):
        rows = bos + c * C + r
        mr = rows < eos
        slot = ((bos + c * C) // C + i_n) * HV + i_hv
        tl.store(ckpt_ptr + slot * BK * BV + ck_off, S)
        m_k = mr[:, None] & mk[None, :]
        m_v = mr[:, None] & mv[None, :]
        k = tl.load(k_ptr + rows[:, None] * (HV * K) + i_hv * K + ck[None, :], mask=m_k, other=0.0)
        v = tl.load(v_ptr + rows[:, None] * (HV * V) + i_hv * V + cv[None, :], mask=m_v, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + rows * HV + i_hv, mask=mr, other=0.0).to(tl.float32)
        g = tl.where(g < G_FLOOR, G_FLOOR, g)  # (see triton_ref/gdn.py G_FLOOR)
        beta = tl.load(beta_ptr + rows * HV + i_hv, mask=mr, other=0.0).to(tl.float32)
        G = tl.cumsum(g, axis=0)
        G_last = tl.sum(tl.where(r == C - 1, G, 0.0), axis=0)
        valid = mr[:, None] & mr[None, :]
        A = beta[:, None] * _dot(k, tl.trans(k), PRECISION) * _masked_decay(G, strict & valid)
        Tm = _unit_lower_inverse(A, C, PRECISION)
        W = _dot(Tm, (beta * tl.exp(G))[:, None] * k, PRECISION)
        Vn = _dot(Tm, beta[:, None] * v, PRECISION) - _dot(W, S, PRECISION)
        d_end = tl.exp(tl.where(mr, G_last - G, float("-inf")))
        S = tl.exp(G_last) * S + _dot(tl.trans(k), d_end[:, None] * Vn, PRECISION)
    tl.debug_barrier()  # pass 2 reads the workspace other threads wrote

    # Pass 2: chunks in reverse, dS = the gradient of the state after the chunk.
    dS = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        dS = tl.load(dht_ptr + s_off, mask=s_mask, other=0.0)
    for cc in range(0, n_chunks):
        c = n_chunks - 1 - cc
        rows = bos + c * C + r
        mr = rows < eos
        slot = ((bos + c * C) // C + i_n) * HV + i_hv
        S0 = tl.load(ckpt_ptr + slot * BK * BV + ck_off)
        m_k = mr[:, None] & mk[None, :]
        m_v = mr[:, None] & mv[None, :]
        k_off = rows[:, None] * (HV * K) + i_hv * K + ck[None, :]
        v_off = rows[:, None] * (HV * V) + i_hv * V + cv[None, :]
        q = tl.load(q_ptr + k_off, mask=m_k, other=0.0)
        k = tl.load(k_ptr + k_off, mask=m_k, other=0.0)
        v = tl.load(v_ptr + v_off, mask=m_v, other=0.0).to(tl.float32)
        dO = scale * tl.load(do_ptr + v_off, mask=m_v, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + rows * HV + i_hv, mask=mr, other=0.0).to(tl.float32)
        floored = g < G_FLOOR  # (see triton_ref/gdn.py G_FLOOR; dg is 0 there: the clamp's chain rule)
        g = tl.where(floored, G_FLOOR, g)
        beta = tl.load(beta_ptr + rows * HV + i_hv, mask=mr, other=0.0).to(tl.float32)

        # Recompute the chunk (padding rows have q = k = v = 0, g = beta = 0).
        G = tl.cumsum(g, axis=0)
        G_last = tl.sum(tl.where(r == C - 1, G, 0.0), axis=0)
        valid = mr[:, None] & mr[None, :]
        gamma_s = _masked_decay(G, strict & valid)
        gamma_l = _masked_decay(G, incl & valid)
        KK = _dot(k, tl.trans(k), PRECISION)
        A = beta[:, None] * KK * gamma_s
        Tm = _unit_lower_inverse(A, C, PRECISION)
        eG = tl.exp(G)
        Kb = (beta * eG)[:, None] * k
        Vb = beta[:, None] * v
        W = _dot(Tm, Kb, PRECISION)
        Vn = _dot(Tm, Vb, PRECISION) - _dot(W, S0, PRECISION)
        P = _dot(q, tl.trans(k), PRECISION) * gamma_l
        d_end = tl.exp(tl.where(mr, G_last - G, float("-inf")))
        eGL = tl.exp(G_last)

        # S1 = e^{G_L} S0 + K^T diag(e^{G_L - G}) Vn
        dS0 = eGL * dS
        kdS = _dot(k, dS, PRECISION)  # [C, BV]
        cterm = d_end * tl.sum(kdS * Vn, axis=1)
        dk = d_end[:, None] * _dot(Vn, tl.trans(dS), PRECISION)
        dVn = d_end[:, None] * kdS
        last = eGL * tl.sum(tl.sum(S0 * dS, axis=1), axis=0) + tl.sum(cterm, axis=0)
        dG = tl.where(r == C - 1, last, 0.0) - cterm  # G_L = G[C-1] (g = 0 on the padding rows)

        # O = scale (diag(e^G) Q S0 + P Vn)   (scale is in dO)
        dq = eG[:, None] * _dot(dO, tl.trans(S0), PRECISION)
        dS0 += _dot(tl.trans(q), eG[:, None] * dO, PRECISION)
        dG += eG * tl.sum(_dot(q, S0, PRECISION) * dO, axis=1)
        dP = tl.where(incl & valid, _dot(dO, tl.trans(Vn), PRECISION), 0.0)
        dVn += _dot(tl.trans(P), dO, PRECISION)
        dQK = dP * gamma_l
        dq += _dot(dQK, k, PRECISION)
        dk += _dot(tl.trans(dQK), q, PRECISION)
        E = dP * P
        dG += tl.sum(E, axis=1) - tl.sum(E, axis=0)

        # Vn = U - W S0,  U = T Vb,  W = T Kb
        dW = -_dot(dVn, tl.trans(S0), PRECISION)
        dS0 -= _dot(tl.trans(W), dVn, PRECISION)
        dT = _dot(dVn, tl.trans(Vb), PRECISION) + _dot(dW, tl.trans(Kb), PRECISION)
        dVb = _dot(tl.trans(Tm), dVn, PRECISION)
        dKb = _dot(tl.trans(Tm), dW, PRECISION)
        dv = beta[:, None] * dVb
        db = tl.sum(v * dVb, axis=1)
        kdKb = tl.sum(k * dKb, axis=1)
        dk += (beta * eG)[:, None] * dKb
        db += eG * kdKb
        dG += beta * eG * kdKb

        # T = (I + A)^-1,  A = strict_lower(diag(beta) K K^T o Gamma)
        dA = -_dot(_dot(tl.trans(Tm), dT, PRECISION), tl.trans(Tm), PRECISION)
        dA = tl.where(strict & valid, dA, 0.0)
        db += tl.sum(dA * KK * gamma_s, axis=1)
        dKK = dA * beta[:, None] * gamma_s
        dk += _dot(dKK + tl.trans(dKK), k, PRECISION)
        E2 = dA * A
        dG += tl.sum(E2, axis=1) - tl.sum(E2, axis=0)
        dg = tl.sum(dG, axis=0) - tl.cumsum(dG, axis=0) + dG  # sum over i >= t
        dg = tl.where(floored, 0.0, dg)

        tl.store(dq_ptr + k_off, dq, mask=m_k)
        tl.store(dk_ptr + k_off, dk, mask=m_k)
        tl.store(dv_ptr + v_off, dv, mask=m_v)
        tl.store(dg_ptr + rows * HV + i_hv, dg, mask=mr)
        tl.store(db_ptr + rows * HV + i_hv, db, mask=mr)
        dS = dS0
    if HAS_H0:
        tl.store(dh0_ptr + s_off, dS, mask=s_mask)


def chunk_gated_delta_rule_bwd(q, k, v, g, beta, scale, initial_state, do, dht, use_qk_l2norm_in_kernel=False,
                               state_v_first=False, cu_seqlens=None):
    """Gradients (dq, dk, dv, dg, dbeta, dh0) of chunk_gated_delta_rule; dh0 is None without initial_state.
    Same contract as triton_ref.gdn.chunk_gated_delta_rule_bwd (the recurrent one)."""
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    rows = B * T
    qn, kn = normalised_fp32(q, use_qk_l2norm_in_kernel), normalised_fp32(k, use_qk_l2norm_in_kernel)
    rep = HV // H
    qn = qn.reshape(rows, H, K).repeat_interleave(rep, dim=1).contiguous()
    kn = kn.reshape(rows, H, K).repeat_interleave(rep, dim=1).contiguous()
    BK, BV = max(16, triton.next_power_of_2(K)), max(16, triton.next_power_of_2(V))
    NB = rows // CHUNK + N
    dev, f32 = q.device, torch.float32
    ckpt = torch.empty(max(NB * HV, 1) * BK * BV, device=dev, dtype=f32)
    dq, dk = torch.zeros(rows, HV, K, device=dev, dtype=f32), torch.zeros(rows, HV, K, device=dev, dtype=f32)
    dv = torch.zeros(rows, HV, V, device=dev, dtype=f32)
    dg, db = torch.zeros(rows, HV, device=dev, dtype=f32), torch.zeros(rows, HV, device=dev, dtype=f32)
    stride_sk, stride_sv = (1, K) if state_v_first else (V, 1)
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    dh0 = torch.empty_like(h0) if h0 is not None else None
    if N > 0 and HV > 0:
        _gdn_chunked_bwd_kernel[(N, HV)](
            qn, kn, v.contiguous(), g.contiguous(), beta.contiguous(), do.contiguous(),
            h0 if h0 is not None else dv, dht.float().contiguous() if dht is not None else dv,
            cu_seqlens.contiguous() if cu_seqlens is not None else dv, ckpt, dq, dk, dv, dg, db,
            dh0 if dh0 is not None else dv, float(scale), T, NB, stride_sk, stride_sv,
            HV=HV, K=K, V=V, C=CHUNK, BK=BK, BV=BV, IS_VARLEN=cu_seqlens is not None, HAS_H0=h0 is not None,
            HAS_DHT=dht is not None, PRECISION="ieee", num_warps=8, num_stages=1)
    dq = dq.view(rows, H, rep, K).sum(2)
    dk = dk.view(rows, H, rep, K).sum(2)
    if use_qk_l2norm_in_kernel:
        l2norm_backward_(q, dq)
        l2norm_backward_(k, dk)
    return (dq.view(q.shape).to(q.dtype), dk.view(k.shape).to(k.dtype), dv.view(v.shape).to(v.dtype),
            dg.view(g.shape).to(g.dtype), db.view(beta.shape).to(beta.dtype), dh0)
