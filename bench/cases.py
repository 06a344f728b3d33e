"""The benchmark registry: every (op, case) with its modes and providers, in the names of DESIGN.md §6.

A case's `build(provider, mode)` returns a `Bench` (a zero-argument callable and the bytes it must move at
least: every input read once, every output written once) or None when the provider cannot run it here.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import mom_ops
from bench.gdn_inputs import GDN_CASES, GDN_SLOW_CASES, gdn_inputs

# fla 0.6 hands chunk_gated_delta_rule to FlashQLA where flash_qla is importable (its "backends"): the fla provider
# times fla's own kernels, FlashQLA has a provider of its own.
os.environ.setdefault("FLA_FLASH_QLA", "0")

# sdpa: a softmax-attention layer (layer cases); permute: mom_ops on a permuted copy (the plan conv case);
# flash_qla: FlashQLA's TileLang scan (gdn cases, K = V = 128; needs tilelang, z3-solver and flash_qla: csrc/gdn/NOTES.md)
PROVIDERS = ("mom_ops", "triton_ref", "naive", "fla", "flash_qla", "sdpa", "permute")


@dataclass
class Bench:
    fn: Callable[[], object]
    nbytes: int | None
    graph: bool = False  # time CUDA-graph replays (launch-bound ops whose use is graph-captured)


@dataclass
class Case:
    op: str
    name: str
    modes: tuple[str, ...]
    build: Callable[[str, str], Bench | None]


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def has_cuda_kernel(op: str) -> bool:
    """Whether op runs mom_ops' own CUDA kernel here (not a Triton fallback: mom_ops/_other_gpus.py)."""
    from mom_ops._other_gpus import kernels_run_on

    return (torch.cuda.is_available() and kernels_run_on(torch.device("cuda"))
            and torch._C._dispatch_has_kernel_for_dispatch_key(f"mom_ops::{op}", "CUDA"))


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def triton_ref_fn(module: str, name: str):
    """A function of triton_ref.<module>, or None while that family has no Triton reference yet."""
    if not has_module(f"triton_ref.{module}"):
        return None
    return getattr(importlib.import_module(f"triton_ref.{module}"), name, None)


# ---------------------------------------------------------------- routing


def _route_case(tokens, memories, topk, batch):
    def build(provider, mode):
        logits = torch.randn(tokens, memories, device="cuda", dtype=torch.bfloat16)
        plan = mom_ops.route(logits, topk, batch_size=batch)
        out_bytes = nbytes(plan.weights, plan.memory_ids, plan.dst_row, plan.src_pair, plan.cu_seqlens,
                           plan.chunk_indices)
        if provider == "mom_ops" and has_cuda_kernel("route"):
            return Bench(lambda: mom_ops.route(logits, topk, batch_size=batch), nbytes(logits) + out_bytes, graph=True)
        if provider == "triton_ref" and (fn := triton_ref_fn("routing", "route")) is not None:
            return Bench(lambda: fn(logits, topk, batch_size=batch), nbytes(logits) + out_bytes, graph=True)
        if provider == "naive":  # the torch-op chain fla uses: softmax, topk, renormalise, sort, bincount
            seq = torch.arange(tokens, device="cuda") // (tokens // batch)

            def naive():
                w, ids = torch.softmax(logits.float(), -1).topk(topk, -1)
                w = w / w.sum(-1, keepdim=True)
                seg = (ids * batch + seq[:, None]).flatten()
                order = torch.sort(seg, stable=True).indices
                counts = torch.bincount(seg, minlength=memories * batch)
                return w, order, torch.cumsum(counts, 0)

            return Bench(naive, nbytes(logits) + out_bytes)
        return None

    return Case("route", f"route_T{tokens}_M{memories}_k{topk}_B{batch}", ("fwd",), build)


