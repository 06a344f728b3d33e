"""MoMAttention: the Mixture-of-Memories layer built from mom_ops ops (DESIGN.md §1): training, (chunked) prefill
and one-launch decoding with a MoMCache.

Parameters follow fla's MomAttention (Linear weights [out, in]; the per-memory k/v/b/a projections stacked on
a leading M axis; one short conv each for q, k, v shared by all memories). The routed stream is the plan's
packed memory-major rows; the shared memory runs on a second plan (one memory, top-1) that packs the valid
tokens of every sequence, so padding tokens touch no state. No host synchronisation anywhere.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import mom_ops
from mom_ops.grouped_linear import grouped_linear, grouped_mm_linear, grouped_mm_supported
from mom_ops.routing import RoutingPlan, check_cu_seqlens_shape
from mom_ops.scan_inputs import scan_inputs
from mom_ops.token_projection import token_projection


def segment_causal_conv(x: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor,
                        history: torch.Tensor | None = None, plan: RoutingPlan | None = None) -> torch.Tensor:
    """Depthwise causal conv + SiLU inside each segment of a packed stream (mom_ops.segment_conv): x [R, C],
    weight [C, W], cu_seqlens [S+1], history [S, W-1, C] or None -> [R, C]. With a plan, x is [N, C] token rows
    read through the plan's stream (no permuted copy)."""
    return mom_ops.segment_conv(x, weight, cu_seqlens, history, plan=plan)


def segment_conv_tail(x: torch.Tensor, cu_seqlens: torch.Tensor, history: torch.Tensor | None,
                      width: int) -> torch.Tensor:
    """The conv history after each segment: the last width-1 inputs of (history, segment rows), oldest first.
    x [R, C], cu_seqlens [S+1], history [S, W-1, C] or None -> [S, W-1, C]."""
    cu = cu_seqlens.long()
    start, length = cu[:-1], cu[1:] - cu[:-1]
    idx = torch.arange(width - 1, device=x.device)
    pos = length[:, None] + idx[None, :]  # position in the concatenation (history, rows)
    from_rows = pos >= width - 1
    rows = (start[:, None] + pos - (width - 1)).clamp(0, max(x.shape[0] - 1, 0))
    tail = x[rows] if x.shape[0] > 0 else x.new_zeros(*rows.shape, x.shape[1])
    old = history[torch.arange(len(start), device=x.device)[:, None], pos.clamp(max=width - 2)] if history is not None \
        else torch.zeros_like(tail)
    return torch.where(from_rows.unsqueeze(-1), tail, old.to(tail.dtype))


@torch.no_grad()
def init_decay_(A_log: torch.Tensor, dt_bias: torch.Tensor) -> None:
    """fla's gated-delta decay initialisation: A ~ U(1, 16), dt ~ logU(1e-3, 0.1), dt_bias = softplus^-1(dt)."""
    A_log.copy_(torch.empty_like(A_log).uniform_(1, 16).log())
    dt = torch.exp(torch.rand_like(dt_bias) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp_min(1e-4)
    dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))


@torch.no_grad()
def init_short_conv_(weight: torch.Tensor) -> None:
    """Depthwise conv weights [C, W] ~ U(-1/sqrt(W), 1/sqrt(W)) (nn.Conv1d's default for one input channel)."""
    bound = 1 / math.sqrt(weight.shape[1])
    weight.uniform_(-bound, bound)


