"""On a GPU: the split and the fused CUDA scan forwards (MOM_OPS_GDN_SPLIT=1 / 0) on tests/test_gdn.py's GPU cases,
bit for bit (o, ht and the training forward's saves), and each one's error against the fp32 recurrence and the
Triton reference's: python3 scripts/gdn_split_vs_fused.py"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root

import torch

import mom_ops  # noqa: F401 (registers the ops)
from mom_ops.reference import recurrent_gated_delta_rule_ref
from tests.helpers import cu_from_lengths, gdn_inputs, rel_rms
from tests.test_gdn import GPU_CASES
from triton_ref import gdn as triton_gdn

DEVICE = os.environ.get("DEVICE", "cuda")  # DEVICE=cpu checks the script itself


def train_forward(inp, cu):
    args = (inp["q"], inp["k"], inp["v"], inp["g"], inp["beta"], inp["q"].shape[-1] ** -0.5, inp.get("initial_state"),
            True, True, False, cu, None)
    return torch.ops.mom_ops.chunk_gated_delta_rule_fwd_train(*args)  # o, ht, chunk_states, w, v_new, t


for case in GPU_CASES:
    B, T, H, HV, D, lengths, decay, beta_range, h0 = case
    n = B if lengths is None else len(lengths)
    inp = gdn_inputs(B, T, H, D, D, HV=HV, dtype=torch.bfloat16, decay=decay, beta_range=beta_range, h0=h0, n_seqs=n)
    cu = None if lengths is None else cu_from_lengths(lengths)
    o_ref, _ = recurrent_gated_delta_rule_ref(**inp, cu_seqlens=cu, output_final_state=True,
                                              use_qk_l2norm_in_kernel=True)
    gpu = {key: t.to(DEVICE) for key, t in inp.items()}
    cu = None if cu is None else cu.to(DEVICE)
    outs = {}
    for mode in ("0", "1"):
        os.environ["MOM_OPS_GDN_SPLIT"] = mode
        outs[mode] = train_forward(gpu, cu)
    o_tr, _ = triton_gdn.chunk_gated_delta_rule(**gpu, cu_seqlens=cu, output_final_state=True,
                                                use_qk_l2norm_in_kernel=True)
    names = ("o", "ht", "chunk_states", "w", "v_new", "t")
    diff = {name: int((a != b).sum()) for name, a, b in zip(names, outs["0"], outs["1"])}
    print(f"K={D} lengths={lengths or (B, T)}: elements differing split vs fused {diff}; o error vs fp32 recurrence:"
          f" fused {rel_rms(outs['0'][0].cpu(), o_ref):.2e}, split {rel_rms(outs['1'][0].cpu(), o_ref):.2e},"
          f" Triton ref {rel_rms(o_tr.cpu(), o_ref):.2e}")
