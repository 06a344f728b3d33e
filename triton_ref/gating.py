"""Triton reference for gdn_gating: g = -exp(A_log) * softplus(a + dt_bias), beta = sigmoid(b), and the backward.
One program per (row block, head block); the backward writes grad_a, grad_b and per-program head sums that torch
adds up for grad_A_log and grad_dt_bias."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_R, BLOCK_H = 32, 16
SOFTPLUS_THRESHOLD = 20.0  # torch.nn.functional.softplus's default


@triton.jit
def _tile(a_ptr, A_log_ptr, dt_bias_ptr, R, H, stride_a, BR: tl.constexpr, BH: tl.constexpr):
    """This program's rows and heads, their mask, x = a + dt_bias [BR, BH] and decay = -exp(A_log) [BH] in fp32."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    heads = tl.program_id(1) * BH + tl.arange(0, BH)
    hmask = heads < H
    m = (rows < R)[:, None] & hmask[None, :]
    decay = -tl.exp(tl.load(A_log_ptr + heads, mask=hmask, other=0.0).to(tl.float32))
    bias = tl.load(dt_bias_ptr + heads, mask=hmask, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + rows.to(tl.int64)[:, None] * stride_a + heads[None, :], mask=m, other=0.0).to(tl.float32)
    return rows, heads, m, a + bias[None, :], decay


@triton.jit
def _softplus(x, THRESHOLD: tl.constexpr):
    # log1p(e^x) as log(u) e^x / (u - 1), u = 1 + e^x (Kahan): log(1 + e^x) alone loses e^x where it is below fp32's
    # epsilon (softplus(-30) = 9.4e-14 came out 0; the CUDA kernel and torch use log1p)
    y = tl.exp(tl.minimum(x, THRESHOLD))
    u = 1.0 + y
    d = tl.where(u == 1.0, 1.0, u - 1.0)
    return tl.where(x > THRESHOLD, x, tl.where(u == 1.0, y, tl.log(u) * (y / d)))


@triton.jit
def _fwd_kernel(a_ptr, b_ptr, A_log_ptr, dt_bias_ptr, g_ptr, beta_ptr, R, H, stride_a, stride_b,
                THRESHOLD: tl.constexpr, BR: tl.constexpr, BH: tl.constexpr):
    rows, heads, m, x, decay = _tile(a_ptr, A_log_ptr, dt_bias_ptr, R, H, stride_a, BR, BH)
    b = tl.load(b_ptr + rows.to(tl.int64)[:, None] * stride_b + heads[None, :], mask=m, other=0.0).to(tl.float32)
    out = rows.to(tl.int64)[:, None] * H + heads[None, :]
    tl.store(g_ptr + out, decay[None, :] * _softplus(x, THRESHOLD), mask=m)
    tl.store(beta_ptr + out, (1.0 / (1.0 + tl.exp(-b))).to(beta_ptr.dtype.element_ty), mask=m)


@triton.jit
def _bwd_kernel(a_ptr, b_ptr, A_log_ptr, dt_bias_ptr, dg_ptr, dbeta_ptr, da_ptr, db_ptr, part_ptr, R, H, stride_a,
                stride_b, THRESHOLD: tl.constexpr, BR: tl.constexpr, BH: tl.constexpr):
    rows, heads, m, x, decay = _tile(a_ptr, A_log_ptr, dt_bias_ptr, R, H, stride_a, BR, BH)
    b = tl.load(b_ptr + rows.to(tl.int64)[:, None] * stride_b + heads[None, :], mask=m, other=0.0).to(tl.float32)
    offs = rows.to(tl.int64)[:, None] * H + heads[None, :]
    dg = tl.load(dg_ptr + offs, mask=m, other=0.0).to(tl.float32)
    dbeta = tl.load(dbeta_ptr + offs, mask=m, other=0.0).to(tl.float32)
    dsoftplus = tl.where(x > THRESHOLD, 1.0, 1.0 / (1.0 + tl.exp(-x)))
    da = dg * decay[None, :] * dsoftplus
    s = 1.0 / (1.0 + tl.exp(-b))
    tl.store(da_ptr + offs, da.to(da_ptr.dtype.element_ty), mask=m)
    tl.store(db_ptr + offs, (dbeta * s * (1.0 - s)).to(db_ptr.dtype.element_ty), mask=m)
    part = part_ptr + tl.program_id(0).to(tl.int64) * 2 * H
    tl.store(part + heads, tl.sum(dg * decay[None, :] * _softplus(x, THRESHOLD), axis=0), mask=heads < H)
    tl.store(part + H + heads, tl.sum(da, axis=0), mask=heads < H)


def _row_stride(t: torch.Tensor) -> int:
    return t.stride(0) if t.shape[0] > 1 else t.shape[1]


def gdn_gating(a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor):
    """Forward of mom_ops.gdn_gating (same arguments; heads dense): (g fp32 [R, H], beta [R, H] in b's dtype)."""
    R, H = a.shape
    g = torch.empty(R, H, device=a.device, dtype=torch.float32)
    beta = torch.empty(R, H, device=a.device, dtype=b.dtype)
    if R > 0 and H > 0:
        grid = (triton.cdiv(R, BLOCK_R), triton.cdiv(H, BLOCK_H))
        _fwd_kernel[grid](a, b, A_log.contiguous(), dt_bias.contiguous(), g, beta, R, H, _row_stride(a), _row_stride(b),
                          THRESHOLD=SOFTPLUS_THRESHOLD, BR=BLOCK_R, BH=BLOCK_H)
    return g, beta


def gdn_gating_backward(grad_g: torch.Tensor, grad_beta: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                        A_log: torch.Tensor, dt_bias: torch.Tensor):
    """(grad_a, grad_b, grad_A_log, grad_dt_bias) of gdn_gating."""
    R, H = a.shape
    grad_a = torch.empty(R, H, device=a.device, dtype=a.dtype)
    grad_b = torch.empty(R, H, device=a.device, dtype=a.dtype)
    programs = triton.cdiv(R, BLOCK_R)
    part = torch.zeros(programs, 2, H, device=a.device, dtype=torch.float32)
    if R > 0 and H > 0:
        grid = (programs, triton.cdiv(H, BLOCK_H))
        _bwd_kernel[grid](a, b, A_log.contiguous(), dt_bias.contiguous(), grad_g.contiguous(), grad_beta.contiguous(),
                          grad_a, grad_b, part, R, H, _row_stride(a), _row_stride(b), THRESHOLD=SOFTPLUS_THRESHOLD,
                          BR=BLOCK_R, BH=BLOCK_H)
    sums = part.sum(0)
    return grad_a, grad_b, sums[0].to(A_log.dtype), sums[1].to(dt_bias.dtype)