@dataclass
class MoMCache:
    """Inference state of a MoMAttention layer for B sequences, in pools indexed by row p = m * B + b
    (routed memory m of sequence b) and M * B + b (the shared memory of sequence b).

    states [P, H, K, V] fp32; conv_q/conv_k/conv_v [P, W-1, C]: the last W-1 raw conv inputs of each pool row
    (oldest first); seen_tokens [B] int64: tokens each sequence has consumed. num_memories / shared_memory: the
    layout of the pool rows, recorded by empty() (None in a cache built by hand: not checked), since M + 1 memories
    without a shared one give the same shapes as M with it."""

    states: torch.Tensor
    conv_q: torch.Tensor
    conv_k: torch.Tensor
    conv_v: torch.Tensor
    seen_tokens: torch.Tensor
    num_memories: int | None = None
    shared_memory: bool | None = None

    @staticmethod
    def empty(layer: "MoMAttention", batch_size: int, device, dtype=torch.float32) -> "MoMCache":
        """Zero states and histories for batch_size sequences; dtype: the conv histories' (a floating-point type)."""
        if not dtype.is_floating_point:
            raise ValueError(f"dtype (the conv histories') must be a floating-point type, got {dtype}")
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {batch_size}")
        P = (layer.num_memories + int(layer.shared_memory)) * batch_size
        W, H = layer.conv_size, layer.num_heads
        zeros = lambda *shape, dt=dtype: torch.zeros(*shape, device=device, dtype=dt)  # noqa: E731
        return MoMCache(zeros(P, H, layer.head_dim, layer.head_v_dim, dt=torch.float32),
                        zeros(P, W - 1, H * layer.head_dim), zeros(P, W - 1, H * layer.head_dim),
                        zeros(P, W - 1, H * layer.head_v_dim), zeros(batch_size, dt=torch.int64),
                        num_memories=layer.num_memories, shared_memory=layer.shared_memory)

    def index_select(self, index: torch.Tensor) -> "MoMCache":
        """A cache of the sequences index [B'] picks, in that order (repeats allowed): a beam search's reorder, or the
        batch without its finished sequences. The pool rows m * B + b become m * B' + i for index[i] = b."""
        B = self.seen_tokens.shape[0]
        if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.dtype not in (torch.int32, torch.int64):
            raise ValueError("index must be a 1-D int32 / int64 tensor of sequence indices")
        index = index.to(self.seen_tokens.device)
        if index.numel() and not (0 <= int(index.min()) and int(index.max()) < B):  # (a host sync: not in a graph)
            raise ValueError(f"index holds values outside [0, {B}): the cache has {B} sequences")
        if B == 0:  # (then index is empty too)
            pick = lambda t: t[:0]  # noqa: E731
        else:
            pick = lambda t: t.unflatten(0, (-1, B)).index_select(1, index).flatten(0, 1)  # noqa: E731  [P, ...] by b
        return MoMCache(pick(self.states), pick(self.conv_q), pick(self.conv_k), pick(self.conv_v),
                        self.seen_tokens.index_select(0, index), num_memories=self.num_memories,
                        shared_memory=self.shared_memory)

    def check_fits(self, layer: "MoMAttention", batch_size: int, device: torch.device) -> None:
        """ValueError unless this cache was made for `layer`'s sizes, batch_size sequences and input on device (the
        ops would name their own arguments, not the cache's fields)."""
        for name, mine, theirs in (("num_memories", self.num_memories, layer.num_memories),
                                   ("shared_memory", self.shared_memory, layer.shared_memory)):
            if mine is not None and mine != theirs:
                raise ValueError(f"cache.{name} is {mine}, this layer's {theirs}: the cache was made for another layer")
        P = (layer.num_memories + int(layer.shared_memory)) * batch_size
        W, H, K, V = layer.conv_size, layer.num_heads, layer.head_dim, layer.head_v_dim
        expected = dict(states=(P, H, K, V), conv_q=(P, W - 1, H * K), conv_k=(P, W - 1, H * K),
                        conv_v=(P, W - 1, H * V), seen_tokens=(batch_size,))
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"cache.{name} has shape {got}, but this layer with {batch_size} sequences needs "
                                 f"{shape}: was the cache made by MoMCache.empty for another layer or batch?")
            t = getattr(self, name)
            if t.device != device:
                raise ValueError(f"cache.{name} is on {t.device}, the input on {device}")
            if not t.is_contiguous():
                raise ValueError(f"cache.{name} must be contiguous (the ops update it in place)")
        for name, ok, want in (("states", self.states.dtype == torch.float32, "float32"),
                               ("conv_q", self.conv_q.is_floating_point(), "floating-point"),
                               ("conv_k", self.conv_k.is_floating_point(), "floating-point"),
                               ("conv_v", self.conv_v.is_floating_point(), "floating-point"),
                               ("seen_tokens", self.seen_tokens.dtype == torch.int64, "int64")):
            if not ok:
                raise ValueError(f"cache.{name} must be {want}, got {getattr(self, name).dtype}")


# Routed projections: on GPUs where torch._grouped_mm runs bf16 (sm90+), one grouped GEMM over the permuted rows
# (mom_ops.grouped_linear.grouped_mm_linear). An earlier try (on the H100, torch 2.11) gave NaN because the grouped
# GEMM leaves rows past its last offset unset, and the routed stream of a masked batch has such rows: the grouped_mm
# path gives them a zero weight group. Elsewhere: every memory's projection of every token and a row gather (M / k
# times the flops), or the Triton grouped GEMM with this flag.
USE_TRITON_GROUPED_LINEAR = False

# The q conv reads the token rows of q through the stream plan (segment_conv(..., plan=)) instead of a permuted copy
# (mom_ops.permute): one [R, H*K] write and read fewer per step and that copy not kept for the backward. H200, T2K
# training step A/B in one process: 5.22 -> 5.15 ms, peak 2.53 -> 2.49 GB; MOM_OPS_FUSE_Q_PERMUTE=0 turns it off.
# Prefill with a cache keeps the copy (the conv tail reads it).
FUSE_Q_PERMUTE = os.environ.get("MOM_OPS_FUSE_Q_PERMUTE", "1") == "1"

