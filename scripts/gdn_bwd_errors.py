"""Relative RMS error of every gradient of the CUDA scan backward (and of the Triton recurrent backward) against
fp32 autograd of the recurrence, on the regimes of tests/test_gdn_cuda_backward.py:
    PYTHONPATH=. python scripts/gdn_bwd_errors.py"""

import torch

from tests.test_gdn_cuda_backward import CASES, NAMES, REGIMES, _op_args, _reference_grads, rel_rms
from triton_ref.gdn import chunk_gated_delta_rule_bwd as triton_bwd

for name in REGIMES:
    args = _op_args(name, torch.bfloat16)
    ours = torch.ops.mom_ops.chunk_gated_delta_rule_bwd(*args)
    theirs = triton_bwd(*args[:12])
    ref = _reference_grads(name, torch.bfloat16)
    row = [f"{key} {rel_rms(m, ref[key]):.1e}/{rel_rms(t, ref[key]):.1e}" for key, m, t in zip(NAMES, ours, theirs)
           if key in ref]
    print(f"{name:28s} " + "  ".join(row))
