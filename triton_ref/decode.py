"""Triton reference for decoding: the recurrent gated delta rule step on a [K, BV] state tile in registers.
mom_decode_step walks a token's pool slots; fused_recurrent_gated_delta_rule walks a sequence's tokens."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BV = 32  # value columns per program


@triton.jit
def _load_vec(ptr, offs, mask, L2NORM: tl.constexpr):
    x = tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if L2NORM:
        x = x / tl.sqrt(tl.sum(x * x, axis=0) + 1e-6)
    return x


@triton.jit
def _state_offsets(rk, cv, K, V, V_FIRST: tl.constexpr):
    """Offsets of S[k, v] inside one state: [K, V] row-major, or [V, K] when V_FIRST."""
    if V_FIRST:
        return cv[None, :].to(tl.int64) * K + rk[:, None]
    return rk[:, None].to(tl.int64) * V + cv[None, :]


@triton.jit
def _step(S, q, k, v, g, beta):
    """One step on S [BK, BV]: S = exp(g) S; u = beta (v - S^T k); S += k u^T; returns (S, S^T q)."""
    S = S * tl.exp(g)
    u = beta * (v - tl.sum(S * k[:, None], axis=0))
    S = S + k[:, None] * u[None, :]
    return S, tl.sum(S * q[:, None], axis=0)


@triton.jit
def _decode_kernel(q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, w_ptr, slots_ptr, pool_ptr, out_ptr, P, J, H, HV, K, V,
                   scale, BK: tl.constexpr, BV: tl.constexpr, L2NORM: tl.constexpr, V_FIRST: tl.constexpr,
                   Q_PER_SLOT: tl.constexpr):
    vb, hv, n = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)  # (64-bit offsets below)
    h = hv // (HV // H)
    rk = tl.arange(0, BK)
    cv = vb * BV + tl.arange(0, BV)
    km, vm = rk < K, cv < V
    q = tl.zeros([BK], dtype=tl.float32)
    if not Q_PER_SLOT:  # one query for every slot
        q = _load_vec(q_ptr + (n * H + h) * K, rk, km, L2NORM) * scale
    acc = tl.zeros([BV], dtype=tl.float32)
    for j in range(J):
        slot = tl.load(slots_ptr + n * J + j).to(tl.int64)
        if (slot >= 0) & (slot < P):
            nj = n * J + j
            if Q_PER_SLOT:
                q = _load_vec(q_ptr + (nj * H + h) * K, rk, km, L2NORM) * scale
            k = _load_vec(k_ptr + (nj * H + h) * K, rk, km, L2NORM)
            v = tl.load(v_ptr + (nj * HV + hv) * V + cv, mask=vm, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + nj * HV + hv).to(tl.float32)
            beta = tl.load(beta_ptr + nj * HV + hv).to(tl.float32)
            offs = (slot * HV + hv) * K * V + _state_offsets(rk, cv, K, V, V_FIRST)
            S = tl.load(pool_ptr + offs, mask=km[:, None] & vm[None, :], other=0.0)
            S, o = _step(S, q, k, v, g, beta)
            tl.store(pool_ptr + offs, S, mask=km[:, None] & vm[None, :])
            acc += tl.load(w_ptr + nj) * o
    tl.store(out_ptr + (n * HV + hv) * V + cv, acc.to(out_ptr.dtype.element_ty), mask=vm)


def mom_decode_step(q, k, v, g, beta, weights, slots, state_pool, scale=None, use_qk_l2norm_in_kernel=False,
                    state_v_first=False):
    """Same contract as mom_ops.mom_decode_step (updates state_pool in place)."""
    N, J, H, K = k.shape
    HV, V = v.shape[2], v.shape[3]
    out = torch.empty(N, HV, V, device=q.device, dtype=q.dtype)
    if N > 0:
        _decode_kernel[(triton.cdiv(V, BV), HV, N)](
            q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(), beta.contiguous(), weights.contiguous(),
            slots.contiguous(), state_pool, out, state_pool.shape[0], J, H, HV, K, V,
            K**-0.5 if scale is None else scale, BK=triton.next_power_of_2(K), BV=BV, L2NORM=use_qk_l2norm_in_kernel,
            V_FIRST=state_v_first, Q_PER_SLOT=q.dim() == 4)
    return out


@triton.jit
def _recurrent_kernel(q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, h0_ptr, ht_ptr, o_ptr, cu_ptr, T, H, HV, K, V, scale,
                      BK: tl.constexpr, BV: tl.constexpr, L2NORM: tl.constexpr, V_FIRST: tl.constexpr,
                      HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, VARLEN: tl.constexpr):
    vb, hv, seq = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    h = hv // (HV // H)
    if VARLEN:
        bos, eos = tl.load(cu_ptr + seq).to(tl.int64), tl.load(cu_ptr + seq + 1).to(tl.int64)
    else:
        bos, eos = seq.to(tl.int64) * T, seq.to(tl.int64) * T + T
    rk = tl.arange(0, BK)
    cv = vb * BV + tl.arange(0, BV)
    km, vm = rk < K, cv < V
    smask = km[:, None] & vm[None, :]
    soffs = (seq.to(tl.int64) * HV + hv) * K * V + _state_offsets(rk, cv, K, V, V_FIRST)
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S = tl.load(h0_ptr + soffs, mask=smask, other=0.0)
    for t in range(bos, eos):
        q = _load_vec(q_ptr + (t * H + h) * K, rk, km, L2NORM) * scale
        k = _load_vec(k_ptr + (t * H + h) * K, rk, km, L2NORM)
        v = tl.load(v_ptr + (t * HV + hv) * V + cv, mask=vm, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + t * HV + hv).to(tl.float32)
        beta = tl.load(beta_ptr + t * HV + hv).to(tl.float32)
        S, o = _step(S, q, k, v, g, beta)
        tl.store(o_ptr + (t * HV + hv) * V + cv, o.to(o_ptr.dtype.element_ty), mask=vm)
    if STORE_HT:
        tl.store(ht_ptr + soffs, S, mask=smask)


def fused_recurrent_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                                     use_qk_l2norm_in_kernel=False, state_v_first=False, cu_seqlens=None):
    """mom_ops.fused_recurrent_gated_delta_rule's computation (forward only), in this module's own argument order
    (q, k, v, g, beta, scale, ...: not fla's, whose fifth parameter is gk)."""
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    o = torch.zeros(v.shape, device=v.device, dtype=v.dtype)  # (contiguous, whatever v's strides)
    shape = (N, HV, V, K) if state_v_first else (N, HV, K, V)
    ht = torch.empty(shape, device=q.device, dtype=torch.float32) if output_final_state else None
    if N > 0:
        _recurrent_kernel[(triton.cdiv(V, BV), HV, N)](
            q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(), beta.contiguous(),
            initial_state.contiguous() if initial_state is not None else o, ht if ht is not None else o, o,
            cu_seqlens.contiguous() if cu_seqlens is not None else o, T, H, HV, K, V,
            K**-0.5 if scale is None else scale,
            BK=triton.next_power_of_2(K), BV=BV, L2NORM=use_qk_l2norm_in_kernel, V_FIRST=state_v_first,
            HAS_H0=initial_state is not None, STORE_HT=output_final_state, VARLEN=cu_seqlens is not None)
    return o, ht
