"""Triton reference for routing: router kernel, permute and unpermute kernels; the plan's counting sort in
sync-free torch ops (a cumsum over the one-hot choices). Same outputs as mom_ops.route / permute / unpermute.
Runs under TRITON_INTERPRET=1 on the CPU (fp32/fp16 only there: bf16 is wrong in the interpreter)."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from mom_ops.routing import RoutingPlan


@triton.jit
def _router_kernel(logits_ptr, mask_ptr, weights_ptr, ids_ptr, N, M: tl.constexpr, K: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_MASK: tl.constexpr):
    """The k largest logits (ties to the lower index); weights = softmax over them in fp64 (see mom_ops.route)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_M)
    in_row = rows < N
    valid = in_row[:, None] & (cols[None, :] < M)
    # int64 row offsets: route allows N * topk < 2^31 rows, so N * M (M > topk) may pass 2^31
    x = tl.load(logits_ptr + rows.to(tl.int64)[:, None] * M + cols[None, :], mask=valid, other=0.0).to(tl.float64)
    NEG = -1.0e300  # below any logit, -inf included (a finite stand-in keeps argmax well defined)
    x = tl.where(valid, tl.where(x == float("-inf"), -1.0e299, x), NEG)
    keep = in_row
    if HAS_MASK:
        keep = tl.load(mask_ptr + rows, mask=in_row, other=0) != 0
    top = tl.max(x, axis=1)  # the first pick's logit
    top_is_pinf = top == float("inf")
    top_is_ninf = top == -1.0e299
    # Two passes of the same selection: the first sums exp(l - top) of the kept logits, the second writes
    # e / sum (no read-back of stored values, which other threads of the program may have written).
    total = tl.zeros([BLOCK_N], dtype=tl.float64)
    y = x
    for j in tl.static_range(K):
        best = tl.argmax(y, axis=1, tie_break_left=True)
        l = tl.max(y, axis=1)
        total += tl.where(top_is_pinf, (l == top).to(tl.float64), tl.where(top_is_ninf, 1.0, tl.exp(l - top)))
        y = tl.where(cols[None, :] == best[:, None], NEG * 10, y)
    y = x
    for j in tl.static_range(K):
        best = tl.argmax(y, axis=1, tie_break_left=True)
        l = tl.max(y, axis=1)
        e = tl.where(top_is_pinf, (l == top).to(tl.float64), tl.where(top_is_ninf, 1.0, tl.exp(l - top)))
        tl.store(ids_ptr + rows * K + j, tl.where(keep, best, -1), mask=in_row)
        tl.store(weights_ptr + rows * K + j, tl.where(keep, e / total, 0.0).to(tl.float32), mask=in_row)
        y = tl.where(cols[None, :] == best[:, None], NEG * 10, y)


