"""Routing: top-k router, memory-major permutation plan, permute / unpermute (with autograd)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from mom_ops._autograd import below_autograd, function_of, once_differentiable

CHUNK_SIZE = 64


@dataclass
class RoutingPlan:
    """Where every (token, slot) pair goes in the packed memory-major stream. All tensors live on the device
    of the logits and have static shapes (no host sync to build or use them).

    N tokens, M memories, k = topk, B sequences, R = N * k packed rows, S = M * B segments (s = m * B + b).
      weights        [N, k] fp32   renormalised top-k router weights (0 for masked tokens; fp64 for fp64 logits)
      memory_ids     [N, k] int32  chosen memories, by decreasing weight (-1 for masked tokens)
      dst_row        [N, k] int32  packed row of each pair (-1 for masked tokens)
      src_pair       [R]    int32  pair n * k + j of each packed row (-1 for rows past the last segment)
      cu_seqlens     [S+1]  int32  segment boundaries in the packed stream; cu_seqlens[-1] = routed rows
      chunk_indices  [R // chunk_size + S, 2] int32  (segment, chunk) of every chunk, padded with -1
    """

    weights: torch.Tensor
    memory_ids: torch.Tensor
    dst_row: torch.Tensor
    src_pair: torch.Tensor
    cu_seqlens: torch.Tensor
    chunk_indices: torch.Tensor
    num_memories: int
    batch_size: int

    @property
    def topk(self) -> int:
        return self.dst_row.shape[1]

    @property
    def num_tokens(self) -> int:
        return self.dst_row.shape[0]

    @property
    def num_rows(self) -> int:
        return self.src_pair.shape[0]


def check_cu_seqlens_shape(cu_seqlens: torch.Tensor) -> None:
    """cu_seqlens must be [B+1] with B >= 1 (its values are checked by the ops)."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise ValueError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(f"cu_seqlens must be 1-D [B+1] with B >= 1, got shape {tuple(cu_seqlens.shape)}")


def route(
    router_logits: torch.Tensor,
    topk: int,
    *,
    batch_size: int | None = None,
    cu_seqlens: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> RoutingPlan:
    """Route tokens to their top-k memories and build the packed memory-major plan.

    router_logits: [B, T, M] (padded batch), [1, N, M] or [N, M] (packed, with cu_seqlens [B+1]).
    mask: optional bool of router_logits' shape without M ([B, T], [1, N] or [N]); False tokens route nowhere
    (attention padding).
    Memories are the k largest logits (ties to the lower index), by decreasing logit; weights are the softmax
    renormalised over them (= softmax of the kept logits), computed in fp64 and rounded once to fp32 (within
    1 ulp of the exact value); differentiable w.r.t. the logits (fp64 weights for fp64 logits on CPU). NaN
    logits of routed tokens raise ValueError on CPU; on CUDA they give NaN weights (a sync-free check is
    impossible), or a ValueError when MOM_OPS_CHECK_NAN=1. Masked tokens' logits are not read.
    """
    if router_logits.dim() not in (2, 3) or router_logits.shape[-1] == 0:
        raise ValueError(f"router_logits must be [B, T, M] or [N, M] with M >= 1, got shape "
                         f"{tuple(router_logits.shape)}")
    if mask is not None and mask.dtype != torch.bool:
        raise ValueError(f"mask must be torch.bool (True = token), got {mask.dtype}")
    if mask is not None and mask.shape != router_logits.shape[:-1]:
        raise ValueError(f"mask must have shape {tuple(router_logits.shape[:-1])} (router_logits without M), "
                         f"got {tuple(mask.shape)}")
    if router_logits.dim() == 3:
        if cu_seqlens is not None and router_logits.shape[0] != 1:
            raise ValueError(f"router_logits must have batch 1 with cu_seqlens, got {router_logits.shape[0]}")
        if cu_seqlens is None and batch_size is None:
            batch_size = router_logits.shape[0]
        elif cu_seqlens is None and batch_size != router_logits.shape[0]:
            raise ValueError(f"batch_size={batch_size} disagrees with router_logits [B, T, M] (B = "
                             f"{router_logits.shape[0]})")
    if cu_seqlens is not None:
        check_cu_seqlens_shape(cu_seqlens)
        if batch_size is not None and batch_size != cu_seqlens.shape[0] - 1:
            raise ValueError(f"batch_size={batch_size} disagrees with cu_seqlens ({cu_seqlens.shape[0] - 1} sequences)")
        batch_size = cu_seqlens.shape[0] - 1
    if batch_size is None:
        raise ValueError("route needs batch_size or cu_seqlens for [N, M] router_logits")
    logits = router_logits.reshape(-1, router_logits.shape[-1])
    if mask is not None:
        mask = mask.reshape(-1)
    if logits.is_cuda and os.environ.get("MOM_OPS_CHECK_NAN") == "1":
        nan_rows = torch.isnan(logits).any(-1)  # (padding tokens route nowhere: their logits may be anything)
        if (nan_rows if mask is None else nan_rows & mask).any():
            raise ValueError("router_logits contains NaN")
    outs = _ROUTE.apply(logits, topk, batch_size, cu_seqlens, mask, chunk_size)
    return RoutingPlan(*outs, num_memories=logits.shape[-1], batch_size=batch_size)


def permute(x: torch.Tensor, plan: RoutingPlan) -> torch.Tensor:
    """Gather token rows into the packed stream: x [N, ...] -> y [R, ...], y[r] = x[src_pair[r] // k]."""
    if x.dim() == 0 or x.shape[0] != plan.num_tokens:
        raise ValueError(f"x must have {plan.num_tokens} rows (the plan's tokens), got shape {tuple(x.shape)}")
    y = _PERMUTE.apply(x.reshape(x.shape[0], math.prod(x.shape[1:])), plan.dst_row, plan.src_pair)
    return y.view(plan.num_rows, *x.shape[1:])


def unpermute(y: torch.Tensor, plan: RoutingPlan, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Sum the k copies back into token order: y [R, ...] -> x [N, ...], x[n] = sum_j w[n, j] y[dst_row[n, j]].

    weights: optional fp32 [N, k] (e.g. plan.weights); differentiable."""
    if y.dim() == 0 or y.shape[0] != plan.num_rows:
        raise ValueError(f"y must have {plan.num_rows} rows (the plan's packed rows), got shape {tuple(y.shape)}")
    x = _UNPERMUTE.apply(y.reshape(y.shape[0], math.prod(y.shape[1:])), plan.dst_row, plan.src_pair, weights)
    return x.view(plan.num_tokens, *y.shape[1:])


# ---- autograd ----


def _route_setup(ctx, inputs, output):
    ctx.logits_dtype = inputs[0].dtype
    ctx.num_memories = inputs[0].shape[1]
    ctx.save_for_backward(output[0], output[1])


@once_differentiable
def _route_backward(ctx, grad_weights, *_):
    # w = softmax over the kept logits, so dl_i = w_i (dw_i - sum_j w_j dw_j) for kept i, 0 elsewhere: one launch
    weights, memory_ids = ctx.saved_tensors
    grad_logits = None
    if ctx.needs_input_grad[0] and grad_weights is not None:
        grad_logits = torch.ops.mom_ops.route_backward(grad_weights.to(weights.dtype), weights, memory_ids,
                                                       ctx.num_memories, ctx.logits_dtype)
    return grad_logits, None, None, None, None, None


def _permute_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1], inputs[2])


def _permute_backward(ctx, grad_y):
    dst_row, src_pair = ctx.saved_tensors
    return below_autograd(torch.ops.mom_ops.unpermute, grad_y.contiguous(), dst_row, src_pair, None), None, None


def _unpermute_setup(ctx, inputs, output):
    y, dst_row, src_pair, weights = inputs
    ctx.save_for_backward(y, dst_row, src_pair, weights)


@once_differentiable
def _unpermute_backward(ctx, grad_x):
    y, dst_row, src_pair, weights = ctx.saved_tensors
    need_w = weights is not None and ctx.needs_input_grad[3]
    grad_y, grad_w = torch.ops.mom_ops.unpermute_backward(
        grad_x.contiguous(), y, dst_row, src_pair, weights, need_w
    )
    return grad_y, None, None, grad_w if need_w else None


torch.library.register_autograd("mom_ops::route", _route_backward, setup_context=_route_setup)
torch.library.register_autograd("mom_ops::permute", _permute_backward, setup_context=_permute_setup)
torch.library.register_autograd("mom_ops::unpermute", _unpermute_backward, setup_context=_unpermute_setup)
_ROUTE = function_of(torch.ops.mom_ops.route, _route_setup, _route_backward)
_PERMUTE = function_of(torch.ops.mom_ops.permute, _permute_setup, _permute_backward)
_UNPERMUTE = function_of(torch.ops.mom_ops.unpermute, _unpermute_setup, _unpermute_backward)
