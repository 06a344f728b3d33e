"""Reference router and permutation plan (DESIGN.md §1: router, dispatch)."""

from __future__ import annotations

import torch


def router_ref(logits: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [N, M] -> (weights [N, k], memory ids int64 [N, k]).

    The k largest logits (ties to the lower index), by decreasing logit; weights = softmax over the kept
    logits (= the full softmax renormalised over the kept entries), computed in fp64 and rounded once to fp32
    (fp64 for fp64 logits). Infinite top logit: +inf shares the weight among the kept +inf entries; all -inf
    gives equal weights."""
    x = logits.double()
    order = torch.sort(x.detach(), dim=-1, descending=True, stable=True).indices[:, :topk]
    kept = x.gather(1, order)
    top = kept[:, :1]
    e = torch.where(top == float("inf"), (kept == top).double(),
                    torch.where(top == float("-inf"), torch.ones_like(kept), torch.exp(kept - top)))
    w = e / e.sum(-1, keepdim=True)
    return w.to(torch.float64 if logits.dtype == torch.float64 else torch.float32), order


def plan_ref(memory_ids: torch.Tensor, seq_of: torch.Tensor, num_memories: int, batch_size: int,
             chunk_size: int = 64):
    """Stable memory-major plan. memory_ids [N, k] (-1 = token routes nowhere), seq_of [N] sequence of each token.
    Returns dst_row [N, k], src_pair [N*k], cu_seqlens [M*B+1], chunk_indices [N*k//C + M*B, 2] (int32)."""
    n, k = memory_ids.shape
    segments = num_memories * batch_size
    dst_row = torch.full((n, k), -1, dtype=torch.int32)
    src_pair = torch.full((n * k,), -1, dtype=torch.int32)
    members = [[] for _ in range(segments)]  # pairs of each segment in time order
    for t in range(n):
        for j in range(k):
            m = int(memory_ids[t, j])
            if m >= 0:
                members[m * batch_size + int(seq_of[t])].append(t * k + j)
    cu = [0]
    for s in range(segments):
        for i, pair in enumerate(members[s]):
            dst_row.view(-1)[pair] = cu[-1] + i
            src_pair[cu[-1] + i] = pair
        cu.append(cu[-1] + len(members[s]))
    chunks = [(s, c) for s in range(segments) for c in range(-(-len(members[s]) // chunk_size))]
    chunk_indices = torch.full((n * k // chunk_size + segments, 2), -1, dtype=torch.int32)
    if chunks:
        chunk_indices[: len(chunks)] = torch.tensor(chunks, dtype=torch.int32)
    return dst_row, src_pair, torch.tensor(cu, dtype=torch.int32), chunk_indices


def sequence_of_tokens(num_tokens: int, batch_size: int, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
    if cu_seqlens is None:
        return torch.arange(num_tokens) // (num_tokens // batch_size)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).cpu().long()
    return torch.repeat_interleave(torch.arange(batch_size), lengths)


def route_ref(logits: torch.Tensor, topk: int, batch_size: int, cu_seqlens: torch.Tensor | None = None,
              mask: torch.Tensor | None = None, chunk_size: int = 64):
    """Router + plan, the same six outputs as torch.ops.mom_ops.route (on the CPU)."""
    weights, ids = router_ref(logits, topk)
    ids = ids.to(torch.int32)
    if mask is not None:
        weights = torch.where(mask[:, None].cpu(), weights.cpu(), torch.zeros(()))
        ids = torch.where(mask[:, None].cpu(), ids.cpu(), torch.full((), -1, dtype=torch.int32))
    seq_of = sequence_of_tokens(logits.shape[0], batch_size, cu_seqlens)
    plan = plan_ref(ids.cpu(), seq_of, logits.shape[1], batch_size, chunk_size)
    return (weights, ids, *plan)


def permute_ref(x: torch.Tensor, src_pair: torch.Tensor, topk: int) -> torch.Tensor:
    """y[r] = x[src_pair[r] // k], zero rows where src_pair < 0."""
    rows = src_pair.long()
    y = x[rows.clamp_min(0) // topk]
    return torch.where((rows >= 0).view(-1, *[1] * (x.dim() - 1)), y, torch.zeros_like(y))


def unpermute_ref(y: torch.Tensor, dst_row: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """x[n] = sum_j w[n, j] * y[dst_row[n, j]] in fp32 (rows < 0 skipped), cast to y's dtype."""
    rows = dst_row.long()
    gathered = y.float()[rows.clamp_min(0)]  # [N, k, ...]
    w = torch.ones(rows.shape) if weights is None else weights.float()
    w = torch.where(rows >= 0, w, torch.zeros_like(w)).view(*rows.shape, *[1] * (y.dim() - 1))
    return (gathered * w).sum(1).to(y.dtype)
