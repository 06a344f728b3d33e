"""Triton reference for the gated delta rule: the chunked forward (same outputs as mom_ops.chunk_gated_delta_rule)
and a recurrent backward (chunk_gated_delta_rule_bwd, at the end of this file).
Runs under TRITON_INTERPRET=1 on the CPU (fp32 only there: bf16 is wrong in the interpreter).

Per sequence and value head, with the state S [K, V] in fp32 and chunks of C = 64 rows (G = inclusive cumsum of g
inside the chunk):
    A_ij  = beta_i (k_i . k_j) exp(G_i - G_j) for i > j, else 0;   T = (I + A)^-1   (unit lower triangular)
    W     = T (beta * exp(G) * K);   U = T (beta * V);   V_new = U - W S
    O     = scale * (exp(G) * (Q S) + [tril(Q K^T) * exp(G_i - G_j)] V_new)     (tril with the diagonal)
    S    <- exp(G_last) S + K^T (exp(G_last - G) * V_new)

One program per (sequence, value head, block of BV value columns) walks its sequence chunk by chunk, S[:, block] in
an fp32 workspace (the final state's tensor), K in blocks of at most 64; the sequence bounds come from cu_seqlens
inside the kernel (no host synchronisation).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 64
# g below this is the same as g = -inf for fp32 (exp(-110) == 0, so every decay over an interval holding the step is 0
# either way), but keeps G = cumsum(g) finite: g = -inf made exp(G_i - G_j) = exp(-inf + inf) = NaN, and g ~ -1e9 or
# torch.finfo(torch.float32).min (masked_fill's usual value) absorbed the rest of the chunk's decays (G_i - G_j = 0).
G_FLOOR = tl.constexpr(-110.0)
SCRATCH_BYTES = 256 << 20  # the recurrent backward's block scratch per launch (chunk_gated_delta_rule_bwd)


@triton.jit
def _sequence_bounds(cu_ptr, i_n, T, IS_VARLEN: tl.constexpr):
    """Rows [bos, eos) of sequence i_n: from cu_seqlens, or [i_n T, (i_n + 1) T)."""
    if IS_VARLEN:
        bos = tl.load(cu_ptr + i_n).to(tl.int64)
        eos = tl.load(cu_ptr + i_n + 1).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        eos = bos + T
    return bos, eos


@triton.jit
def _l2norm_rows(x, eps: tl.constexpr):
    """x [C, BK] -> x * rsqrt(sum(x^2) + eps) per row (padding columns are 0 and add nothing)."""
    return x * tl.rsqrt(tl.sum(x * x, axis=1) + eps)[:, None]


@triton.jit
def _masked_decay(G, keep):
    """exp(G_i - G_j) [C, C] where keep[i, j], else 0. The exponent is masked before exp, so that pairs with
    G_i - G_j > 0 (i < j) never overflow to inf (and never meet a 0 to make 0 * inf = NaN)."""
    return tl.exp(tl.where(keep, G[:, None] - G[None, :], float("-inf")))


@triton.jit
def _unit_lower_inverse(A, C: tl.constexpr, PRECISION: tl.constexpr):
    """T = (I + A)^-1 for A [C, C] strictly lower triangular, by forward substitution, one row at a time:
    T_i = e_i - sum_{m < i} A_im T_m (the rows m < i are final when row i is formed). Not the Neumann / doubling product
    (I + N)(I + N^2)...(I + N^(C/2)), N = -A: that forms N^32, whose entries grow like C(63, 31) |a|^32 (~1e8 at
    |a| = 0.5) before cancelling to T's O(1) entries, so correlated keys with slow decay and beta ~ 1 lost every digit
    in fp32 (and more in tf32). PRECISION is unused (no dots)."""
    rows = tl.arange(0, C)
    T = (rows[:, None] == rows[None, :]).to(tl.float32)
    for i in range(1, C):
        a_i = tl.sum(tl.where(rows[:, None] == i, A, 0.0), axis=0)  # row i of A: [C] (zeros at m >= i)
        t_i = -tl.sum(a_i[:, None] * T, axis=0)  # -(A_i . T): rows m >= i of T are still e_m, weighted by A_im = 0
        T = tl.where(rows[:, None] == i, t_i[None, :] + (rows == i).to(tl.float32)[None, :], T)
    return T


@triton.jit
def _gdn_fwd_kernel(q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, o_ptr, h0_ptr, st_ptr, cu_ptr, scale, T,
                    stride_sk, stride_sv,
                    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                    C: tl.constexpr, BK: tl.constexpr, NK: tl.constexpr, BV: tl.constexpr,
                    IS_VARLEN: tl.constexpr, HAS_H0: tl.constexpr, USE_L2NORM: tl.constexpr,
                    PRECISION: tl.constexpr):
    """Grid (N, HV, cdiv(V, BV)). q, k: [rows, H, K]; v, o: [rows, HV, V]; g, beta: [rows, HV] (rows = B * T);
    h0, st: [N, HV, *, *] fp32, element (k, v) of one state at k * stride_sk + v * stride_sv. st holds the state
    between chunks (the final state at the end), read and written in NK blocks of BK rows: every product over K
    is a sum over the blocks, so no operand is wider than BK (at K = 256 whole-K tiles took 131-295 KB of shared
    memory, more than any GPU but a B200 has)."""
    i_n, i_hv, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_h = i_hv // (HV // H)  # the q/k head of this value head's group
    bos, eos = _sequence_bounds(cu_ptr, i_n, T, IS_VARLEN)

    r = tl.arange(0, C)  # row inside a chunk
    cv = i_v * BV + tl.arange(0, BV)  # value column
    mv = cv < V
    st_head = (i_n.to(tl.int64) * HV + i_hv) * K * V

    # st <- h0 (or 0), block by block.
    for b in tl.static_range(NK):
        ck = b * BK + tl.arange(0, BK)
        s_off = st_head + ck[:, None] * stride_sk + cv[None, :] * stride_sv
        s_mask = (ck < K)[:, None] & mv[None, :]
        S = tl.zeros([BK, BV], dtype=tl.float32)
        if HAS_H0:
            S = tl.load(h0_ptr + s_off, mask=s_mask, other=0.0).to(tl.float32)
        tl.store(st_ptr + s_off, S, mask=s_mask)
    tl.debug_barrier()  # st: stored above, read below by other threads of this program

    causal_strict = r[:, None] > r[None, :]  # [C, C]
    causal_incl = r[:, None] >= r[None, :]
    for c in range(0, tl.cdiv(eos - bos, C)):
        rows = bos + c * C + r  # [C] int64 row indices; padding rows are masked off
        mr = rows < eos
        # Chunk inputs in fp32 (padding rows and columns read 0, so g = 0 and beta = 0 there).
        vo_off = rows[:, None] * (HV * V) + i_hv * V + cv[None, :]
        m_vo = mr[:, None] & mv[None, :]
        v = tl.load(v_ptr + vo_off, mask=m_vo, other=0.0).to(tl.float32)  # [C, BV]
        g = tl.load(g_ptr + rows * HV + i_hv, mask=mr, other=0.0).to(tl.float32)  # [C]
        g = tl.where(g < G_FLOOR, G_FLOOR, g)  # (a NaN stays NaN)
        beta = tl.load(beta_ptr + rows * HV + i_hv, mask=mr, other=0.0).to(tl.float32)  # [C]
        qk_row = rows[:, None] * (H * K) + i_h * K
        rq = tl.full([C], 1.0, tl.float32)  # the rows' l2norm scales
        rk = tl.full([C], 1.0, tl.float32)
        if USE_L2NORM:
            sq = tl.zeros([C], dtype=tl.float32)
            sk = tl.zeros([C], dtype=tl.float32)
            for b in tl.static_range(NK):
                ck = b * BK + tl.arange(0, BK)
                m_qk = mr[:, None] & (ck < K)[None, :]
                qb = tl.load(q_ptr + qk_row + ck[None, :], mask=m_qk, other=0.0).to(tl.float32)
                kb = tl.load(k_ptr + qk_row + ck[None, :], mask=m_qk, other=0.0).to(tl.float32)
                sq += tl.sum(qb * qb, axis=1)
                sk += tl.sum(kb * kb, axis=1)
            rq = tl.rsqrt(sq + 1e-6)
            rk = tl.rsqrt(sk + 1e-6)

        G = tl.cumsum(g, axis=0)  # [C]; constant over the padding rows (g = 0 there), so G[C-1] = G_last
        G_last = tl.sum(tl.where(r == C - 1, G, 0.0), axis=0)  # scalar
        valid = mr[:, None] & mr[None, :]  # [C, C]

        # Sums over K's blocks: K K^T, K S, Q S, Q K^T.
        kk = tl.zeros([C, C], dtype=tl.float32)
        qk = tl.zeros([C, C], dtype=tl.float32)
        KS = tl.zeros([C, BV], dtype=tl.float32)
        QS = tl.zeros([C, BV], dtype=tl.float32)
        for b in tl.static_range(NK):
            ck = b * BK + tl.arange(0, BK)
            m_qk = mr[:, None] & (ck < K)[None, :]
            qb = tl.load(q_ptr + qk_row + ck[None, :], mask=m_qk, other=0.0).to(tl.float32) * rq[:, None]
            kb = tl.load(k_ptr + qk_row + ck[None, :], mask=m_qk, other=0.0).to(tl.float32) * rk[:, None]
            s_off = st_head + ck[:, None] * stride_sk + cv[None, :] * stride_sv
            Sb = tl.load(st_ptr + s_off, mask=(ck < K)[:, None] & mv[None, :], other=0.0)  # [BK, BV]
            kk += tl.dot(kb, tl.trans(kb), input_precision=PRECISION)
            qk += tl.dot(qb, tl.trans(kb), input_precision=PRECISION)
            KS += tl.dot(kb, Sb, input_precision=PRECISION)
            QS += tl.dot(qb, Sb, input_precision=PRECISION)

        # T = (I + A)^-1; W S = T (beta e^G K) S = T (beta e^G (K S)), U = T (beta V), V_new = U - W S.
        A = beta[:, None] * kk * _masked_decay(G, causal_strict & valid)
        Tinv = _unit_lower_inverse(A, C, PRECISION)
        WS = tl.dot(Tinv, (beta * tl.exp(G))[:, None] * KS, input_precision=PRECISION)
        U = tl.dot(Tinv, beta[:, None] * v, input_precision=PRECISION)
        V_new = U - WS

        # Output O [C, BV]: inter-chunk part from S, intra-chunk part from V_new.
        O = tl.exp(G)[:, None] * QS
        O += tl.dot(qk * _masked_decay(G, causal_incl & valid), V_new, input_precision=PRECISION)
        tl.store(o_ptr + vo_off, (scale * O).to(o_ptr.dtype.element_ty), mask=m_vo)

        # State update, block by block: S = exp(G_last) S + K^T (exp(G_last - G) * V_new).
        v_dec = tl.exp(tl.where(mr, G_last - G, float("-inf")))[:, None] * V_new  # [C, BV]
        for b in tl.static_range(NK):
            ck = b * BK + tl.arange(0, BK)
            m_qk = mr[:, None] & (ck < K)[None, :]
            kb = tl.load(k_ptr + qk_row + ck[None, :], mask=m_qk, other=0.0).to(tl.float32) * rk[:, None]
            s_off = st_head + ck[:, None] * stride_sk + cv[None, :] * stride_sv
            s_mask = (ck < K)[:, None] & mv[None, :]
            Sb = tl.load(st_ptr + s_off, mask=s_mask, other=0.0)
            Sb = tl.exp(G_last) * Sb + tl.dot(tl.trans(kb), v_dec, input_precision=PRECISION)
            tl.store(st_ptr + s_off, Sb, mask=s_mask)
        tl.debug_barrier()  # st: the next chunk reads it in other threads


def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                           use_qk_l2norm_in_kernel=False, state_v_first=False, cu_seqlens=None, precision="ieee"):
    """Forward of mom_ops.chunk_gated_delta_rule (no autograd).

    precision: the dots' input_precision. "ieee" (fp32 products: the reference) compiles to FMA loops, minutes per
    configuration on a GPU; "tf32" compiles in seconds and its ~5e-4 product error is still below the 16-bit
    operands' of the CUDA kernels and fla (mom_ops/_other_gpus.py's fallback takes it).

    q, k: [B, T, H, K]; v: [B, T, HV, V] (HV a multiple of H); g, beta: [B, T, HV]; initial_state: fp32
    [N, HV, K, V] ([N, HV, V, K] with state_v_first); cu_seqlens: [N+1] int32/int64 (then B == 1; rows past
    cu_seqlens[-1] get o = 0). Returns o [B, T, HV, V] in q's dtype and the fp32 final state (or None).
    """
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    if HV % H != 0:
        raise ValueError(f"the number of value heads ({HV}) must be a multiple of the q/k heads ({H})")
    if cu_seqlens is not None and B != 1:
        raise ValueError(f"cu_seqlens needs batch size 1, got {B}")
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    scale = K**-0.5 if scale is None else scale
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))

    o = torch.zeros(B, T, HV, V, device=q.device, dtype=q.dtype)  # rows outside every sequence stay 0
    state_shape = (N, HV, V, K) if state_v_first else (N, HV, K, V)
    stride_sk, stride_sv = (1, K) if state_v_first else (V, 1)
    h0 = None
    if initial_state is not None:
        if tuple(initial_state.shape) != state_shape:
            raise ValueError(f"initial_state must have shape {state_shape}, got {tuple(initial_state.shape)}")
        h0 = initial_state.float().contiguous()
    # the state between chunks: the final state itself when asked for, else a workspace
    st = torch.empty(state_shape, device=q.device, dtype=torch.float32)

    BK = min(64, max(16, triton.next_power_of_2(K)))  # K in NK blocks of BK rows
    BV = max(16, min(32, triton.next_power_of_2(V)))
    if N > 0 and HV > 0 and V > 0:
        grid = (N, HV, triton.cdiv(V, BV))
        _gdn_fwd_kernel[grid](
            q, k, v, g, beta, o, h0 if h0 is not None else o, st,
            cu_seqlens.contiguous() if cu_seqlens is not None else o, float(scale), T, stride_sk, stride_sv,
            H=H, HV=HV, K=K, V=V, C=CHUNK, BK=BK, NK=triton.cdiv(K, BK), BV=BV,
            IS_VARLEN=cu_seqlens is not None, HAS_H0=h0 is not None, USE_L2NORM=use_qk_l2norm_in_kernel,
            PRECISION=precision, num_warps=4, num_stages=1)
    elif h0 is not None:
        st.copy_(h0)
    return o, st if output_final_state else None


# ---------------------------------------------------------------- backward (recurrent form)
# One program per (sequence, value head, V-block) walks its sequence twice: forward, keeping the state at the
# start of every 64-step block in a workspace; then backward block by block, recomputing the block's states
# into a scratch buffer and stepping in reverse:
#   dS += scale q do^T;  dq = scale S_t do;  du = dS^T k;  dv = beta du;  dbeta = <du, v - S'^T k>;
#   dpred = -beta du;  dk = dS u + S' dpred;  dS' = dS + k dpred^T;  dg = <S', dS'>;  dS = exp(g) dS'.
# dq, dk, dg, dbeta are partial sums over the V-block (summed over blocks and GVA heads by the caller).


@triton.jit
def _gdn_bwd_kernel(q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, do_ptr, h0_ptr, dht_ptr, cu_ptr, ckpt_ptr, scratch_ptr,
                    dq_ptr, dk_ptr, dv_ptr, dg_ptr, db_ptr, dh0_ptr, scale, T, ROWS, NB, N0, stride_sk, stride_sv,
                    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                    BK: tl.constexpr, BV: tl.constexpr, BLOCK: tl.constexpr,
                    IS_VARLEN: tl.constexpr, HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr):
    """Grid (sequences N0.., HV, NV). q, k: [rows, H, K] (already l2-normalised if asked); v, do: [rows, HV, V];
    dq, dk: [NV, rows, HV, K] partials; dv: [rows, HV, V]; dg, dbeta: [NV, rows, HV] partials;
    ckpt: [HV * NV, NB, BK, BV] with NB = rows // BLOCK + N slots: sequence i's blocks start at slot
    bos // BLOCK + i (no overlap, no host sync to size it); scratch: [programs of this launch, BLOCK + 1, BK, BV]."""
    i_n, i_hv, i_v = N0 + tl.program_id(0), tl.program_id(1), tl.program_id(2)
    prog = (tl.program_id(0) * HV + i_hv) * tl.num_programs(2) + i_v
    i_h = i_hv // (HV // H)
    bos, eos = _sequence_bounds(cu_ptr, i_n, T, IS_VARLEN)
    ck = tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    mk, mv = ck < K, cv < V
    tile = ck[:, None] * BV + tl.arange(0, BV)[None, :]  # offsets of a [BK, BV] tile in the workspaces
    s_off = (i_n.to(tl.int64) * HV + i_hv) * K * V + ck[:, None] * stride_sk + cv[None, :] * stride_sv
    s_mask = mk[:, None] & mv[None, :]
    ckpt = ckpt_ptr + ((i_hv * tl.num_programs(2) + i_v).to(tl.int64) * NB + bos // BLOCK + i_n) * BK * BV
    scratch = scratch_ptr + prog.to(tl.int64) * (BLOCK + 1) * BK * BV

    # Forward: state at the start of every block.
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S = tl.load(h0_ptr + s_off, mask=s_mask, other=0.0)
    for t in range(bos, eos):
        if (t - bos) % BLOCK == 0:
            tl.store(ckpt + ((t - bos) // BLOCK) * BK * BV + tile, S)
        kt = tl.load(k_ptr + (t * H + i_h) * K + ck, mask=mk, other=0.0).to(tl.float32)
        vt = tl.load(v_ptr + (t * HV + i_hv) * V + cv, mask=mv, other=0.0).to(tl.float32)
        S = S * tl.exp(tl.load(g_ptr + t * HV + i_hv).to(tl.float32))
        u = tl.load(beta_ptr + t * HV + i_hv).to(tl.float32) * (vt - tl.sum(S * kt[:, None], axis=0))
        S = S + kt[:, None] * u[None, :]

    tl.debug_barrier()  # the checkpoints were stored by other threads of this program than those that load them
    dS = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        dS = tl.load(dht_ptr + s_off, mask=s_mask, other=0.0)
    nblocks = tl.cdiv(eos - bos, BLOCK)
    for rb in range(0, nblocks):
        blk = nblocks - 1 - rb
        b0 = bos + blk * BLOCK
        b1 = tl.minimum(b0 + BLOCK, eos)
        # Recompute the block: scratch[i] = state before step b0 + i.
        S = tl.load(ckpt + blk * BK * BV + tile)
        for t in range(b0, b1):
            tl.store(scratch + (t - b0) * BK * BV + tile, S)
            kt = tl.load(k_ptr + (t * H + i_h) * K + ck, mask=mk, other=0.0).to(tl.float32)
            vt = tl.load(v_ptr + (t * HV + i_hv) * V + cv, mask=mv, other=0.0).to(tl.float32)
            S = S * tl.exp(tl.load(g_ptr + t * HV + i_hv).to(tl.float32))
            u = tl.load(beta_ptr + t * HV + i_hv).to(tl.float32) * (vt - tl.sum(S * kt[:, None], axis=0))
            S = S + kt[:, None] * u[None, :]
        tl.debug_barrier()  # scratch: written above, read below by other threads
        for rt in range(0, b1 - b0):
            t = b1 - 1 - rt
            S_prev = tl.load(scratch + (t - b0) * BK * BV + tile)
            qt = tl.load(q_ptr + (t * H + i_h) * K + ck, mask=mk, other=0.0).to(tl.float32)
            kt = tl.load(k_ptr + (t * H + i_h) * K + ck, mask=mk, other=0.0).to(tl.float32)
            vt = tl.load(v_ptr + (t * HV + i_hv) * V + cv, mask=mv, other=0.0).to(tl.float32)
            dot = tl.load(do_ptr + (t * HV + i_hv) * V + cv, mask=mv, other=0.0).to(tl.float32)
            decay = tl.exp(tl.load(g_ptr + t * HV + i_hv).to(tl.float32))
            bt = tl.load(beta_ptr + t * HV + i_hv).to(tl.float32)
            Sd = decay * S_prev  # S'
            resid = vt - tl.sum(Sd * kt[:, None], axis=0)  # v - S'^T k
            u = bt * resid
            S_t = Sd + kt[:, None] * u[None, :]
            dS += scale * qt[:, None] * dot[None, :]
            dq = scale * tl.sum(S_t * dot[None, :], axis=1)
            du = tl.sum(dS * kt[:, None], axis=0)
            dpred = -bt * du
            dk = tl.sum(dS * u[None, :], axis=1) + tl.sum(Sd * dpred[None, :], axis=1)
            dSd = dS + kt[:, None] * dpred[None, :]
            # Partial sums of this V-block: [NV, rows, HV, K] and [NV, rows, HV].
            qk_part = (i_v.to(tl.int64) * ROWS + t) * HV * K + i_hv * K + ck
            tl.store(dq_ptr + qk_part, dq, mask=mk)
            tl.store(dk_ptr + qk_part, dk, mask=mk)
            gb_part = (i_v.to(tl.int64) * ROWS + t) * HV + i_hv
            tl.store(dg_ptr + gb_part, tl.sum(tl.sum(Sd * dSd, axis=1), axis=0))
            tl.store(db_ptr + gb_part, tl.sum(du * resid, axis=0))
            tl.store(dv_ptr + (t * HV + i_hv) * V + cv, bt * du, mask=mv)
            dS = decay * dSd
        tl.debug_barrier()  # the next block overwrites scratch
    if HAS_H0:
        tl.store(dh0_ptr + s_off, dS, mask=s_mask)


def normalised_fp32(x: torch.Tensor, use_l2norm: bool) -> torch.Tensor:
    """x in fp32, l2-normalised over the last dim (eps 1e-6, as in the kernels) when use_l2norm."""
    x = x.float()
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + 1e-6) if use_l2norm else x


def l2norm_backward_(x: torch.Tensor, d: torch.Tensor) -> None:
    """d (the gradient w.r.t. y = l2norm(x), shaped like x or flattened to d's shape) becomes the gradient w.r.t.
    x, in place: dx = r (dy - y (y . dy)) with r = (|x|^2 + eps)^-1/2."""
    x = x.float().reshape(d.shape)
    r = torch.rsqrt(x.square().sum(-1, keepdim=True) + 1e-6)
    y = x * r
    # a row whose d is 0 gets 0 (dx is linear in dy), also where x is not finite: the rows past cu_seqlens[-1]
    d.copy_(torch.where((d != 0).any(-1, keepdim=True), r * (d - y * (y * d).sum(-1, keepdim=True)), 0.0))


def chunk_gated_delta_rule_bwd(q, k, v, g, beta, scale, initial_state, do, dht, use_qk_l2norm_in_kernel=False,
                               state_v_first=False, cu_seqlens=None):
    """Gradients (dq, dk, dv, dg, dbeta, dh0) of chunk_gated_delta_rule; dh0 is None without initial_state."""
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    rows = B * T
    qn, kn = normalised_fp32(q, use_qk_l2norm_in_kernel), normalised_fp32(k, use_qk_l2norm_in_kernel)
    BK = max(16, triton.next_power_of_2(K))
    BV = max(16, min(32, triton.next_power_of_2(V)))
    NV = triton.cdiv(V, BV)
    NB = rows // CHUNK + N  # checkpoint slots per (value head, V-block), see the kernel
    dev, f32 = q.device, torch.float32
    # a launch per SCRATCH_BYTES of block scratch (~1 MB per program at K = 128: 512 sequences x 16 heads took 35 GB)
    per_sequence = HV * NV * (CHUNK + 1) * BK * BV
    seqs_per_launch = max(1, min(N, SCRATCH_BYTES // (4 * max(per_sequence, 1))))
    ckpt = torch.empty(HV * NV * NB * BK * BV, device=dev, dtype=f32)
    scratch = torch.empty(seqs_per_launch * per_sequence, device=dev, dtype=f32)
    dq_part = torch.zeros(NV, rows, HV, K, device=dev, dtype=f32)
    dk_part = torch.zeros(NV, rows, HV, K, device=dev, dtype=f32)
    dg_part = torch.zeros(NV, rows, HV, device=dev, dtype=f32)
    db_part = torch.zeros(NV, rows, HV, device=dev, dtype=f32)
    dv = torch.zeros(rows, HV, V, device=dev, dtype=f32)
    stride_sk, stride_sv = (1, K) if state_v_first else (V, 1)
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    dh0 = torch.empty_like(h0) if h0 is not None else None
    inputs = (qn.contiguous(), kn.contiguous(), v.contiguous(), g.contiguous(), beta.contiguous(), do.contiguous(),
              h0 if h0 is not None else dv, dht.float().contiguous() if dht is not None else dv,
              cu_seqlens.contiguous() if cu_seqlens is not None else dv)
    for n0 in range(0, N if HV > 0 else 0, seqs_per_launch):  # (in stream order: the launches share scratch)
        _gdn_bwd_kernel[(min(seqs_per_launch, N - n0), HV, NV)](
            *inputs, ckpt, scratch, dq_part, dk_part, dv, dg_part, db_part, dh0 if dh0 is not None else dv,
            float(scale), T, rows, NB, n0, stride_sk, stride_sv, H=H, HV=HV, K=K, V=V, BK=BK, BV=BV, BLOCK=CHUNK,
            IS_VARLEN=cu_seqlens is not None, HAS_H0=h0 is not None, HAS_DHT=dht is not None, num_warps=4,
            num_stages=1)
    # Sum the V-block partials and the value heads of each q/k head's group; then the l2norm backward.
    dq = dq_part.sum(0).view(rows, H, HV // H, K).sum(2)
    dk = dk_part.sum(0).view(rows, H, HV // H, K).sum(2)
    if use_qk_l2norm_in_kernel:
        l2norm_backward_(q, dq)
        l2norm_backward_(k, dk)
    return (dq.view(q.shape).to(q.dtype), dk.view(k.shape).to(k.dtype), dv.view(v.shape).to(v.dtype),
            dg_part.sum(0).view(g.shape).to(g.dtype), db_part.sum(0).view(beta.shape).to(beta.dtype), dh0)