def _permute_case(tokens, dim, topk, inverse):
    def build(provider, mode):
        plan = mom_ops.route(torch.randn(tokens, 4, device="cuda"), topk, batch_size=1)
        x = torch.randn(tokens, dim, device="cuda", dtype=torch.bfloat16)
        y = torch.randn(tokens * topk, dim, device="cuda", dtype=torch.bfloat16)
        moved = nbytes(x) + nbytes(y) + nbytes(plan.src_pair if not inverse else plan.dst_row)
        if inverse:
            moved += nbytes(plan.weights)
        op = "unpermute" if inverse else "permute"
        if provider == "mom_ops" and has_cuda_kernel(op):
            if inverse:
                return Bench(lambda: mom_ops.unpermute(y, plan, plan.weights), moved)
            return Bench(lambda: mom_ops.permute(x, plan), moved)
        if provider == "triton_ref" and (fn := triton_ref_fn("routing", op)) is not None:
            if inverse:
                return Bench(lambda: fn(y, plan, plan.weights), moved)
            return Bench(lambda: fn(x, plan), moved)
        if provider == "naive":
            rows = plan.dst_row.long()
            tok = (plan.src_pair.long() // topk).clamp_min(0)
            if inverse:
                return Bench(lambda: (y[rows].float() * plan.weights[..., None]).sum(1).to(y.dtype), moved)
            return Bench(lambda: x.index_select(0, tok), moved)
        return None

    name = "unpermute" if inverse else "permute"
    return Case(name, f"{name}_T{tokens}_D{dim}_k{topk}", ("fwd",), build)


# ---------------------------------------------------------------- conv


def _conv_case(rows, channels, width, segments):
    """The layer's short conv on one routed stream: bf16 [rows, channels], `segments` random segments."""
    def build(provider, mode):
        from mom_ops.reference import segment_conv_torch

        gen = torch.Generator().manual_seed(0)
        cuts = torch.randint(0, rows + 1, (segments - 1,), generator=gen).sort().values
        cu = torch.cat([torch.tensor([0]), cuts, torch.tensor([rows])]).to("cuda", torch.int32)
        x = torch.randn(rows, channels, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(channels, width, device="cuda", dtype=torch.bfloat16) / width**0.5
        dy = torch.randn_like(x)
        moved = (2 if mode == "fwd" else 3) * nbytes(x)  # fwd: x in, y out; bwd: dy and x in, dx out
        if provider == "mom_ops" and has_cuda_kernel("segment_conv_fwd") and has_cuda_kernel("segment_conv_bwd"):
            if mode == "fwd":
                return Bench(lambda: torch.ops.mom_ops.segment_conv_fwd(x, w, cu, None, True), moved, graph=True)
            return Bench(lambda: torch.ops.mom_ops.segment_conv_bwd(dy, x, w, cu, None, True), moved, graph=True)
        if provider == "triton_ref" and (fwd := triton_ref_fn("conv", "segment_conv")) is not None:
            if mode == "fwd":
                return Bench(lambda: fwd(x, w, cu), moved, graph=True)
            bwd = triton_ref_fn("conv", "segment_conv_backward")
            return Bench(lambda: bwd(dy, x, w, cu), moved, graph=True)
        if provider == "naive":
            if mode == "fwd":
                return Bench(lambda: segment_conv_torch(x, w, cu), moved)
            xg = x.clone().requires_grad_(True)
            wg = w.clone().requires_grad_(True)
            out = segment_conv_torch(xg, wg, cu)
            return Bench(lambda: torch.autograd.grad(out, (xg, wg), dy, retain_graph=True), moved)
        return None

    return Case("segment_conv", f"segment_conv_R{rows}_C{channels}_W{width}", ("fwd", "bwd"), build)


def _conv_plan_case(tokens, channels, width, memories, topk, batch):
    """The layer's q conv: bf16 token rows [tokens, channels] read through a routing plan's stream (top-k of M, B
    sequences). Providers: mom_ops (segment_conv with the plan: the rows gathered inside the conv) and permute (the
    permuted copy, then the conv on it: what the layer does without the fused path)."""
    def build(provider, mode):
        if not (has_cuda_kernel("segment_conv_fwd") and has_cuda_kernel("segment_conv_bwd")):
            return None
        gen = torch.Generator().manual_seed(0)
        plan = mom_ops.route(torch.randn(tokens, memories, generator=gen).cuda(), topk, batch_size=batch)
        x = torch.randn(tokens, channels, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(channels, width, device="cuda", dtype=torch.bfloat16) / width**0.5
        dy = torch.randn(plan.num_rows, channels, device="cuda", dtype=torch.bfloat16)
        maps, cu = (plan.dst_row, plan.src_pair), plan.cu_seqlens
        rows = plan.num_rows * channels * 2  # one [R, C] bf16 tensor
        moved = 2 * rows if mode == "fwd" else 3 * rows  # as if the stream rows were read once (fwd: in, out)
        if provider == "mom_ops":
            if mode == "fwd":
                return Bench(lambda: torch.ops.mom_ops.segment_conv_fwd(x, w, cu, None, True, *maps), moved, graph=True)

            def bwd():
                gx, gw, _ = torch.ops.mom_ops.segment_conv_bwd(dy, x, w, cu, None, True, *maps)
                return torch.ops.mom_ops.unpermute(gx, *maps, None), gw
            return Bench(bwd, moved, graph=True)
        if provider == "permute":
            if mode == "fwd":
                return Bench(lambda: torch.ops.mom_ops.segment_conv_fwd(torch.ops.mom_ops.permute(x, *maps), w, cu,
                                                                        None, True), moved, graph=True)
            x_stream = torch.ops.mom_ops.permute(x, *maps)  # the layer keeps the permuted copy for the backward

            def bwd_permuted():
                gx, gw, _ = torch.ops.mom_ops.segment_conv_bwd(dy, x_stream, w, cu, None, True)
                return torch.ops.mom_ops.unpermute(gx, *maps, None), gw
            return Bench(bwd_permuted, moved, graph=True)
        return None

    return Case("segment_conv", f"segment_conv_plan_N{tokens}_C{channels}_W{width}_k{topk}", ("fwd", "bwd"), build)


# ---------------------------------------------------------------- gating


def _gating_case(rows, heads, row_width):
    """The layer's gates: b and a as column slices of bf16 projection rows [rows, row_width], bf16 parameters."""
    def build(provider, mode):
        proj = torch.randn(rows, row_width, device="cuda", dtype=torch.bfloat16)
        b, a = proj[:, -2 * heads:-heads], proj[:, -heads:]
        A_log = torch.rand(heads, device="cuda").mul(2.7).to(torch.bfloat16)
        dt_bias = torch.randn(heads, device="cuda").sub(4).to(torch.bfloat16)
        dg = torch.randn(rows, heads, device="cuda")
        dbeta = torch.randn(rows, heads, device="cuda", dtype=torch.bfloat16)
        # fwd: a, b in, g (fp32), beta out; bwd: a, b, dg, dbeta in, grad_a, grad_b out
        moved = rows * heads * (2 + 2 + 4 + 2) if mode == "fwd" else rows * heads * (2 + 2 + 4 + 2 + 2 + 2)
        if provider == "mom_ops" and has_cuda_kernel("gdn_gating_fwd") and has_cuda_kernel("gdn_gating_bwd"):
            if mode == "fwd":
                return Bench(lambda: torch.ops.mom_ops.gdn_gating_fwd(a, b, A_log, dt_bias), moved, graph=True)
            grad_a, grad_b = torch.empty_like(dbeta), torch.empty_like(dbeta)
            return Bench(lambda: torch.ops.mom_ops.gdn_gating_bwd(dg, dbeta, a, b, A_log, dt_bias, grad_a, grad_b),
                         moved, graph=True)
        if provider == "triton_ref" and (fn := triton_ref_fn("gating", "gdn_gating")) is not None:
            if mode == "fwd":
                return Bench(lambda: fn(a, b, A_log, dt_bias), moved, graph=True)
            bwd = triton_ref_fn("gating", "gdn_gating_backward")
            return Bench(lambda: bwd(dg, dbeta, a, b, A_log, dt_bias), moved, graph=True)
        if provider == "naive":  # the torch expression the layer used before the op (autograd for bwd)
            def naive(a, b, A_log, dt_bias):
                g = -A_log.float().exp() * F.softplus(a.float() + dt_bias.float())
                return g, torch.sigmoid(b.float()).to(b.dtype)

            if mode == "fwd":
                return Bench(lambda: naive(a, b, A_log, dt_bias), moved)
            leaves = [t.detach().clone().requires_grad_(True) for t in (a, b, A_log, dt_bias)]
            outs = naive(*leaves)
            return Bench(lambda: torch.autograd.grad(outs, leaves, (dg, dbeta), retain_graph=True), moved)
        return None

    return Case("gdn_gating", f"gdn_gating_R{rows}_H{heads}", ("fwd", "bwd"), build)


# ---------------------------------------------------------------- readout


def _memory_mix_case(tokens, heads, dim_v, topk, with_shared=True):
    """with_shared=False: MoMAttention's stream, whose shared memory is one of the topk rows (pair 0), not an
    input of its own."""
    def build(provider, mode):
        plan = mom_ops.route(torch.randn(tokens, 4, device="cuda"), topk, batch_size=1)
        bf = dict(device="cuda", dtype=torch.bfloat16)
        o_routed = torch.randn(tokens * topk, heads, dim_v, **bf)
        shared = torch.randn(tokens, heads, dim_v, **bf) if with_shared else None
        gate = torch.randn(tokens, heads, dim_v, **bf)
        norm_w = torch.ones(dim_v, device="cuda")
        weights = plan.weights
        inputs = [t for t in (o_routed, shared, gate, norm_w, weights, plan.dst_row) if t is not None]
        if mode == "bwd":
            for t in (o_routed, shared, gate, norm_w):
                if t is not None:
                    t.requires_grad_(True)
            weights = weights.clone().requires_grad_(True)
        # + the output (the size of gate); the bwd reads dy and writes a gradient of every input but dst_row
        fwd_bytes = nbytes(*inputs) + nbytes(gate)
        bwd_bytes = nbytes(*inputs) + nbytes(gate) + nbytes(*inputs[:-1]) + nbytes(plan.src_pair)

        def kernel_args():  # dy and the inputs without their graph: the backward kernels' own arguments
            return torch.randn(tokens, heads, dim_v, **bf), *(None if t is None else t.detach()
                                                              for t in (o_routed, weights, shared, norm_w, gate))

        def runner(fn, graph=False):
            if mode == "fwd":
                return Bench(lambda: fn(o_routed, plan, weights, shared, norm_w, gate), fwd_bytes, graph=graph)
            out = fn(o_routed, plan, weights, shared, norm_w, gate)
            dy = torch.randn_like(out)
            leaves = tuple(t for t in (o_routed, weights, shared, norm_w, gate) if t is not None)
            return Bench(lambda: torch.autograd.grad(out, leaves, dy, retain_graph=True), bwd_bytes)

        if provider == "mom_ops" and has_cuda_kernel("memory_mix_fwd") and has_cuda_kernel("memory_mix_bwd"):
            # CUDA-graph replays of the ops (the bar is the kernels' bandwidth): launched one by one through
            # autograd, the bwd's CPU path outran its kernels (142-229 us between machines on the same code).
            if mode == "fwd":
                return runner(mom_ops.memory_mix, graph=True)
            dy, o, w, sh, nw, gt = kernel_args()
            args = (dy, o, plan.dst_row, plan.src_pair, w, sh, nw, gt, 1e-6)
            return Bench(lambda: torch.ops.mom_ops.memory_mix_bwd(*args), bwd_bytes, graph=True)
        if provider == "triton_ref" and (fn := triton_ref_fn("readout", "memory_mix")) is not None:
            if mode == "fwd":  # replayed like mom_ops' (the same launch overhead on both sides: none)
                return runner(fn, graph=True)
            bwd = triton_ref_fn("readout", "memory_mix_backward")
            dy, o, w, sh, nw, gt = kernel_args()
            args = (dy, o, w, sh, nw, gt, plan, 1e-6)
            return Bench(lambda: bwd(*args), bwd_bytes, graph=True)
        if provider == "naive":
            def naive(o_routed, plan, weights, shared, norm_w, gate):
                rows = plan.dst_row.long()
                o = (o_routed[rows].float() * weights[..., None, None]).sum(1)
                o = o if shared is None else o + shared.float()
                o = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + 1e-6) * norm_w * F.silu(gate.float())
                return o.to(o_routed.dtype)

            return runner(naive)
        return None

    name = f"memory_mix_T{tokens}_H{heads}_V{dim_v}_k{topk}" + ("" if with_shared else "_stream")
    return Case("memory_mix", name, ("fwd", "bwd"), build)


# ---------------------------------------------------------------- gdn scan


def _gdn_inputs(T, H, D, n, decay_scale=1.0):  # a name of this module: scripts/gdn_time.py swaps it for fixed lengths
    return gdn_inputs(T, H, D, n, decay_scale)


def _gdn_case(T, H, D, n, decay_scale=1.0):
    def build(provider, mode):
        inp, cu = _gdn_inputs(T, H, D, n, decay_scale)
        if provider == "mom_ops" and has_cuda_kernel("chunk_gated_delta_rule_fwd"):
            fn = mom_ops.chunk_gated_delta_rule
            if mode == "fwdbwd" and not has_cuda_kernel("chunk_gated_delta_rule_bwd"):
                return None
        elif provider == "triton_ref" and mode == "fwd" and (fn := triton_ref_fn("gdn", "chunk_gated_delta_rule")):
            pass  # forward only
        elif provider == "fla" and has_module("fla"):
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fn
        elif provider == "flash_qla" and has_module("flash_qla"):
            from flash_qla import chunk_gated_delta_rule as fn  # its automatic intra-sequence split left on
        else:
            return None
        out_bytes = nbytes(inp["v"])  # o has v's shape and dtype
        if mode == "fwd":
            return Bench(lambda: fn(**inp, cu_seqlens=cu, use_qk_l2norm_in_kernel=True), nbytes(*inp.values()) + out_bytes)
        leaves = {key: t.detach().clone().requires_grad_(True) for key, t in inp.items()}
        do = torch.randn_like(inp["v"])

        def fwdbwd():
            o, _ = fn(**leaves, cu_seqlens=cu, use_qk_l2norm_in_kernel=True)
            return torch.autograd.grad(o, tuple(leaves.values()), do)

        # fwd + bwd at the least: read the inputs and do, write o and a gradient per input.
        return Bench(fwdbwd, 2 * nbytes(*inp.values()) + 2 * out_bytes)

    name = f"gdn_T{T}_H{H}_D{D}_n{n}" + ("" if decay_scale == 1.0 else "_slow")
    return Case("chunk_gated_delta_rule", name, ("fwd", "fwdbwd"), build)


# ---------------------------------------------------------------- decode


def _decode_case(N, H, D):
    def build(provider, mode):
        bf = dict(device="cuda", dtype=torch.bfloat16)
        q, k, v = torch.randn(N, H, D, **bf), torch.randn(N, 1, H, D, **bf), torch.randn(N, 1, H, D, **bf)
        g = F.logsigmoid(torch.randn(N, 1, H, device="cuda"))
        beta = torch.rand(N, 1, H, device="cuda")
        pool = torch.randn(N, H, D, D, device="cuda") * 0.1
        state_bytes = 2 * nbytes(pool)  # the bar counts state bytes read + written
        if provider == "mom_ops" and has_cuda_kernel("mom_decode_step"):
            slots = torch.arange(N, device="cuda", dtype=torch.int32)[:, None]
            w = torch.ones(N, 1, device="cuda")
            return Bench(lambda: mom_ops.mom_decode_step(q, k, v, g, beta, w, slots, pool,
                                                         use_qk_l2norm_in_kernel=True), state_bytes)
        if provider == "triton_ref" and (fn := triton_ref_fn("decode", "mom_decode_step")) is not None:
            slots = torch.arange(N, device="cuda", dtype=torch.int32)[:, None]
            w = torch.ones(N, 1, device="cuda")
            return Bench(lambda: fn(q, k, v, g, beta, w, slots, pool, use_qk_l2norm_in_kernel=True), state_bytes)
        if provider == "fla" and has_module("fla"):
            from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule as fn

            # N sequences of one token: [B=N, T=1, H, D]
            # (beta by name: fla 0.6.0's fifth parameter is gk, which beta filled before, read out of its bounds)
            return Bench(lambda: fn(q[:, None], k, v, g, beta=beta, initial_state=pool, output_final_state=True,
                                    use_qk_l2norm_in_kernel=True), state_bytes)
        return None

    return Case("mom_decode_step", f"decode_N{N}_H{H}_D{D}", ("step",), build)


def _decode_graph_case(B, H, D, M, topk):
    """A whole MoM decode step for B sequences as one CUDA-graph replay: route the B router rows, build the
    slots (topk routed memories + the shared one), update the pooled states and mix (mom_decode_step)."""

    def build(provider, mode):
        if provider != "mom_ops" or not has_cuda_kernel("mom_decode_step"):
            return None
        J, bf = topk + 1, dict(device="cuda", dtype=torch.bfloat16)
        logits = torch.randn(B, M, device="cuda")
        q, k, v = (torch.randn(B, J, H, D, **bf) for _ in range(3))
        g = F.logsigmoid(torch.randn(B, J, H, device="cuda"))
        beta = torch.rand(B, J, H, device="cuda")
        pool = torch.randn(B * M + B, H, D, D, device="cuda") * 0.1  # routed rows b * M + m, then shared rows
        seq = torch.arange(B, device="cuda")[:, None]
        ones = torch.ones(B, 1, device="cuda")

        def step():
            plan = mom_ops.route(logits, topk, batch_size=B)
            slots = torch.cat([seq * M + plan.memory_ids, B * M + seq], 1).int()
            return mom_ops.mom_decode_step(q, k, v, g, beta, torch.cat([plan.weights, ones], 1), slots, pool,
                                           use_qk_l2norm_in_kernel=True)

        state_bytes = 2 * B * J * H * D * D * 4  # each touched fp32 state read and written once
        return Bench(step, state_bytes, graph=True)

    return Case("mom_decode_step", f"decode_graph_B{B}_H{H}_D{D}_M{M}_k{topk}", ("step",), build)


# ---------------------------------------------------------------- layer


class _SdpaLayer(torch.nn.Module):
    """The Transformer alternative at the same hidden size: causal softmax attention (128-dim heads, PyTorch's
    scaled_dot_product_attention), returning (out,) like the MoM layers."""

    def __init__(self, hidden: int):
        super().__init__()
        from bench.mqar import Attention

        self.attention = Attention(hidden, hidden // 128)

    def forward(self, x):
        return (self.attention(x),)


def _layer_case(batch, seqlen, hidden, heads, head_dim, memories, topk, name):
    def build(provider, mode):
        if provider == "mom_ops":
            if not (has_cuda_kernel("chunk_gated_delta_rule_fwd") and has_cuda_kernel("chunk_gated_delta_rule_bwd")):
                return None
            from mom_ops.nn import MoMAttention

            layer = MoMAttention(hidden, heads, head_dim, num_memories=memories, topk=topk, shared_memory=True)
        elif provider == "fla" and has_module("fla"):
            from fla.layers.mom import MomAttention

            layer = MomAttention(hidden_size=hidden, head_dim=head_dim, num_heads=heads, expand_v=1,
                                 num_memories=memories, topk=topk, shared_mem=True, norm_eps=1e-6)
        elif provider == "sdpa":
            layer = _SdpaLayer(hidden)
        else:
            return None
        layer = layer.to(device="cuda", dtype=torch.bfloat16)
        x = torch.randn(batch, seqlen, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=mode == "fwdbwd")
        if mode == "fwd":
            def fwd():
                with torch.no_grad():
                    return layer(x)[0]

            return Bench(fwd, None)
        dy = torch.randn(batch, seqlen, hidden, device="cuda", dtype=torch.bfloat16)
        leaves = [x, *(p for p in layer.parameters() if p.requires_grad)]

        def fwdbwd():  # fresh gradients each call (a training step after zero_grad(set_to_none=True)): no accumulation
            out = layer(x)[0]
            return torch.autograd.grad(out, leaves, dy)

        return Bench(fwdbwd, None)

    return Case("layer", name, ("fwd", "fwdbwd"), build)


CASES: list[Case] = [
    _route_case(16384, 4, 2, 8),
    _permute_case(32768, 2048, 2, inverse=False),
    _permute_case(32768, 2048, 2, inverse=True),
    _memory_mix_case(16384, 4, 256, 2),
    _memory_mix_case(16384, 4, 256, 3, with_shared=False),  # the layer's T2K stream: shared memory + top-2
    _gating_case(49152, 4, 2056),
    _conv_case(32768, 1024, 4, 32),
    _conv_plan_case(16384, 1024, 4, 5, 3, 8),
    *(_gdn_case(*shape) for shape in GDN_CASES),
    *(_gdn_case(*shape) for shape in GDN_SLOW_CASES),
    _decode_case(256, 16, 128),
    _decode_case(768, 4, 256),
    _decode_graph_case(64, 4, 256, 4, 2),
    _layer_case(8, 2048, 1024, 4, 256, 4, 2, "layer_340M_B8_T2048"),
    _layer_case(2, 8192, 1024, 4, 256, 4, 2, "layer_340M_B2_T8192"),
    _layer_case(1, 32768, 1024, 4, 256, 4, 2, "layer_340M_B1_T32768"),
]
