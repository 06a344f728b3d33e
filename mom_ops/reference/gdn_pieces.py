"""Reference of the scan with long sequences cut into pieces that run in parallel (csrc/gdn/NOTES.md, "Against
FlashQLA"): the ground truth for a kernel that splits a sequence, and the place where the split's rule is stated.

A piece of a (sequence, value head) starts its chain W chunks before its first chunk from S = 0 (a warm-up whose
outputs are dropped) instead of waiting for the state the previous piece hands over. The state it misses is
Phi S, Phi the product of the warm-up tokens' transitions e^{g_t} (I - beta_t k_t k_t^T); while every
0 <= beta_t ||k_t||^2 <= 2 (in-kernel l2norm: ||k|| < 1, so beta in [0, 2]), ||Phi|| <= e^{sum g over the warm-up}.
The warm-up is the fewest whole chunks whose summed log-decay is <= log_eps; with log_eps = ln 2^-24 the missed
part is below fp32's rounding of the state, so the split is exact to fp32 (FlashQLA uses -10). A piece within
max_warmup_chunks of the sequence start runs from the start and h0 instead (exact). A (sequence, head) with any
boundary that has no such warm-up is not split; an empty sequence is one empty piece (its final state h0), as in the
CUDA plan (csrc/gdn/gdn_piece_plan.cuh). Chunks are the scan's 64-row chunks from each sequence start."""

from __future__ import annotations

import math

import torch

from mom_ops.reference.gdn import _finish, _prepare, chunk_step, sequences

LOG_EPS = -24 * math.log(2.0)  # the missed state's weight: below fp32 rounding


def piece_runs(g_chunk: torch.Tensor, beta_ok: torch.Tensor, piece_chunks: int, max_warmup_chunks: int,
               log_eps: float = LOG_EPS) -> list[tuple[int, int, int]] | None:
    """One (sequence, value head): g_chunk [C] the summed g of each chunk, beta_ok [C] whether every beta of the
    chunk is in [0, 2]. Returns the pieces as (run_start, first, end) chunk indices (the chain runs from run_start,
    outputs chunks [first, end); run_start 0 means from h0), or None where some boundary has no warm-up."""
    C = g_chunk.shape[0]
    runs = []
    for first in range(0, max(C, 1), piece_chunks):  # (an empty sequence: one empty piece)
        end = min(first + piece_chunks, C)
        if first == 0:
            runs.append((0, 0, end))
            continue
        run_start, total = None, 0.0
        for w in range(1, min(max_warmup_chunks, first) + 1):
            if not bool(beta_ok[first - w]):
                break
            total += float(g_chunk[first - w])
            if total <= log_eps:
                run_start = first - w
                break
        if run_start is None and first <= max_warmup_chunks:
            run_start = 0  # from the sequence start: exact
        if run_start is None:
            return None
        runs.append((run_start, first, end))
    return runs


def _chunk_bounds(start, end, chunk_size):
    """Chunk c of the sequence [start, end) is rows bounds[c] .. bounds[c + 1]."""
    return list(range(start, end, chunk_size)) + [end]


def piece_plan(g, beta, cu_seqlens=None, use_qk_l2norm_in_kernel=False, piece_chunks=16, max_warmup_chunks=16,
               log_eps=LOG_EPS, chunk_size=64):
    """The rule alone: g, beta [B, T, HV] -> {(sequence, value head): piece_runs' answer} (None: not cut, also for
    every (sequence, head) without in-kernel l2norm, where ||k|| has no bound)."""
    B, T, HV = g.shape
    plan = {}
    for i, (b, start, end) in enumerate(sequences(B, T, cu_seqlens)):
        bounds = _chunk_bounds(start, end, chunk_size)
        for hv in range(HV):
            plan[i, hv] = None
            if use_qk_l2norm_in_kernel:
                chunks = list(zip(bounds, bounds[1:]))
                g_chunk = torch.tensor([float(g[b, r0:r1, hv].float().sum()) for r0, r1 in chunks])
                beta_ok = torch.tensor([bool(((beta[b, r0:r1, hv] >= 0) & (beta[b, r0:r1, hv] <= 2)).all())
                                        for r0, r1 in chunks], dtype=torch.bool)
                plan[i, hv] = piece_runs(g_chunk, beta_ok, piece_chunks, max_warmup_chunks, log_eps)
    return plan


def chunk_gated_delta_rule_pieces_ref(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                                      use_qk_l2norm_in_kernel=False, state_v_first=False, cu_seqlens=None,
                                      piece_chunks=16, max_warmup_chunks=16, log_eps=LOG_EPS, chunk_size=64):
    """mom_ops.chunk_gated_delta_rule's o and final state, each (sequence, value head) cut as piece_plan says.
    Returns (o, ht, plan)."""
    dtype = q.dtype
    plan = piece_plan(g, beta, cu_seqlens, use_qk_l2norm_in_kernel, piece_chunks, max_warmup_chunks, log_eps,
                      chunk_size)
    q, k, v, g, beta, scale, seqs, h0 = _prepare(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel,
                                                 state_v_first, cu_seqlens)
    HV = v.shape[2]
    o = torch.zeros_like(v)
    states = []
    for i, (b, start, end) in enumerate(seqs):
        bounds = _chunk_bounds(start, end, chunk_size)
        S_end = []
        for hv in range(HV):
            h = slice(hv, hv + 1)
            S = h0[i, h]
            for run_start, first, last in plan[i, hv] or [(0, 0, len(bounds) - 1)]:
                S = h0[i, h] if run_start == 0 else torch.zeros_like(S)
                for c in range(run_start, last):
                    sl = slice(bounds[c], bounds[c + 1])
                    O, S = chunk_step(q[b, sl, h], k[b, sl, h], v[b, sl, h], g[b, sl, h], beta[b, sl, h], S, scale)
                    if c >= first:
                        o[b, sl, h] = O
            S_end.append(S)
        states.append(torch.cat(S_end))
    o, ht = _finish(o, dtype, states, output_final_state, state_v_first)
    return o, ht, plan
