"""Reference memory-mix readout (DESIGN.md §1: readout), fp32."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def memory_mix_ref(o_routed, dst_row, weights, shared=None, norm_weight=None, gate=None, eps=1e-6):
    """o[n] = sum_j w[n, j] o_routed[dst_row[n, j]] + shared[n]; then o * rsqrt(mean(o^2) + eps) * norm_weight
    * silu(gate) per head when norm_weight is given. o_routed [R, H, V] -> [N, H, V] in o_routed's dtype."""
    rows = dst_row.long()
    # rows < 0 read nothing: not 0 * a weight or a row that may hold NaN
    weighted = o_routed.float()[rows.clamp_min(0)] * weights.float()[..., None, None]
    o = torch.where((rows >= 0)[..., None, None], weighted, 0.0).sum(1)
    if shared is not None:
        o = o + shared.float()
    if norm_weight is not None:
        o = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + eps) * norm_weight.float()
        if gate is not None:
            o = o * F.silu(gate.float())
    return o.to(o_routed.dtype)
