"""Naive fp32 reference of segment_conv: one segment at a time, the history rows prepended, a loop over taps."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segment_conv_ref(x: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor,
                     history: torch.Tensor | None = None, activation: bool = True) -> torch.Tensor:
    """x [R, C], weight [C, W], cu_seqlens [S+1], history [S, W-1, C] or None -> y [R, C] (fp32 math, x's dtype).
    y[r] = act(sum_i weight[:, W-1-i] * x(r - i)) within r's segment (history rows before its start)."""
    R, C = x.shape
    W = weight.shape[1]
    w = weight.float()
    cu = [int(v) for v in cu_seqlens.tolist()]
    zeros = lambda rows: torch.zeros(rows, C, dtype=torch.float32, device=x.device)  # noqa: E731
    pieces = [zeros(cu[0])]  # rows before the first segment (none) and past the last one belong to no segment: 0
    for s in range(len(cu) - 1):
        start, end = cu[s], cu[s + 1]
        past = history[s].float() if history is not None else zeros(W - 1)
        seq = torch.cat([past, x[start:end].float()])  # [W-1 + L, C]: row t + k is x(r - (W-1) + k) for r = start + t
        # tap k of every row of the segment at once (pieces, not in-place row writes: autograd stays linear in R)
        pieces.append(sum(seq[k:k + end - start] * w[:, k] for k in range(W)))
    y = torch.cat(pieces + [zeros(R - cu[-1])])
    return (F.silu(y) if activation else y).to(x.dtype)


def segment_conv_torch(x: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor,
                       history: torch.Tensor | None = None, activation: bool = True) -> torch.Tensor:
    """The same op in vectorised torch (the layer's conv before the CUDA kernel; the bench's `naive` provider):
    every segment goes into a padded stream behind its W-1 history rows, then one depthwise conv1d."""
    R, C = x.shape
    width, S = weight.shape[1], cu_seqlens.numel() - 1
    if R == 0 or S == 0:
        return torch.zeros_like(x)
    rows = torch.arange(R, device=x.device)
    cu = cu_seqlens.long()
    seg = (torch.searchsorted(cu, rows, right=True) - 1).clamp(0, S - 1)  # segment of each row
    dest = rows + (width - 1) * (seg + 1)  # row r's place in the padded stream (rows past cu[-1] go last)
    padded = x.new_zeros(R + (width - 1) * S, C)
    if history is not None and width > 1:
        slots = cu[:-1, None] + (width - 1) * torch.arange(S, device=x.device)[:, None] \
            + torch.arange(width - 1, device=x.device)[None, :]  # [S, W-1]: the rows before each segment
        padded = padded.index_put((slots.reshape(-1),), history.reshape(-1, C).to(x.dtype))
    padded = padded.index_put((dest,), x)
    # conv1d is a cross-correlation: with W-1 rows of left padding, output t = sum_j weight[:, j] * in[t - (W-1-j)]
    y = F.conv1d(padded.t().unsqueeze(0), weight.to(x.dtype).unsqueeze(1), groups=C, padding=width - 1)
    y = y[0, :, : padded.shape[0]].t()[dest].float()
    inside = (rows < cu[-1]).unsqueeze(1)  # rows past cu_seqlens[-1] belong to no segment: 0
    return torch.where(inside, F.silu(y) if activation else y, 0.0).to(x.dtype)
