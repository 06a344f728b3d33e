"""Reference of the exact cut of long sequences into pieces (csrc/gdn/NOTES.md, "Exact pieces: the plan"): the ground
truth for kernels that split a sequence whose decay is too slow for gdn_pieces.py's warm-up rule.

Within a sequence each chunk maps the state S [K, V] affinely, S -> M_c S + B_c (M_c = e^{G_L} I - K~^T W and
B_c = K~^T U in the chunked form: M_c depends on k, g, beta only, B_c is linear in v). So a piece of chunks [a, b)
maps S_a to S_b = Phi S_a + L, Phi = M_{b-1} ... M_a [K, K] and L its chain's final state from S = 0. Both come from
one chain over the state augmented with K columns, [S | X] [K, V + K], started at [0 | I] with zero values in the X
columns: those columns evolve as X -> M_c X, so the chain ends at [L | Phi]. Then
  1. every piece's [L | Phi] from [0 | I], all pieces in parallel (one chain step per chunk over V + K columns);
  2. a serial pass over each sequence's pieces: S_first = h0, S_{p+1} = Phi_p S_p + L_p (K x K x V per piece);
  3. every piece's chain again from its exact start S_p, in parallel, writing o (and the last piece the final state).
Exact in exact arithmetic, for any inputs (no bound on beta or ||k||, unlike the warm-up rule); in floating point the
combine adds one product per piece. The backward's state-gradient chain runs the same way from the end: dS -> M_c^T
dS + (the chunk's dO terms), so a piece's augmented chain started at [0 | I] from its last chunk gives its local dS
and Phi^T, and the serial pass runs over the pieces last to first."""

from __future__ import annotations

import torch

from mom_ops.reference.gdn import _finish, _prepare, chunk_step
from mom_ops.reference.gdn_pieces import _chunk_bounds


def _pieces(bounds: list[int], piece_chunks: int) -> list[tuple[int, int]]:
    """Chunk ranges [first, end) of the pieces of a sequence with len(bounds) - 1 chunks (an empty sequence: one empty
    piece)."""
    chunks = len(bounds) - 1
    return [(first, min(first + piece_chunks, chunks)) for first in range(0, max(chunks, 1), piece_chunks)]


def piece_maps(q, k, v, g, beta, scale, bounds, piece):
    """Pass 1 for one piece (chunk range `piece` of a sequence whose chunk c is rows bounds[c] .. bounds[c + 1] of the
    prepared q, k, v, g, beta [rows, HV, .]): (L [HV, K, V], Phi [HV, K, K]) with S_end = Phi S_start + L."""
    HV, K, V = v.shape[1], k.shape[2], v.shape[2]
    S = torch.cat([v.new_zeros(HV, K, V), torch.eye(K, dtype=v.dtype).expand(HV, K, K)], dim=-1)  # [0 | I]
    for c in range(*piece):
        sl = slice(bounds[c], bounds[c + 1])
        v_aug = torch.cat([v[sl], v.new_zeros(v[sl].shape[0], HV, K)], dim=-1)  # no values in the X columns
        _, S = chunk_step(q[sl], k[sl], v_aug, g[sl], beta[sl], S, scale)
    return S[..., :V], S[..., V:]


def chunk_gated_delta_rule_exact_pieces_ref(q, k, v, g, beta, scale=None, initial_state=None,
                                            output_final_state=False, use_qk_l2norm_in_kernel=False,
                                            state_v_first=False, cu_seqlens=None, piece_chunks=16, chunk_size=64):
    """mom_ops.chunk_gated_delta_rule's o and final state, every sequence cut into pieces of piece_chunks chunks
    and run by the three passes above. Returns (o, ht, start_states): start_states[i] [pieces, HV, K, V] the exact
    state at each piece's start in sequence i (pass 2's output)."""
    dtype = q.dtype
    q, k, v, g, beta, scale, seqs, h0 = _prepare(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel,
                                                 state_v_first, cu_seqlens)
    o = torch.zeros_like(v)
    states, start_states = [], []
    for i, (b, start, end) in enumerate(seqs):
        bounds = _chunk_bounds(start, end, chunk_size)
        pieces = _pieces(bounds, piece_chunks)
        seq = [x[b] for x in (q, k, v, g, beta)]
        maps = [piece_maps(*seq, scale, bounds, piece) for piece in pieces]  # pass 1 (parallel over pieces)
        starts = [h0[i]]  # pass 2 (serial over pieces)
        for local, phi in maps[:-1]:
            starts.append(phi @ starts[-1] + local)
        for (first, last), S in zip(pieces, starts):  # pass 3 (parallel over pieces)
            for c in range(first, last):
                sl = slice(bounds[c], bounds[c + 1])
                O, S = chunk_step(*(x[sl] for x in seq), S, scale)
                o[b, sl] = O
        states.append(S)
        start_states.append(torch.stack(starts))
    o, ht = _finish(o, dtype, states, output_final_state, state_v_first)
    return o, ht, start_states