def route(router_logits: torch.Tensor, topk: int, *, batch_size: int | None = None,
          cu_seqlens: torch.Tensor | None = None, mask: torch.Tensor | None = None, chunk_size: int = 64) -> RoutingPlan:
    logits = router_logits.reshape(-1, router_logits.shape[-1]).contiguous()
    N, M = logits.shape
    B = cu_seqlens.shape[0] - 1 if cu_seqlens is not None else (batch_size or router_logits.shape[0])
    dev = logits.device
    weights = torch.empty(N, topk, device=dev, dtype=torch.float32)
    ids = torch.empty(N, topk, device=dev, dtype=torch.int32)
    mask_flat = mask.reshape(-1).contiguous() if mask is not None else None
    BLOCK_N = 64
    _router_kernel[(triton.cdiv(max(N, 1), BLOCK_N),)](
        logits, mask_flat if mask_flat is not None else logits, weights, ids, N, M, topk,
        BLOCK_M=triton.next_power_of_2(M), BLOCK_N=BLOCK_N, HAS_MASK=mask_flat is not None)
    # Counting sort by (memory, token): row = sum_{m' < m} total[m'] + #{earlier tokens that chose m}.
    onehot = torch.zeros(N + 1, M, device=dev, dtype=torch.int32)
    valid = ids >= 0
    onehot[1:].scatter_add_(1, ids.clamp_min(0).long(), valid.to(torch.int32))
    prefix = onehot.cumsum(0, dtype=torch.int32)  # prefix[n, m] = tokens before n that chose m
    total = prefix[-1]
    mem_base = torch.cumsum(total, 0, dtype=torch.int32) - total
    rows = mem_base[ids.clamp_min(0).long()] + prefix[:-1].gather(1, ids.clamp_min(0).long())
    dst_row = torch.where(valid, rows, -1).to(torch.int32)
    # Masked pairs scatter into a dump slot at index R, cut off afterwards (no boolean indexing: no sync).
    pairs = torch.arange(N * topk, device=dev, dtype=torch.int32)
    target = torch.where(valid.flatten(), dst_row.flatten().long(), N * topk)
    src_pair = torch.full((N * topk + 1,), -1, device=dev, dtype=torch.int32).scatter_(0, target, pairs)[:-1]
    starts = cu_seqlens.long()[:-1] if cu_seqlens is not None else torch.arange(B, device=dev) * (N // B)
    seg_cu = (mem_base[:, None] + prefix[starts].t()).flatten()  # segment s = m * B + b
    seg_cu = torch.cat([seg_cu, total.sum().view(1)]).to(torch.int32)
    lengths = seg_cu[1:] - seg_cu[:-1]
    chunks = (lengths + chunk_size - 1) // chunk_size
    first = torch.cumsum(chunks, 0) - chunks
    max_chunks = N * topk // chunk_size + M * B
    slot = torch.arange(max_chunks, device=dev)
    seg = torch.searchsorted(first + chunks, slot, right=True)  # first segment whose chunks end after slot
    in_use = slot < chunks.sum()
    seg_c = seg.clamp_max(M * B - 1)
    chunk_indices = torch.stack([torch.where(in_use, seg_c, -1), torch.where(in_use, slot - first[seg_c], -1)], 1)
    return RoutingPlan(weights, ids, dst_row, src_pair, seg_cu, chunk_indices.to(torch.int32), M, B)


@triton.jit
def _permute_kernel(x_ptr, src_pair_ptr, y_ptr, R, D, K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    pair = tl.load(src_pair_ptr + rows, mask=rows < R, other=-1)
    tok = tl.where(pair >= 0, pair // K, 0).to(tl.int64)
    m = (rows < R)[:, None] & (cols < D)[None, :]
    x = tl.load(x_ptr + tok[:, None] * D + cols[None, :], mask=m & (pair >= 0)[:, None], other=0.0)
    tl.store(y_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :], x, mask=m)


def permute(x: torch.Tensor, plan: RoutingPlan) -> torch.Tensor:
    x2 = x.reshape(x.shape[0], math.prod(x.shape[1:])).contiguous()  # (-1 cannot be inferred for 0 rows)
    R, D = plan.num_rows, x2.shape[1]
    y = torch.empty(R, D, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(max(R, 1), 16), triton.cdiv(D, 256))
    _permute_kernel[grid](x2, plan.src_pair, y, R, D, plan.topk, BLOCK_R=16, BLOCK_D=256)
    return y.view(R, *x.shape[1:])


@triton.jit
def _unpermute_kernel(y_ptr, dst_row_ptr, w_ptr, x_ptr, N, D, K: tl.constexpr, HAS_W: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    toks = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    m = (toks < N)[:, None] & (cols < D)[None, :]
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for j in tl.static_range(K):
        r = tl.load(dst_row_ptr + toks * K + j, mask=toks < N, other=-1)
        w = tl.load(w_ptr + toks * K + j, mask=toks < N, other=0.0) if HAS_W else 1.0
        val = tl.load(y_ptr + tl.where(r >= 0, r, 0).to(tl.int64)[:, None] * D + cols[None, :],
                      mask=m & (r >= 0)[:, None], other=0.0).to(tl.float32)
        acc += w[:, None] * val if HAS_W else val
    tl.store(x_ptr + toks.to(tl.int64)[:, None] * D + cols[None, :], acc.to(x_ptr.dtype.element_ty), mask=m)


def unpermute(y: torch.Tensor, plan: RoutingPlan, weights: torch.Tensor | None = None) -> torch.Tensor:
    y2 = y.reshape(y.shape[0], math.prod(y.shape[1:])).contiguous()
    N, D = plan.num_tokens, y2.shape[1]
    x = torch.empty(N, D, device=y.device, dtype=y.dtype)
    grid = (triton.cdiv(max(N, 1), 16), triton.cdiv(D, 256))
    _unpermute_kernel[grid](y2, plan.dst_row, weights if weights is not None else y2, x, N, D, plan.topk,
                            HAS_W=weights is not None, BLOCK_N=16, BLOCK_D=256)
    return x.view(N, *y.shape[1:])


@triton.jit
def _route_backward_kernel(gw_ptr, w_ptr, ids_ptr, out_ptr, N, M: tl.constexpr, K: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """grad_logits[n, ids[n, j]] = w_j (g_j - sum_i w_i g_i) for kept slots, 0 for the other memories."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_M)
    in_row = rows < N
    dot = tl.zeros([BLOCK_N], dtype=tl.float32)
    for j in tl.static_range(K):
        w = tl.load(w_ptr + rows * K + j, mask=in_row, other=0.0)
        dot += w * tl.load(gw_ptr + rows * K + j, mask=in_row, other=0.0)
    out = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for j in tl.static_range(K):
        w = tl.load(w_ptr + rows * K + j, mask=in_row, other=0.0)
        g = tl.load(gw_ptr + rows * K + j, mask=in_row, other=0.0)
        m = tl.load(ids_ptr + rows * K + j, mask=in_row, other=-1)
        out = tl.where(cols[None, :] == m[:, None], (w * (g - dot))[:, None], out)
    # int64 row offsets (N * M may pass 2^31, as in _router_kernel)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * M + cols[None, :], out.to(out_ptr.dtype.element_ty),
             mask=in_row[:, None] & (cols[None, :] < M))


def route_backward(grad_weights: torch.Tensor, weights: torch.Tensor, memory_ids: torch.Tensor, num_memories: int,
                   dtype: torch.dtype) -> torch.Tensor:
    """The logits' gradient of route's weights (torch.ops.mom_ops.route_backward's contract): [N, num_memories]."""
    N, K = weights.shape
    out = torch.empty(N, num_memories, device=weights.device, dtype=dtype)
    if N > 0 and num_memories > 0:
        BLOCK_N = 64
        _route_backward_kernel[(triton.cdiv(N, BLOCK_N),)](
            grad_weights.float().contiguous(), weights.contiguous(), memory_ids.contiguous(), out, N, M=num_memories,
            K=K, BLOCK_M=triton.next_power_of_2(num_memories), BLOCK_N=BLOCK_N)
    return out
