"""Interim CUDA backward of chunk_gated_delta_rule: the Triton reference backward (triton_ref.gdn, a recurrent
backward with per-64-step checkpoints) registered for the CUDA key, until the CUDA kernel of issue #5 exists.
It makes training on the GPU possible now; it is correct (tested against the CPU backward) but not fast.
Registered only when no compiled CUDA backward is present and Triton imports."""

from __future__ import annotations

import importlib.util

import torch

OP = "mom_ops::chunk_gated_delta_rule_bwd"


def _triton_backward(q, k, v, g, beta, scale, initial_state, grad_o, grad_final_state, use_qk_l2norm, state_v_first,
                     cu_seqlens, chunk_indices, chunk_states=None, w=None, v_new=None, t=None):
    from triton_ref.gdn import chunk_gated_delta_rule_bwd

    dq, dk, dv, dg, dbeta, dh0 = chunk_gated_delta_rule_bwd(
        q, k, v, g, beta, scale, initial_state, grad_o, grad_final_state, use_qk_l2norm, state_v_first, cu_seqlens
    )
    if dh0 is None:
        dh0 = q.new_empty(0, dtype=torch.float32)
    return dq, dk, dv, dg, dbeta, dh0


def register() -> bool:
    """Registers the Triton backward for CUDA tensors; returns whether it did."""
    if torch._C._dispatch_has_kernel_for_dispatch_key(OP, "CUDA"):
        return False
    if importlib.util.find_spec("triton") is None:  # checked without importing it: no start-up cost
        return False
    torch.library.impl(OP, "CUDA")(_triton_backward)
    return True


INTERIM_TRITON_BACKWARD = register()
