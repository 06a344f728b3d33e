"""Reference MoM layer (DESIGN.md §1), token by token, fp32: training forward, prefill and decode share one step.

Parameters follow fla's MomAttention (Linear weights are [out, in]); the stacked per-memory projections are
fla's ModuleLists stacked on a leading M axis. The short convs are shared by all memories (as in fla) but
run inside each (sequence, memory) segment: each memory keeps its own conv history.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mom_ops.reference.gdn import l2norm
from mom_ops.reference.routing import router_ref


@dataclass
class MoMConfig:
    hidden_size: int = 64
    num_heads: int = 2
    head_dim: int = 16
    expand_v: int = 1
    num_memories: int = 4
    topk: int = 2
    shared_memory: bool = True
    conv_size: int = 4
    norm_eps: float = 1e-6
    aux_loss_scale: float = 0.01

    @property
    def key_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def value_dim(self) -> int:
        return self.key_dim * self.expand_v


def init_mom_params(cfg: MoMConfig, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Random fp32 parameters with fla's names and shapes (stacked over memories)."""
    D, M, H, W = cfg.hidden_size, cfg.num_memories, cfg.num_heads, cfg.conv_size
    Kd, Vd = cfg.key_dim, cfg.value_dim

    def rand(*shape, std=None):
        std = (shape[-1] ** -0.5) if std is None else std
        return torch.randn(*shape, generator=generator) * std

    p = {
        "gate": rand(M, D),
        "q_proj": rand(Kd, D),
        "k_proj": rand(M, Kd, D),
        "v_proj": rand(M, Vd, D),
        "b_proj": rand(M, H, D),
        "a_proj": rand(M, H, D),
        "q_conv": rand(Kd, W, std=0.5),
        "k_conv": rand(Kd, W, std=0.5),
        "v_conv": rand(Vd, W, std=0.5),
        "A_log": torch.empty(H).uniform_(1, 16, generator=generator).log(),
        "dt_bias": rand(H, std=0.5),
        "g_proj": rand(Vd, D),
        "o_norm": 1 + rand(Vd // H, std=0.1),
        "o_proj": rand(D, Vd),
    }
    if cfg.shared_memory:
        p.update(shared_k=rand(Kd, D), shared_v=rand(Vd, D), shared_b=rand(H, D), shared_a=rand(H, D))
    return p


@dataclass
class MoMLayerCache:
    """Decode state of one sequence: per memory (M routed + 1 shared) a gated-delta state [H, K, V] and the
    last conv_size - 1 conv inputs of q, k, v. `seen_tokens` counts the tokens the layer has consumed."""

    states: list[torch.Tensor] = field(default_factory=list)
    conv_q: list[torch.Tensor] = field(default_factory=list)
    conv_k: list[torch.Tensor] = field(default_factory=list)
    conv_v: list[torch.Tensor] = field(default_factory=list)
    seen_tokens: int = 0

    @staticmethod
    def empty(cfg: MoMConfig) -> "MoMLayerCache":
        n = cfg.num_memories + int(cfg.shared_memory)
        H, K, V, W = cfg.num_heads, cfg.head_dim, cfg.head_dim * cfg.expand_v, cfg.conv_size
        return MoMLayerCache(
            states=[torch.zeros(H, K, V) for _ in range(n)],
            conv_q=[torch.zeros(W - 1, cfg.key_dim) for _ in range(n)],
            conv_k=[torch.zeros(W - 1, cfg.key_dim) for _ in range(n)],
            conv_v=[torch.zeros(W - 1, cfg.value_dim) for _ in range(n)],
        )


def _conv_step(history: list[torch.Tensor], i: int, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Causal depthwise conv + SiLU of one new input x [C] after history[i] [W-1, C]; updates history[i]."""
    window = torch.cat([history[i], x[None]], 0)  # [W, C], oldest first
    history[i] = window[1:]
    return F.silu((window * weight.t()).sum(0))


def _memory_step(p, cfg, cache, i, x, q_raw, k_w, v_w, b_w, a_w):
    """One gated-delta step of memory i (a routed memory or the shared one) for token x; returns o [H, V]."""
    H, K = cfg.num_heads, cfg.head_dim
    q = _conv_step(cache.conv_q, i, q_raw, p["q_conv"]).view(H, K)
    k = _conv_step(cache.conv_k, i, k_w @ x, p["k_conv"]).view(H, K)
    v = _conv_step(cache.conv_v, i, v_w @ x, p["v_conv"]).view(H, -1)
    q, k = l2norm(q), l2norm(k)
    beta = torch.sigmoid(b_w @ x)  # [H]
    g = -p["A_log"].exp() * F.softplus(a_w @ x + p["dt_bias"])  # [H], log decay <= 0
    S = cache.states[i] * g.exp()[:, None, None]
    u = beta[:, None] * (v - torch.einsum("hkv,hk->hv", S, k))
    S = S + k[:, :, None] * u[:, None, :]
    cache.states[i] = S
    return K**-0.5 * torch.einsum("hkv,hk->hv", S, q)


def mom_layer_ref(p: dict[str, torch.Tensor], cfg: MoMConfig, x: torch.Tensor,
                  caches: list[MoMLayerCache] | None = None, mask: torch.Tensor | None = None):
    """x [B, T, D] -> (out [B, T, D], aux_loss, caches). Pass the returned caches back to continue (decode).
    mask [B, T] bool: False tokens are padding (no routing, no state change, output 0, not in the aux loss).
    aux_loss = aux_loss_scale * M * sum_m f_m P_m over this call's valid tokens (f: fraction of routed rows,
    P: mean router probability)."""
    B, T, _ = x.shape
    M, k, H = cfg.num_memories, cfg.topk, cfg.num_heads
    x = x.float()
    caches = [MoMLayerCache.empty(cfg) for _ in range(B)] if caches is None else caches
    mask = torch.ones(B, T, dtype=torch.bool) if mask is None else mask
    outs = torch.zeros(B, T, x.shape[-1])
    routed_count, prob_sum = torch.zeros(M), torch.zeros(M)
    for b in range(B):
        for t in range(T):
            if not mask[b, t]:
                continue
            xt = x[b, t]
            logits = p["gate"] @ xt
            prob_sum = prob_sum + torch.softmax(logits, -1)
            weights, ids = router_ref(logits[None], k)
            q_raw = p["q_proj"] @ xt
            o = 0
            for j in range(k):
                m = int(ids[0, j])
                routed_count[m] += 1
                o_m = _memory_step(p, cfg, caches[b], m, xt, q_raw, p["k_proj"][m], p["v_proj"][m], p["b_proj"][m],
                                   p["a_proj"][m])
                o = o + weights[0, j] * o_m
            if cfg.shared_memory:
                o = o + _memory_step(p, cfg, caches[b], M, xt, q_raw, p["shared_k"], p["shared_v"], p["shared_b"],
                                     p["shared_a"])
            o = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + cfg.norm_eps) * p["o_norm"]
            o = o * F.silu(p["g_proj"] @ xt).view(H, -1)
            outs[b, t] = p["o_proj"] @ o.reshape(-1)
            caches[b].seen_tokens += 1
    valid = int(mask.sum())
    f = routed_count / max(valid * k, 1)
    P = prob_sum / max(valid, 1)
    aux_loss = cfg.aux_loss_scale * M * (f * P).sum()
    return outs, aux_loss, caches
