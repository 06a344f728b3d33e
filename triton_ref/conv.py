"""Triton reference for segment_conv (per-segment causal depthwise conv + SiLU). Correctness first: every row
finds its segment from a precomputed per-row table; the backward recomputes the pre-activations at each tap.
fwd: one program per (row block, channel block). bwd: dpre = dy act'(pre) (kernel 1), then dx and per-program
dw partials (kernel 2); the history gradient is a torch gather of dpre."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_R, BLOCK_C = 16, 64


@triton.jit
def _source(x_ptr, hist_ptr, rows, cols, src, start, seg, inside, cmask, C, W: tl.constexpr,
            HAS_HIST: tl.constexpr):
    """x(src) [BLOCK_R, BLOCK_C] in fp32: the row inside the segment, else the history row (or 0)."""
    in_seg = src >= start
    xv = tl.load(x_ptr + tl.maximum(src, 0).to(tl.int64)[:, None] * C + cols[None, :],
                 mask=(in_seg & inside)[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    if HAS_HIST:
        back = start - src
        hrow = seg.to(tl.int64) * (W - 1) + (W - 1 - back)
        hmask = (~in_seg) & (back <= W - 1) & inside
        xv += tl.load(hist_ptr + tl.maximum(hrow, 0)[:, None] * C + cols[None, :],
                      mask=hmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    return xv


@triton.jit
def _pre(x_ptr, hist_ptr, w_ptr, rows, cols, start, seg, inside, cmask, C, W: tl.constexpr, HAS_HIST: tl.constexpr):
    acc = tl.zeros((rows.shape[0], cols.shape[0]), dtype=tl.float32)
    for i in tl.static_range(W):
        xv = _source(x_ptr, hist_ptr, rows, cols, rows - i, start, seg, inside, cmask, C, W, HAS_HIST)
        wi = tl.load(w_ptr + cols * W + (W - 1 - i), mask=cmask, other=0.0).to(tl.float32)
        acc += wi[None, :] * xv
    return acc


@triton.jit
def _block(start_ptr, seg_ptr, total_ptr, R, C, BR: tl.constexpr, BC: tl.constexpr):
    """This program's rows and channels, their masks, which rows lie in a segment, and each row's segment and
    segment start."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    rmask, cmask = rows < R, cols < C
    total = tl.load(total_ptr)  # cu_seqlens[-1], read on the device (no host sync)
    start = tl.load(start_ptr + rows, mask=rmask, other=0)
    seg = tl.load(seg_ptr + rows, mask=rmask, other=0)
    return rows, cols, rmask, cmask, rows < total, start, seg


