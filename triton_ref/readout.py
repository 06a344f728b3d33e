"""Triton reference for memory_mix: one program per (token, head) for the forward and the backward; the small
reductions over heads (d weights) and tokens (d norm_weight) are finished with torch sums."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mom_ops.routing import RoutingPlan


@triton.jit
def _mix_row(o_ptr, dst_row_ptr, w_ptr, shared_ptr, n, h, cols, H, V, K: tl.constexpr, HAS_SHARED: tl.constexpr):
    """o [BLOCK_V] (fp32) = sum_j w[n, j] o_routed[dst_row[n, j], h] + shared[n, h]."""
    cmask = cols < V
    o = tl.zeros(cols.shape, dtype=tl.float32)
    for j in tl.static_range(K):
        r = tl.load(dst_row_ptr + n * K + j)
        w = tl.load(w_ptr + n * K + j)
        x = tl.load(o_ptr + (tl.maximum(r, 0).to(tl.int64) * H + h) * V + cols, mask=cmask & (r >= 0), other=0.0)
        o += tl.where(r >= 0, w, 0.0) * x.to(tl.float32)
    if HAS_SHARED:
        o += tl.load(shared_ptr + (n.to(tl.int64) * H + h) * V + cols, mask=cmask, other=0.0).to(tl.float32)
    return o


@triton.jit
def _mix_fwd_kernel(o_ptr, dst_row_ptr, w_ptr, shared_ptr, nw_ptr, gate_ptr, out_ptr, H, V, eps,
                    K: tl.constexpr, BLOCK_V: tl.constexpr, HAS_SHARED: tl.constexpr, HAS_NORM: tl.constexpr,
                    HAS_GATE: tl.constexpr):
    n, h = tl.program_id(0), tl.program_id(1)
    cols = tl.arange(0, BLOCK_V)
    cmask = cols < V
    o = _mix_row(o_ptr, dst_row_ptr, w_ptr, shared_ptr, n, h, cols, H, V, K, HAS_SHARED)
    base = (n.to(tl.int64) * H + h) * V
    if HAS_NORM:
        rstd = 1.0 / tl.sqrt(tl.sum(o * o, axis=0) / V + eps)
        o = o * rstd * tl.load(nw_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        if HAS_GATE:
            z = tl.load(gate_ptr + base + cols, mask=cmask, other=0.0).to(tl.float32)
            o = o * z * tl.sigmoid(z)
    tl.store(out_ptr + base + cols, o.to(out_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _mix_bwd_kernel(dy_ptr, o_ptr, dst_row_ptr, w_ptr, shared_ptr, nw_ptr, gate_ptr, eps, H, V,
                    d_o_ptr, d_w_ptr, d_shared_ptr, d_nw_ptr, d_gate_ptr,
                    K: tl.constexpr, BLOCK_V: tl.constexpr, HAS_SHARED: tl.constexpr, HAS_NORM: tl.constexpr,
                    HAS_GATE: tl.constexpr):
    n, h = tl.program_id(0), tl.program_id(1)
    cols = tl.arange(0, BLOCK_V)
    cmask = cols < V
    base = (n.to(tl.int64) * H + h) * V
    o = _mix_row(o_ptr, dst_row_ptr, w_ptr, shared_ptr, n, h, cols, H, V, K, HAS_SHARED)
    d = tl.load(dy_ptr + base + cols, mask=cmask, other=0.0).to(tl.float32)
    if HAS_NORM:
        rstd = 1.0 / tl.sqrt(tl.sum(o * o, axis=0) / V + eps)
        xhat = o * rstd
        nw = tl.load(nw_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        act = tl.full(cols.shape, 1.0, dtype=tl.float32)
        if HAS_GATE:
            z = tl.load(gate_ptr + base + cols, mask=cmask, other=0.0).to(tl.float32)
            s = tl.sigmoid(z)
            act = z * s
            tl.store(d_gate_ptr + base + cols, (d * xhat * nw * s * (1 + z * (1 - s))).to(d_gate_ptr.dtype.element_ty),
                     mask=cmask)
        tl.store(d_nw_ptr + base + cols, d * xhat * act, mask=cmask)  # per (token, head); summed by the caller
        dxhat = d * nw * act
        d = rstd * (dxhat - xhat * (tl.sum(dxhat * xhat, axis=0) / V))
    if HAS_SHARED:
        tl.store(d_shared_ptr + base + cols, d.to(d_shared_ptr.dtype.element_ty), mask=cmask)
    for j in tl.static_range(K):
        r = tl.load(dst_row_ptr + n * K + j)
        w = tl.load(w_ptr + n * K + j)
        rbase = (tl.maximum(r, 0).to(tl.int64) * H + h) * V
        x = tl.load(o_ptr + rbase + cols, mask=cmask & (r >= 0), other=0.0).to(tl.float32)
        tl.store(d_o_ptr + rbase + cols, (w * d).to(d_o_ptr.dtype.element_ty), mask=cmask & (r >= 0))
        tl.store(d_w_ptr + (n * K + j) * H + h, tl.where(r >= 0, tl.sum(d * x, axis=0), 0.0))


def _launch_args(o_routed, plan, weights, shared, norm_weight, gate):
    N, H, V = plan.num_tokens, o_routed.shape[1], o_routed.shape[2]
    flags = dict(K=plan.topk, BLOCK_V=triton.next_power_of_2(V), HAS_SHARED=shared is not None,
                 HAS_NORM=norm_weight is not None, HAS_GATE=gate is not None)
    dummy = o_routed
    tensors = [shared if shared is not None else dummy, norm_weight if norm_weight is not None else dummy,
               gate if gate is not None else dummy]
    return (N, H), H, V, tensors, flags


class _MemoryMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, o_routed, weights, shared, norm_weight, gate, plan, eps):
        # the kernels index every tensor densely (shared and gate may come as column slices of one projection)
        o_routed, weights, shared, norm_weight, gate = (
            t.contiguous() if t is not None else None for t in (o_routed, weights, shared, norm_weight, gate))
        grid, H, V, (sh, nw, gt), flags = _launch_args(o_routed, plan, weights, shared, norm_weight, gate)
        out = torch.empty(plan.num_tokens, H, V, device=o_routed.device, dtype=o_routed.dtype)
        if plan.num_tokens > 0 and V > 0:
            _mix_fwd_kernel[grid](o_routed, plan.dst_row, weights, sh, nw, gt, out, H, V, eps, **flags)
        ctx.save_for_backward(o_routed, weights, shared, norm_weight, gate)
        ctx.plan, ctx.eps = plan, eps
        return out

    @staticmethod
    def backward(ctx, dy):
        o_routed, weights, shared, norm_weight, gate = ctx.saved_tensors
        return *memory_mix_backward(dy, o_routed, weights, shared, norm_weight, gate, ctx.plan, ctx.eps), None, None


def memory_mix_backward(dy, o_routed, weights, shared, norm_weight, gate, plan, eps):
    """Gradients (o_routed, weights [N, k] fp32, shared, norm_weight, gate; None for absent inputs) of memory_mix,
    from contiguous inputs."""
    grid, H, V, (sh, nw, gt), flags = _launch_args(o_routed, plan, weights, shared, norm_weight, gate)
    N, K = plan.num_tokens, plan.topk
    d_o = torch.zeros_like(o_routed)  # rows holding no pair stay 0
    d_w = torch.zeros(N, K, H, device=dy.device, dtype=torch.float32)
    d_shared = torch.empty_like(shared) if shared is not None else None
    d_nw = torch.empty(N, H, V, device=dy.device, dtype=torch.float32) if norm_weight is not None else None
    d_gate = torch.empty_like(gate) if gate is not None else None
    if N > 0 and V > 0:
        _mix_bwd_kernel[grid](dy.contiguous(), o_routed, plan.dst_row, weights, sh, nw, gt, eps, H, V,
                              d_o, d_w, d_shared if d_shared is not None else d_o,
                              d_nw if d_nw is not None else d_o, d_gate if d_gate is not None else d_o, **flags)
    d_norm = d_nw.sum((0, 1)).to(norm_weight.dtype) if norm_weight is not None else None
    return d_o, d_w.sum(-1), d_shared, d_norm, d_gate


def memory_mix(o_routed: torch.Tensor, plan: RoutingPlan, weights: torch.Tensor | None = None,
               shared: torch.Tensor | None = None, norm_weight: torch.Tensor | None = None,
               gate: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Same contract as mom_ops.memory_mix (o_routed [R, H, V] -> [N, H, V]), differentiable."""
    weights = plan.weights if weights is None else weights
    return _MemoryMix.apply(o_routed, weights.contiguous(), shared, norm_weight, gate, plan, eps)
