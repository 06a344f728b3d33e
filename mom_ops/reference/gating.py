"""Naive reference of gdn_gating: the torch expression the layer used before the fused op, in fp32."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gdn_gating_ref(a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor,
                   dt_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a, b [R, H], A_log, dt_bias [H] -> (g = -exp(A_log) * softplus(a + dt_bias) fp32 (fp64 for fp64 a),
    beta = sigmoid(b) in b's dtype)."""
    math = torch.float64 if a.dtype == torch.float64 else torch.float32
    g = -A_log.to(math).exp() * F.softplus(a.to(math) + dt_bias.to(math))
    return g, torch.sigmoid(b.to(math)).to(b.dtype)
