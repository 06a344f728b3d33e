"""Reference MoM decode step (one token per row, J memory slots), fp32, updating the pool in place."""

from __future__ import annotations

import torch

from mom_ops.reference.gdn import l2norm


def mom_decode_step_ref(q, k, v, g, beta, weights, slots, state_pool, scale=None, use_qk_l2norm_in_kernel=False,
                        state_v_first=False):
    """q [N, H, K] or [N, J, H, K] (per slot); k [N, J, H, K]; v [N, J, HV, V]; g, beta [N, J, HV]; weights [N, J]; slots [N, J];
    state_pool [P, HV, K, V] (or [P, HV, V, K]). Returns out [N, HV, V]; updates state_pool in place."""
    N, J, H, K = k.shape
    HV = v.shape[2]
    scale = K**-0.5 if scale is None else scale
    dtype = q.dtype
    q, k = q.float(), k.float()
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    if q.dim() == 3:  # one query for every slot
        q = q[:, None].expand(N, J, H, K)
    q, k = q.repeat_interleave(HV // H, dim=2), k.repeat_interleave(HV // H, dim=2)
    out = torch.zeros(N, HV, v.shape[-1])
    for n in range(N):
        for j in range(J):
            slot = int(slots[n, j])
            if slot < 0:
                continue
            S = state_pool[slot].float()
            S = S.transpose(-1, -2) if state_v_first else S  # [HV, K, V]
            S = S * g[n, j].float().exp()[:, None, None]
            u = beta[n, j].float()[:, None] * (v[n, j].float() - torch.einsum("hkv,hk->hv", S, k[n, j]))
            S = S + k[n, j][:, :, None] * u[:, None, :]
            out[n] += weights[n, j].float() * scale * torch.einsum("hkv,hk->hv", S, q[n, j])
            state_pool[slot] = S.transpose(-1, -2) if state_v_first else S
    return out.to(dtype)
