"""MoMAttention: the Mixture-of-Memories layer built from mom_ops ops (DESIGN.md §1), training/prefill forward.

Parameters follow fla's MomAttention (Linear weights [out, in]; the per-memory k/v/b/a projections stacked on
a leading M axis; one short conv each for q, k, v shared by all memories). The routed stream is the plan's
packed memory-major rows; the shared memory runs on a second plan (one memory, top-1) that packs the valid
tokens of every sequence, so padding tokens touch no state. No host synchronisation anywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import mom_ops
from mom_ops.routing import RoutingPlan


def segment_causal_conv(x: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Depthwise causal conv + SiLU inside each segment of a packed stream (no leakage across segments).

    x [R, C]; weight [C, W] (weight[:, W-1] multiplies the current row); cu_seqlens [S+1] (rows past
    cu_seqlens[-1] belong to no segment and give 0). y[r] = silu(sum_i weight[:, W-1-i] * x[r-i]) over the
    i with r - i inside r's segment.
    """
    rows = torch.arange(x.shape[0], device=x.device)
    cu = cu_seqlens.to(rows.dtype)
    seg = torch.searchsorted(cu, rows, right=True) - 1  # segment of each row
    start = cu[seg.clamp(0, cu.numel() - 2)]
    inside = rows < cu[-1]
    width = weight.shape[1]
    y = torch.zeros_like(x, dtype=torch.float32)
    for i in range(width):
        shifted = torch.cat([x.new_zeros(i, x.shape[1]), x[: x.shape[0] - i]]) if i else x
        keep = (inside & (rows - i >= start)).unsqueeze(1)
        y = y + torch.where(keep, shifted.float(), 0.0) * weight[:, width - 1 - i].float()
    return F.silu(y).to(x.dtype)


def _shared_plan(num_tokens: int, batch_size: int, cu_seqlens, mask, device) -> RoutingPlan:
    """A one-memory, top-1 plan: packs the valid tokens of each sequence in order (segments = sequences)."""
    logits = torch.zeros(num_tokens, 1, device=device)
    return mom_ops.route(logits, 1, batch_size=batch_size, cu_seqlens=cu_seqlens, mask=mask)


