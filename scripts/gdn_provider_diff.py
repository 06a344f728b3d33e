"""o of each scan provider (mom_ops, fla, flash_qla, where installed) against the fp32 chunked reference, on the
bench's gdn inputs and on the same inputs with the decay g scaled down (weak decay: FlashQLA splits a sequence
where the decay has made earlier tokens negligible, so its intra-sequence split is exercised differently there).
fla is fla's own Triton scan: bench.cases sets FLA_FLASH_QLA=0 (fla 0.6 would otherwise hand the call to FlashQLA).
    python3 scripts/gdn_provider_diff.py [decay scale ...]   (default: 1 0.02)"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root

import torch

import mom_ops
from bench.cases import has_module
from bench.gdn_inputs import GDN_CASES, gdn_inputs
from mom_ops.reference.gdn import chunk_gated_delta_rule_ref


def providers():
    fns = {"mom_ops": mom_ops.chunk_gated_delta_rule}
    if has_module("fla"):
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        fns["fla"] = chunk_gated_delta_rule
    if has_module("flash_qla"):
        from flash_qla import chunk_gated_delta_rule
        fns["flash_qla"] = chunk_gated_delta_rule
    return fns


def rel_rms(x, ref):
    return ((x.float() - ref).square().mean() / ref.square().mean()).sqrt().item()


def main():
    scales = [float(s) for s in sys.argv[1:]] or [1.0, 0.02]
    fns = providers()
    for T, H, D, n in GDN_CASES:
        for s in scales:
            case, cu = gdn_inputs(T, H, D, n, s)
            ref, ht_ref = chunk_gated_delta_rule_ref(**{k: t.cpu() for k, t in case.items()}, cu_seqlens=cu.cpu(),
                                                     use_qk_l2norm_in_kernel=True, output_final_state=True)
            line = f"gdn_T{T}_H{H}_D{D}_n{n} g x {s}:"
            for name, fn in fns.items():
                try:
                    o, ht = fn(**case, cu_seqlens=cu, use_qk_l2norm_in_kernel=True, output_final_state=True)
                    line += f"  {name} o {rel_rms(o.cpu(), ref):.2e} ht {rel_rms(ht.cpu(), ht_ref):.2e}"
                except Exception as e:  # a provider that cannot run the case (head dim, ...) says why
                    line += f"  {name} failed ({type(e).__name__}: {str(e)[:80]})"
            print(line, flush=True)


if __name__ == "__main__":
    main()