@triton.jit
def _fwd_kernel(x_ptr, hist_ptr, w_ptr, start_ptr, seg_ptr, y_ptr, R, C, total_ptr, W: tl.constexpr,
                HAS_HIST: tl.constexpr, ACT: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    rows, cols, rmask, cmask, inside, start, seg = _block(start_ptr, seg_ptr, total_ptr, R, C, BR, BC)
    acc = _pre(x_ptr, hist_ptr, w_ptr, rows, cols, start, seg, inside, cmask, C, W, HAS_HIST)
    if ACT:
        acc = acc / (1.0 + tl.exp(-acc))
    acc = tl.where(inside[:, None], acc, 0.0)
    tl.store(y_ptr + rows.to(tl.int64)[:, None] * C + cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _dpre_kernel(x_ptr, hist_ptr, w_ptr, start_ptr, seg_ptr, dy_ptr, dpre_ptr, R, C, total_ptr, W: tl.constexpr,
                 HAS_HIST: tl.constexpr, ACT: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    rows, cols, rmask, cmask, inside, start, seg = _block(start_ptr, seg_ptr, total_ptr, R, C, BR, BC)
    offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
    m = rmask[:, None] & cmask[None, :]
    d = tl.load(dy_ptr + offs, mask=m & inside[:, None], other=0.0).to(tl.float32)
    if ACT:
        pre = _pre(x_ptr, hist_ptr, w_ptr, rows, cols, start, seg, inside, cmask, C, W, HAS_HIST)
        s = 1.0 / (1.0 + tl.exp(-pre))
        d = d * s * (1.0 + pre * (1.0 - s))
    tl.store(dpre_ptr + offs, d, mask=m)


@triton.jit
def _dx_kernel(x_ptr, hist_ptr, w_ptr, start_ptr, seg_ptr, dpre_ptr, dx_ptr, dw_part_ptr, R, C, total_ptr,
               W: tl.constexpr, HAS_HIST: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    rows, cols, rmask, cmask, inside, start, seg = _block(start_ptr, seg_ptr, total_ptr, R, C, BR, BC)
    dpre = tl.load(dpre_ptr + rows.to(tl.int64)[:, None] * C + cols[None, :],
                   mask=rmask[:, None] & cmask[None, :], other=0.0)
    dx = tl.zeros((BR, BC), dtype=tl.float32)
    for i in tl.static_range(W):
        wi = tl.load(w_ptr + cols * W + (W - 1 - i), mask=cmask, other=0.0).to(tl.float32)
        # dx[r] += w[W-1-i] dpre[r + i] while r + i is in r's segment
        dst = rows + i
        dseg = tl.load(seg_ptr + dst, mask=dst < R, other=-1)
        same = (dst < tl.load(total_ptr)) & (dseg == seg) & inside
        later = tl.load(dpre_ptr + tl.minimum(dst, R - 1).to(tl.int64)[:, None] * C + cols[None, :],
                        mask=same[:, None] & cmask[None, :], other=0.0)
        dx += wi[None, :] * later
        # dw[c, W-1-i] += dpre[r] x(r - i)
        xv = _source(x_ptr, hist_ptr, rows, cols, rows - i, start, seg, inside, cmask, C, W, HAS_HIST)
        part = tl.sum(dpre * xv, axis=0)
        tl.store(dw_part_ptr + (tl.program_id(0).to(tl.int64) * C + cols) * W + (W - 1 - i), part, mask=cmask)
    tl.store(dx_ptr + rows.to(tl.int64)[:, None] * C + cols[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=rmask[:, None] & cmask[None, :])


def _row_tables(cu_seqlens: torch.Tensor, R: int, device):
    """Per row: its segment and the segment's first row (rows past the end: the last segment)."""
    cu = cu_seqlens.to(device=device, dtype=torch.int64)
    S = cu.numel() - 1
    rows = torch.arange(R, device=device)
    seg = (torch.searchsorted(cu, rows, right=True) - 1).clamp(0, max(S - 1, 0))
    return cu, seg.to(torch.int32).contiguous(), cu[seg].contiguous(), int(S)


def segment_conv(x: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor,
                 history: torch.Tensor | None = None, activation: bool = True, plan=None) -> torch.Tensor:
    """Forward of mom_ops.segment_conv (same arguments): x [R, C], weight [C, W] -> [R, C]; with a routing plan, x is
    [N, C] and the conv runs on permute(x, plan) (here materialised). Not differentiable; segment_conv_backward gives
    the gradients (of the permuted rows)."""
    if plan is not None:
        from triton_ref.routing import permute

        x = permute(x, plan)
    R, C = x.shape
    W = weight.shape[1]
    cu, seg, start, S = _row_tables(cu_seqlens, R, x.device)
    x, w = x.contiguous(), weight.contiguous()
    hist = history.contiguous() if history is not None and W > 1 else x  # (read in its dtype, as fp32)
    y = torch.empty_like(x)
    grid = (triton.cdiv(R, BLOCK_R), triton.cdiv(C, BLOCK_C))
    if R > 0 and S > 0:
        _fwd_kernel[grid](x, hist, w, start, seg, y, R, C, cu[-1:], W=W, HAS_HIST=history is not None and W > 1,
                          ACT=activation, BR=BLOCK_R, BC=BLOCK_C)
    else:
        y.zero_()
    return y


def segment_conv_backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor,
                          history: torch.Tensor | None = None, activation: bool = True):
    """(grad_x, grad_weight, grad_history or None) of segment_conv."""
    R, C = x.shape
    W = weight.shape[1]
    cu, seg, start, S = _row_tables(cu_seqlens, R, x.device)
    x, w, dy = x.contiguous(), weight.contiguous(), grad_y.contiguous()
    has_hist = history is not None and W > 1
    hist = history.contiguous() if has_hist else x
    grid = (triton.cdiv(R, BLOCK_R), triton.cdiv(C, BLOCK_C))
    dpre = torch.zeros(R, C, device=x.device, dtype=torch.float32)
    dx = torch.zeros_like(x)
    dw_part = torch.zeros(grid[0], C, W, device=x.device, dtype=torch.float32)
    if R > 0 and S > 0:
        _dpre_kernel[grid](x, hist, w, start, seg, dy, dpre, R, C, cu[-1:], W=W, HAS_HIST=has_hist, ACT=activation,
                           BR=BLOCK_R, BC=BLOCK_C)
        _dx_kernel[grid](x, hist, w, start, seg, dpre, dx, dw_part, R, C, cu[-1:], W=W, HAS_HIST=has_hist,
                         BR=BLOCK_R, BC=BLOCK_C)
    grad_history = None
    if history is not None:
        # history row h of segment s (source start - (W-1) + h) feeds row start + j through tap j + W-1-h
        grad_history = torch.zeros(S, W - 1, C, device=x.device, dtype=torch.float32)
        for h in range(W - 1 if R > 0 else 0):
            for j in range(h + 1):
                row = cu[:-1] + j
                valid = (row < cu[1:]).unsqueeze(1)
                contrib = w[:, W - 1 - (j + W - 1 - h)].float() * dpre[row.clamp(max=max(R - 1, 0))]
                grad_history[:, h] += torch.where(valid, contrib, 0.0)
        grad_history = grad_history.to(history.dtype)
    return dx, dw_part.sum(0).to(weight.dtype), grad_history
