"""The gdn bench cases' inputs, in a module of their own so that scripts timing other scan libraries
(scripts/flash_qla_time.py) need not load mom_ops."""

from __future__ import annotations

import torch
import torch.nn.functional as F


# The gdn bench cases (T, H, D, sequences): bench/cases.py, scripts/gdn_provider_diff.py, scripts/flash_qla_time.py
GDN_CASES = ((32768, 16, 128, 32), (32768, 16, 128, 1), (32768, 4, 256, 32))
# (T, H, D, n, decay scale): one sequence whose heads forget too slowly for the warm-up cut into pieces (csrc/gdn/
# NOTES.md, "Exact pieces"), the scan's worst case; case name suffix "_slow"
GDN_SLOW_CASES = ((32768, 16, 128, 1, 0.001),)


def gdn_inputs(T: int, H: int, D: int, n: int, decay_scale: float = 1.0):
    """q, k, v [1, T, H, D] bf16, g = decay_scale * logsigmoid(randn) [1, T, H] fp32, beta [1, T, H] bf16 and
    cu_seqlens (int32) of n random-length sequences; seeded, so every provider sees the same inputs. The bench's
    decay (scale 1) averages ~-0.8 per token (~-51 per chunk): a scale of 0.02 is a slow-forgetting head."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    bf = dict(device="cuda", dtype=torch.bfloat16)
    q, k, v = (torch.randn(1, T, H, D, generator=gen, **bf) for _ in range(3))
    g = F.logsigmoid(torch.randn(1, T, H, device="cuda", generator=gen)) * decay_scale
    beta = torch.rand(1, T, H, device="cuda", generator=gen).to(torch.bfloat16)
    cuts = torch.randperm(T - 1, device="cuda", generator=gen)[: n - 1].sort().values + 1
    cu = torch.cat([cuts.new_zeros(1), cuts, cuts.new_full((1,), T)]).to(torch.int32)
    return dict(q=q, k=k, v=v, g=g, beta=beta), cu