class MoMAttention(nn.Module):
    """Mixture-of-Memories gated-delta attention.

    x [B, T, hidden] (with an optional attention_mask [B, T], 1 = token, 0 = padding) or packed [1, N, hidden]
    with cu_seqlens [B+1] -> (out of x's shape, aux_loss). aux_loss = aux_loss_scale * M * sum_m f_m P_m over
    the valid tokens (f: fraction of routed rows, P: mean router probability).
    """

    def __init__(self, hidden_size: int = 1024, num_heads: int = 4, head_dim: int = 256, expand_v: int = 1,
                 num_memories: int = 4, topk: int = 2, shared_memory: bool = True, conv_size: int = 4,
                 norm_eps: float = 1e-6, aux_loss_scale: float = 0.01):
        super().__init__()
        if not 1 <= topk <= num_memories:
            raise ValueError(f"topk must be in [1, num_memories={num_memories}], got {topk}")
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_heads, head_dim
        self.head_v_dim = head_dim * expand_v
        self.num_memories, self.topk, self.shared_memory = num_memories, topk, shared_memory
        self.conv_size, self.norm_eps, self.aux_loss_scale = conv_size, norm_eps, aux_loss_scale
        D, M, H = hidden_size, num_memories, num_heads
        key_dim, value_dim = H * head_dim, H * self.head_v_dim
        self.gate = nn.Linear(D, M, bias=False)
        self.q_proj = nn.Linear(D, key_dim, bias=False)
        self.k_proj = nn.Parameter(torch.empty(M, key_dim, D))
        self.v_proj = nn.Parameter(torch.empty(M, value_dim, D))
        self.b_proj = nn.Parameter(torch.empty(M, H, D))
        self.a_proj = nn.Parameter(torch.empty(M, H, D))
        if shared_memory:
            self.shared_k = nn.Linear(D, key_dim, bias=False)
            self.shared_v = nn.Linear(D, value_dim, bias=False)
            self.shared_b = nn.Linear(D, H, bias=False)
            self.shared_a = nn.Linear(D, H, bias=False)
        self.q_conv = nn.Parameter(torch.empty(key_dim, conv_size))
        self.k_conv = nn.Parameter(torch.empty(key_dim, conv_size))
        self.v_conv = nn.Parameter(torch.empty(value_dim, conv_size))
        self.A_log = nn.Parameter(torch.empty(H))
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.g_proj = nn.Linear(D, value_dim, bias=False)
        self.o_norm = nn.Parameter(torch.ones(self.head_v_dim))
        self.o_proj = nn.Linear(value_dim, D, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """fla's initialisation: xavier_uniform(gain 2^-2.5) projections, A ~ U(1, 16), dt ~ logU(1e-3, 0.1)."""
        gain = 2**-2.5
        for w in (self.gate.weight, self.q_proj.weight, self.g_proj.weight, self.o_proj.weight):
            nn.init.xavier_uniform_(w, gain=gain)
        for stacked in (self.k_proj, self.v_proj, self.b_proj, self.a_proj):
            for m in range(self.num_memories):
                nn.init.xavier_uniform_(stacked[m], gain=gain)
        if self.shared_memory:
            for lin in (self.shared_k, self.shared_v, self.shared_b, self.shared_a):
                nn.init.xavier_uniform_(lin.weight, gain=gain)
        for w in (self.q_conv, self.k_conv, self.v_conv):
            nn.init.uniform_(w, -1 / math.sqrt(self.conv_size), 1 / math.sqrt(self.conv_size))
        self.A_log.copy_(torch.empty_like(self.A_log).uniform_(1, 16).log())
        dt = torch.exp(torch.rand_like(self.dt_bias) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        dt = dt.clamp_min(1e-4)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.o_norm.fill_(1.0)

    def _project_routed(self, xr: torch.Tensor, plan: RoutingPlan, weight: torch.Tensor) -> torch.Tensor:
        """Rows of memory m times weight[m]^T: xr [R, D], weight [M, out, D] -> [R, out]. Grouped GEMM over the
        memory-major segments on CUDA; elsewhere every memory's projection and a per-row select (sync-free)."""
        M, B = self.num_memories, plan.batch_size
        if xr.is_cuda and hasattr(torch, "_grouped_mm") and xr.dtype == torch.bfloat16:
            ends = plan.cu_seqlens[B::B].to(torch.int32)  # [M] row end of each memory's segments
            return torch._grouped_mm(xr, weight.transpose(1, 2).to(xr.dtype), offs=ends)
        all_m = torch.einsum("rd,mod->rmo", xr, weight.to(xr.dtype))  # [R, M, out]
        mem_of_row = (torch.searchsorted(plan.cu_seqlens, torch.arange(xr.shape[0], device=xr.device),
                                         right=True) - 1).clamp(0, M * B - 1) // B
        return all_m.gather(1, mem_of_row.view(-1, 1, 1).expand(-1, 1, all_m.shape[-1])).squeeze(1)

    def _memory(self, q, k, v, b, a, cu_seqlens):
        """Conv, gates and the scan of one packed stream: q, k [R, H*K], v [R, H*V], b, a [R, H] -> o [R, H, V]."""
        H = self.num_heads
        q = segment_causal_conv(q, self.q_conv, cu_seqlens).view(1, -1, H, self.head_dim)
        k = segment_causal_conv(k, self.k_conv, cu_seqlens).view(1, -1, H, self.head_dim)
        v = segment_causal_conv(v, self.v_conv, cu_seqlens).view(1, -1, H, self.head_v_dim)
        beta = torch.sigmoid(b.float()).to(q.dtype).unsqueeze(0)
        g = (-self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias.float())).unsqueeze(0)
        o, _ = mom_ops.chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=cu_seqlens, use_qk_l2norm_in_kernel=True)
        return o[0]

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be [B, T, {self.hidden_size}], got {tuple(x.shape)}")
        if cu_seqlens is not None and (x.shape[0] != 1 or attention_mask is not None):
            raise ValueError("packed input (cu_seqlens) must be [1, N, hidden] without attention_mask")
        B = x.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
        xf = x.reshape(-1, self.hidden_size)  # [N, D]
        mask = None if attention_mask is None else attention_mask.reshape(-1).bool()
        H, M = self.num_heads, self.num_memories

        logits = self.gate(xf)
        plan = mom_ops.route(logits, self.topk, batch_size=B, cu_seqlens=cu_seqlens, mask=mask)
        q_tok = self.q_proj(xf)
        xr = mom_ops.permute(xf, plan)
        o_routed = self._memory(mom_ops.permute(q_tok, plan), self._project_routed(xr, plan, self.k_proj),
                                self._project_routed(xr, plan, self.v_proj), self._project_routed(xr, plan, self.b_proj),
                                self._project_routed(xr, plan, self.a_proj), plan.cu_seqlens)
        shared = None
        if self.shared_memory:
            sp = _shared_plan(xf.shape[0], B, cu_seqlens, mask, x.device)
            xs = mom_ops.permute(xf, sp)
            o_s = self._memory(mom_ops.permute(q_tok, sp), self.shared_k(xs), self.shared_v(xs), self.shared_b(xs),
                               self.shared_a(xs), sp.cu_seqlens)
            shared = mom_ops.unpermute(o_s, sp)  # [N, H, V], zeros for padding tokens
        gate = self.g_proj(xf).view(-1, H, self.head_v_dim)
        o = mom_ops.memory_mix(o_routed, plan, shared=shared, norm_weight=self.o_norm, gate=gate, eps=self.norm_eps)
        out = self.o_proj(o.reshape(o.shape[0], -1)).view_as(x)

        # Switch-style load balance over valid tokens: f_m = routed rows of m / all rows, P_m = mean probability.
        probs = torch.softmax(logits.float(), -1)
        valid = torch.ones_like(probs[:, 0]) if mask is None else mask.float()
        rows_per_memory = plan.cu_seqlens[B::B] - plan.cu_seqlens[:-1:B]  # [M]
        f = rows_per_memory.float() / (valid.sum() * self.topk).clamp_min(1)
        P = (probs * valid[:, None]).sum(0) / valid.sum().clamp_min(1)
        aux_loss = self.aux_loss_scale * M * (f * P).sum()
        return out, aux_loss

    def reference_params(self) -> dict[str, torch.Tensor]:
        """The parameters under mom_ops.reference.layer's names (for tests against the naive layer)."""
        p = {"gate": self.gate.weight, "q_proj": self.q_proj.weight, "k_proj": self.k_proj, "v_proj": self.v_proj,
             "b_proj": self.b_proj, "a_proj": self.a_proj, "q_conv": self.q_conv, "k_conv": self.k_conv,
             "v_conv": self.v_conv, "A_log": self.A_log, "dt_bias": self.dt_bias, "g_proj": self.g_proj.weight,
             "o_norm": self.o_norm, "o_proj": self.o_proj.weight}
        if self.shared_memory:
            p.update(shared_k=self.shared_k.weight, shared_v=self.shared_v.weight, shared_b=self.shared_b.weight,
                     shared_a=self.shared_a.weight)
        return p