_INIT_GAIN = 2**-2.5  # fla's xavier_uniform gain for every projection


class _Linear(nn.Linear):
    """nn.Linear (no bias) whose reset_parameters is the layer's init (xavier_uniform, gain 2^-2.5): materialisers
    that call every module's own reset_parameters (FSDP1 on a meta module: parents first, then children) keep it."""

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight, gain=_INIT_GAIN)


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
        for name, value in (("hidden_size", hidden_size), ("num_heads", num_heads), ("head_dim", head_dim),
                            ("expand_v", expand_v), ("num_memories", num_memories)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 1 <= topk <= num_memories:
            raise ValueError(f"topk must be in [1, num_memories={num_memories}], got {topk}")
        if not 1 <= conv_size <= 8:
            raise ValueError(f"conv_size must be in [1, 8] (the conv kernel's widths), got {conv_size}")
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_heads, head_dim
        self.head_v_dim = head_dim * expand_v
        self.num_memories, self.topk, self.shared_memory = num_memories, topk, shared_memory
        self.conv_size, self.norm_eps, self.aux_loss_scale = conv_size, norm_eps, aux_loss_scale
        D, M, H = hidden_size, num_memories, num_heads
        key_dim, value_dim = H * head_dim, H * self.head_v_dim
        self.gate = _Linear(D, M, bias=False)
        self.q_proj = _Linear(D, key_dim, bias=False)
        self.k_proj = nn.Parameter(torch.empty(M, key_dim, D))
        self.v_proj = nn.Parameter(torch.empty(M, value_dim, D))
        self.b_proj = nn.Parameter(torch.empty(M, H, D))
        self.a_proj = nn.Parameter(torch.empty(M, H, D))
        if shared_memory:
            self.shared_k = _Linear(D, key_dim, bias=False)
            self.shared_v = _Linear(D, value_dim, bias=False)
            self.shared_b = _Linear(D, H, bias=False)
            self.shared_a = _Linear(D, H, bias=False)
        self.q_conv = nn.Parameter(torch.empty(key_dim, conv_size))
        self.k_conv = nn.Parameter(torch.empty(key_dim, conv_size))
        self.v_conv = nn.Parameter(torch.empty(value_dim, conv_size))
        self.A_log = nn.Parameter(torch.empty(H))
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.g_proj = _Linear(D, value_dim, bias=False)
        self.o_norm = nn.Parameter(torch.ones(self.head_v_dim))
        self.o_proj = _Linear(value_dim, D, bias=False)
        # zero weight rows that pad the token projection's q | g | gate columns to a multiple of 8 (_project_tokens)
        self.register_buffer("_token_pad_rows", torch.zeros(-(key_dim + value_dim + M) % 8, D), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """fla's initialisation: xavier_uniform(gain 2^-2.5) projections, A ~ U(1, 16), dt ~ logU(1e-3, 0.1)."""
        gain = _INIT_GAIN
        for lin in (self.gate, self.q_proj, self.g_proj, self.o_proj):
            lin.reset_parameters()
        for stacked in (self.k_proj, self.v_proj, self.b_proj, self.a_proj):
            for m in range(self.num_memories):
                nn.init.xavier_uniform_(stacked[m], gain=gain)
        if self.shared_memory:
            for lin in (self.shared_k, self.shared_v, self.shared_b, self.shared_a):
                lin.reset_parameters()
        for w in (self.q_conv, self.k_conv, self.v_conv):
            init_short_conv_(w)
        init_decay_(self.A_log, self.dt_bias)
        self.o_norm.fill_(1.0)
        # a buffer too: after to_empty (meta-device init) it holds whatever the memory held, and its rows enter
        # dx's GEMM in token_projection's backward (0 * NaN = NaN)
        self._token_pad_rows.zero_()

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        # the pad rows are not in a state dict (non-persistent): a layer built on the meta device, to_empty'd and
        # loaded from a checkpoint without reset_parameters would keep uninitialised memory there; loaded with
        # assign=True (no to_empty) they would stay on the meta device (this layer's parameters are real by now)
        pad = self._token_pad_rows
        if pad.is_meta:
            self._token_pad_rows = torch.zeros(pad.shape, dtype=self.k_proj.dtype, device=self.k_proj.device)
        else:
            with torch.no_grad():
                pad.zero_()

    def _project_tokens(self, xf: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The token-level projections from one GEMM: xf [N, D] -> q [N, H*K], output gate [N, H*V], router logits
        [N, M] (column slices of one [N, C] product) and xf_alias, which the stream's projection reads instead of xf:
        token_projection's backward then writes x's whole gradient (no concatenation of the blocks' gradients, no
        add). C is padded to a multiple of 8 with zero weight rows: cuBLAS takes its fast kernels only for 16-byte row
        strides."""
        mods = (self.q_proj, self.g_proj, self.gate)  # the gate last: q and g start at 16-byte aligned columns
        w = torch.cat([m.weight for m in mods] + [self._token_pad_rows]).to(xf.dtype)  # one launch, no pad
        return token_projection(xf, w, [m.weight.shape[0] for m in mods], alias_grad_in_place=True)

    def _stream_plan(self, logits: torch.Tensor, plan: RoutingPlan, cu_seqlens, mask) -> RoutingPlan:
        """The plan of the scanned stream: the routed plan, or with shared_memory one more memory (index M) that
        every valid token chooses. Routing [logits, +inf] to the top k + 1 gives exactly that: pair 0 of each
        token is memory M, pairs 1..k are the routed plan's pairs in its order (the same logits, the same ties).
        Its segments m * B + b are the cache's pool rows, the shared ones last; its weights are not used."""
        if not self.shared_memory:
            return plan
        # +inf beats every logit (route gives a lone +inf the whole weight): one pad instead of a cast, max, add, cat.
        # A logit of +inf itself (an overflowed gate) is clamped to the largest finite value first: the pad stays
        # the one +inf, so the shared memory stays pair 0 and the routed pairs keep the plan's order (ties to the
        # lower index); NaN stays NaN for route to refuse.
        lf = logits.detach().clamp(max=torch.finfo(logits.dtype).max)
        lf = F.pad(lf, (0, 1), value=float("inf"))
        return mom_ops.route(lf, self.topk + 1, batch_size=plan.batch_size, cu_seqlens=cu_seqlens, mask=mask)

    def _stream_weight_blocks(self) -> list[list[torch.Tensor]]:
        """The stream memories' k | v | b | a projection weights as blocks of pieces (grouped_mm_linear's form): the
        routed memories' [M, out_i, D] pieces, then the shared memory's [out_i, D] ones."""
        blocks = [[self.k_proj, self.v_proj, self.b_proj, self.a_proj]]
        if self.shared_memory:
            blocks.append([self.shared_k.weight, self.shared_v.weight, self.shared_b.weight, self.shared_a.weight])
        return blocks

    def _stream_weights(self) -> torch.Tensor:
        """The same weights as one [M', C, D] tensor (M' = M + 1 with the shared memory last; C = H*K + H*V + 2H)."""
        blocks = self._stream_weight_blocks()
        return torch.cat([torch.cat([p if p.dim() == 3 else p[None] for p in block], 1) for block in blocks])

    def _project_stream(self, xf: torch.Tensor, plan: RoutingPlan) -> torch.Tensor:
        """The stream's packed rows of k | v | b | a: xf [N, D] -> [R, H*K + H*V + 2H] (column slices in that order),
        from one grouped GEMM over the permuted rows where torch._grouped_mm runs (no wasted flops). Elsewhere one
        GEMM gives every token's projections under all M' memories ([N, M' * C]) and one row gather picks row (n, m)
        for each packed row (M' / k' times the flops); or the Triton grouped GEMM (USE_TRITON_GROUPED_LINEAR)."""
        M, B, k, N = plan.num_memories, plan.batch_size, plan.topk, xf.shape[0]
        if grouped_mm_supported(xf) and not USE_TRITON_GROUPED_LINEAR:  # the GEMM's weight written once, in place
            return grouped_mm_linear(mom_ops.permute(xf, plan), self._stream_weight_blocks(), plan.cu_seqlens, B,
                                     check_rows=False)  # the permuted rows are the plan's
        w_all = self._stream_weights().to(xf.dtype)  # [M', C, D]
        if USE_TRITON_GROUPED_LINEAR and xf.is_cuda:
            return grouped_linear(mom_ops.permute(xf, plan), w_all, plan.cu_seqlens, B)
        # row n * M + m: token n, memory m
        table = (xf @ w_all.reshape(-1, w_all.shape[-1]).t()).view(N * M, w_all.shape[1])
        # Packed row r = pair n * k + j reads table row n * M + memory_ids[n, j]; rows past the last segment read
        # row 0: the conv and the scan ignore them and give them zero gradients.
        pair = plan.src_pair.long().clamp_min(0)
        return table[(pair // k) * M + plan.memory_ids.reshape(-1).long().clamp_min(0)[pair]]  # [R, C]

    def _memory(self, q, proj, cu_seqlens, cache: MoMCache | None = None, rows: slice | None = None,
                q_plan: RoutingPlan | None = None, copy_cache_rows: bool = False):
        """Conv, gates and the scan of one packed stream: q [R, H*K] (or q_plan's [N, H*K] token rows, read through
        it) and proj [R, H*K + H*V + 2H] (k | v | b | a) -> o [R, H, V]. k, v, g and beta come from proj's columns in
        place (scan_inputs: the convs and gdn_gating in one node, one gradient for proj, no copy or concatenation in
        the backward). With a cache, the segments start from cache rows `rows` (states and conv histories), which are
        then replaced by the segments' final states and histories (copied first where autograd records the call,
        copy_cache_rows: it saves them for the backward)."""
        H, W, K, V = self.num_heads, self.conv_size, self.head_dim, self.head_v_dim
        hist = (None, None, None) if cache is None else (cache.conv_q[rows], cache.conv_k[rows], cache.conv_v[rows])
        h0 = None if cache is None else cache.states[rows]
        if cache is not None and copy_cache_rows:
            # autograd saves the starting states and histories for the backward, and their cache rows are
            # overwritten below: copies, so that a backward through a prefill from a cache sees the old values
            hist, h0 = tuple(t.clone() for t in hist), h0.clone()
        qc = segment_causal_conv(q, self.q_conv, cu_seqlens, hist[0], plan=q_plan).view(1, -1, H, K)
        kc, vc, g, beta = scan_inputs(proj, cu_seqlens, self.k_conv, self.v_conv, self.A_log, self.dt_bias, *hist[1:])
        o, ht = mom_ops.chunk_gated_delta_rule(
            qc, kc.view(1, -1, H, K), vc.view(1, -1, H, V), g.unsqueeze(0), beta.unsqueeze(0), cu_seqlens=cu_seqlens,
            use_qk_l2norm_in_kernel=True,
            initial_state=h0, output_final_state=cache is not None)
        if cache is not None:
            cache.states[rows] = ht.detach()  # a cache carries no gradient
            raw = (q, proj[:, :H * K], proj[:, H * K:H * (K + V)])
            for buf, x, old in zip((cache.conv_q, cache.conv_k, cache.conv_v), raw, hist):
                buf[rows] = segment_conv_tail(x.detach(), cu_seqlens, old, W).to(buf.dtype)
        return o.squeeze(0)  # a view (o[0]'s backward would zero-fill and copy the whole gradient)

    def _aux_loss(self, logits: torch.Tensor, plan: RoutingPlan, mask: torch.Tensor | None) -> torch.Tensor:
        """Switch-style load balance over valid tokens: f_m = routed rows of m / all rows, P_m = mean probability."""
        B = plan.batch_size
        probs = torch.softmax(logits, -1, dtype=torch.promote_types(logits.dtype, torch.float32))
        rows_per_memory = plan.cu_seqlens[B::B] - plan.cu_seqlens[:-1:B]  # [M]
        if mask is None:  # every token is valid: their count is known here (fewer launches than a mask of ones)
            tokens = probs.shape[0]
            # scale M sum_m f_m P_m = <sum_n probs[n], rows_per_memory * scale M / (tokens^2 k)>: the int counts times a
            # float promote to a float in one launch (.to: a no-op unless the default dtype is not fp32), and the
            # backward is one product (the counts need no gradient)
            c = self.aux_loss_scale * self.num_memories / (max(tokens * self.topk, 1) * max(tokens, 1))
            return torch.dot(probs.sum(0), (rows_per_memory * c).to(probs.dtype))
        valid = mask.to(probs.dtype)
        f = rows_per_memory.to(probs.dtype) / (valid.sum() * self.topk).clamp_min(1)
        P = (probs * valid[:, None]).sum(0) / valid.sum().clamp_min(1)
        return self.aux_loss_scale * self.num_memories * (f * P).sum()

    def _gated_norm(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """rmsnorm(o) * o_norm * silu(g_proj(x)) per head, fp32 math: o [N, H, V], x [N, D]."""
        o32 = o.float()
        o32 = o32 * torch.rsqrt(o32.square().mean(-1, keepdim=True) + self.norm_eps) * self.o_norm.float()
        return (o32 * F.silu(self.g_proj(x).float().view_as(o32))).to(o.dtype)

    @torch.no_grad()
    def _decode_step(self, x: torch.Tensor, cache: MoMCache,
                     mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One token per sequence, x [B, 1, D]: every routed memory and the shared one in one mom_decode_step.
        mask [B, 1] (0: no token for that sequence this step): its output is 0 and its cache rows stay as they are."""
        B, M, H, W = x.shape[0], self.num_memories, self.num_heads, self.conv_size
        xf = x[:, 0]
        valid = None if mask is None else mask.reshape(B).bool()
        if valid is not None:  # a masked token may hold anything (NaN): zeros, as in the prefill
            xf = torch.where(valid[:, None], xf, 0)
        logits = self.gate(xf)
        plan = mom_ops.route(logits, self.topk, batch_size=B, mask=valid)
        ids, seq = plan.memory_ids.long(), torch.arange(B, device=x.device)  # (ids -1 for masked tokens)
        ids_or_0 = ids.clamp_min(0)
        pick = lambda all_m: all_m.gather(1, ids_or_0[..., None].expand(-1, -1, all_m.shape[-1]))  # noqa: E731
        proj = lambda w: pick(torch.einsum("bd,mod->bmo", xf, w.to(xf.dtype)))  # noqa: E731  [B, k, out]
        k_raw, v_raw, b_raw, a_raw = proj(self.k_proj), proj(self.v_proj), proj(self.b_proj), proj(self.a_proj)
        slots, weights = ids_or_0 * B + seq[:, None], plan.weights.float()  # (fp64 for a float64 layer's logits)
        if self.shared_memory:
            extra = lambda t, lin: torch.cat([t, lin(xf)[:, None]], 1)  # noqa: E731
            k_raw, v_raw = extra(k_raw, self.shared_k), extra(v_raw, self.shared_v)
            b_raw, a_raw = extra(b_raw, self.shared_b), extra(a_raw, self.shared_a)
            slots = torch.cat([slots, (M * B + seq)[:, None]], 1)
            weights = torch.cat([weights, torch.ones_like(weights[:, :1])], 1)
        J = slots.shape[1]
        q_raw = self.q_proj(xf)[:, None].expand(-1, J, -1)

        def conv_step(buf, raw, weight):  # [B, J, C]: one conv step per pool row, history updated in place
            dt = torch.promote_types(buf.dtype, raw.dtype)  # the new input keeps its precision (prefill's conv too)
            old = buf[slots]
            window = torch.cat([old.to(dt), raw[:, :, None].to(dt)], 2)  # [B, J, W, C]
            new = window[:, :, 1:].to(buf.dtype)
            # a masked sequence's rows are written back as they were (its slots may repeat: the same values)
            buf[slots] = new if valid is None else torch.where(valid[:, None, None, None], new, old)
            return F.silu((window.float() * weight.t().float()).sum(2)).to(raw.dtype)

        q = conv_step(cache.conv_q, q_raw, self.q_conv).view(B, J, H, self.head_dim)
        k = conv_step(cache.conv_k, k_raw, self.k_conv).view(B, J, H, self.head_dim)
        v = conv_step(cache.conv_v, v_raw, self.v_conv).view(B, J, H, self.head_v_dim)
        g, beta = mom_ops.gdn_gating(a_raw.reshape(-1, H), b_raw.reshape(-1, H), self.A_log, self.dt_bias)
        if valid is not None:  # the step skips negative slots: no state update, nothing read
            slots = torch.where(valid[:, None], slots, -1)
        o = mom_ops.mom_decode_step(q, k, v, g.view(B, J, H), beta.view(B, J, H), weights, slots.to(torch.int32),
                                    cache.states, use_qk_l2norm_in_kernel=True)
        cache.seen_tokens += 1 if valid is None else valid.to(cache.seen_tokens.dtype)
        out = self.o_proj(self._gated_norm(o, xf).reshape(B, -1))[:, None]  # (0 for a masked token: o and xf are 0)
        return out, self._aux_loss(logits, plan, valid)

    def _needs_graph(self, x: torch.Tensor) -> bool:
        """Whether autograd records this call: then a one-token call with a cache takes the prefill path (the decode
        step is inference only)."""
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None, cache: MoMCache | None = None, use_cache: bool = False):
        """Returns (out, aux_loss), or (out, aux_loss, cache) with use_cache. Given a cache, a [B, 1, D] input
        without cu_seqlens (with or without a mask) takes the one-launch decode step where autograd does not record
        the call (under torch.no_grad / inference_mode, or with nothing requiring a gradient); anything else is a
        prefill that starts from the cache's states (chunked prefill) and leaves the final ones in it. The cache
        carries no gradient: a backward through a call with a cache treats its starting states as constants."""
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be [B, T, {self.hidden_size}], got {tuple(x.shape)}")
        if x.dtype != self.q_proj.weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(f"x is {x.dtype}, the layer's weights {self.q_proj.weight.dtype}: cast one to the other "
                             "or run under torch.autocast")
        if cache is not None and not isinstance(cache, MoMCache):
            raise TypeError(f"cache must be a MoMCache (MoMCache.empty or a use_cache=True call), got {type(cache)}")
        if cu_seqlens is not None and (x.shape[0] != 1 or attention_mask is not None):
            raise ValueError("packed input (cu_seqlens) must be [1, N, hidden] without attention_mask")
        if (cache is not None and attention_mask is not None and attention_mask.dim() == 2
                and attention_mask.shape[0] == x.shape[0] and attention_mask.shape[1] > x.shape[1]):
            # HF generate passes the mask of the past and the new tokens: the new tokens' columns are the last T
            # (fla's MomAttention: attention_mask[:, -q_len:])
            attention_mask = attention_mask[:, attention_mask.shape[1] - x.shape[1]:]
        if attention_mask is not None and attention_mask.shape != x.shape[:2]:
            raise ValueError(f"attention_mask must be [B, T] = {tuple(x.shape[:2])}, got {tuple(attention_mask.shape)}")
        if cu_seqlens is not None:
            check_cu_seqlens_shape(cu_seqlens)
        B = x.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
        if cache is not None and cache.seen_tokens.shape[0] != B:
            raise ValueError(f"cache holds {cache.seen_tokens.shape[0]} sequences, the input has {B}")
        if cache is not None:
            cache.check_fits(self, B, x.device)
            if not torch.compiler.is_compiling() and torch._C._current_graph_task_id() != -1:
                raise RuntimeError("MoMAttention: called with a cache while a backward runs (activation "
                                   "checkpointing's recompute): the first forward already advanced the cache, so the "
                                   "recompute would start from its final states and advance it again. Do not "
                                   "checkpoint calls that take a cache.")
        if use_cache and cache is None:
            cache = MoMCache.empty(self, B, x.device, x.dtype)
        if B == 0:  # no sequence (every one finished): route refuses batch_size 0
            # (x is [0, T, D]: packed input has B >= 1.) Tied to x and every parameter by a zero factor, so that a
            # backward runs and gives zero gradients, as a batch of masked tokens does (DDP sees every parameter used)
            aux_loss = self.gate.weight.new_zeros((), dtype=torch.promote_types(self.gate.weight.dtype, torch.float32))
            aux_loss = 0 * sum((p.sum() for p in self.parameters() if p.requires_grad), aux_loss)
            out = x * 0 + aux_loss.to(x.dtype)
            return (out, aux_loss, cache) if use_cache else (out, aux_loss)
        needs_graph = cache is not None and self._needs_graph(x)
        if cache is not None and x.shape[1] == 1 and cu_seqlens is None:
            if not needs_graph:
                out, aux_loss = self._decode_step(x, cache, attention_mask)
                return (out, aux_loss, cache) if use_cache else (out, aux_loss)
            if not x.requires_grad:
                warnings.warn("MoMAttention: a one-token call with a cache while autograd records runs as a one-token "
                              "prefill with gradients, not the one-launch decode step: decode under torch.no_grad() "
                              "or torch.inference_mode()", stacklevel=2)  # (Python shows it once)

        xf = x.reshape(-1, self.hidden_size)  # [N, D]
        mask = None if attention_mask is None else attention_mask.reshape(-1).bool()
        if mask is not None:  # padding may hold anything (NaN): zeros, so that its output is 0 and adds no gradient
            xf = torch.where(mask[:, None], xf, 0)
        H = self.num_heads
        q_tok, gate, logits, x_stream = self._project_tokens(xf)
        plan = mom_ops.route(logits, self.topk, batch_size=B, cu_seqlens=cu_seqlens, mask=mask)
        # One stream for the routed memories and the shared one: one permute, one grouped GEMM, one conv per
        # input and one scan launch, with the shared memory's long segments running beside the routed ones.
        stream = self._stream_plan(logits, plan, cu_seqlens, mask)
        fuse_q = FUSE_Q_PERMUTE and cache is None  # (the cache's conv tail reads the permuted q)
        q_in = q_tok if fuse_q else mom_ops.permute(q_tok, stream)
        o_stream = self._memory(q_in, self._project_stream(x_stream, stream), stream.cu_seqlens, cache,
                                slice(0, stream.num_memories * B), q_plan=stream if fuse_q else None,
                                copy_cache_rows=needs_graph)
        weights = plan.weights
        if self.shared_memory:  # the stream's pair 0 is the shared memory, with weight 1
            weights = torch.cat([torch.ones_like(weights[:, :1]), weights], 1)
        gate = gate.view(-1, H, self.head_v_dim)  # a column slice: memory_mix reads it in place
        o = mom_ops.memory_mix(o_stream, stream, weights=weights, norm_weight=self.o_norm, gate=gate, eps=self.norm_eps)
        out = self.o_proj(o.reshape(o.shape[0], H * self.head_v_dim)).view_as(x)
        aux_loss = self._aux_loss(logits, plan, mask)
        if cache is not None:  # every valid token has k routed rows
            rows = (plan.cu_seqlens[1:] - plan.cu_seqlens[:-1]).view(self.num_memories, B).sum(0)
            cache.seen_tokens += (rows // self.topk).to(cache.seen_tokens.dtype)
        return (out, aux_loss, cache) if use_cache else (out, aux_loss)

    @classmethod
    def from_fla(cls, fla_layer: nn.Module) -> "MoMAttention":
        """A MoMAttention holding the weights of an fla `MomAttention` (fla 0.6), on its device and dtype.

        Differences to fla, by design: the short convs restart in every (sequence, memory) segment in training
        too (fla's training path lets them run across segments), the aux loss is returned by the layer, and
        routing ties go to the lower memory index. The aux loss's f_m is memory m's share of the N * topk routed
        pairs (DESIGN.md §1), where fla's model-level load_balancing_loss_func counts f_m = pairs_m / N: at the
        same scale ours is 1 / topk of fla's, so set aux_loss_scale = topk * fla's aux_loss_scale for the same
        balancing pressure. fla's own bug: it orders each memory's tokens with an unstable argsort, so on the CPU
        (and for small inputs on CUDA) its scan and convs see them out of time order; with that sort made stable,
        fla's layer and ours agree to fp32 rounding in outputs and every gradient (tests/test_from_fla.py)."""
        for flag, supported in (("use_output_gate", True), ("use_short_conv", True), ("single_kv_proj", False)):
            if getattr(fla_layer, flag, supported) != supported:
                raise ValueError(f"from_fla: fla MomAttention with {flag}={not supported} is not supported")
        if getattr(fla_layer.q_conv1d, "bias", None) is not None:
            raise ValueError("from_fla: fla MomAttention with conv_bias=True is not supported")
        head_dim, head_v_dim = fla_layer.head_dim, fla_layer.head_v_dim
        if head_v_dim % head_dim != 0:
            raise ValueError(f"from_fla: head_v_dim {head_v_dim} must be a multiple of head_dim {head_dim}")
        layer = cls(hidden_size=fla_layer.hidden_size, num_heads=fla_layer.num_heads, head_dim=head_dim,
                    expand_v=head_v_dim // head_dim, num_memories=fla_layer.num_memories, topk=fla_layer.topk,
                    shared_memory=fla_layer.shared_mem, conv_size=fla_layer.conv_size, norm_eps=fla_layer.o_norm.eps)
        weight = fla_layer.q_proj.weight
        layer.to(device=weight.device, dtype=weight.dtype)
        # the decay parameters keep their own dtype (a 16-bit model may hold A_log / dt_bias in fp32; the gating op
        # takes them in any floating dtype, the two alike)
        decay_dtype = torch.promote_types(fla_layer.A_log.dtype, fla_layer.dt_bias.dtype)
        layer.A_log.data = layer.A_log.data.to(decay_dtype)
        layer.dt_bias.data = layer.dt_bias.data.to(decay_dtype)
        stack = lambda mods: torch.stack([m.weight for m in mods])  # noqa: E731
        with torch.no_grad():
            for ours, theirs in [
                (layer.gate.weight, fla_layer.gate.weight), (layer.q_proj.weight, fla_layer.q_proj.weight),
                (layer.k_proj, stack(fla_layer.k_proj)), (layer.v_proj, stack(fla_layer.v_proj)),
                (layer.b_proj, stack(fla_layer.b_proj)), (layer.a_proj, stack(fla_layer.a_proj)),
                (layer.q_conv, fla_layer.q_conv1d.weight[:, 0]), (layer.k_conv, fla_layer.k_conv1d.weight[:, 0]),
                (layer.v_conv, fla_layer.v_conv1d.weight[:, 0]), (layer.A_log, fla_layer.A_log),
                (layer.dt_bias, fla_layer.dt_bias), (layer.g_proj.weight, fla_layer.g_proj.weight),
                (layer.o_norm, fla_layer.o_norm.weight), (layer.o_proj.weight, fla_layer.o_proj.weight),
            ]:
                ours.copy_(theirs)
            if layer.shared_memory:
                for name in ("shared_k", "shared_v", "shared_b", "shared_a"):
                    getattr(layer, name).weight.copy_(getattr(fla_layer, name).weight)
        return layer

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
