#!/usr/bin/env bash
# compute-sanitizer memcheck and racecheck on the CUDA scan forward + backward, one small varlen case (issues #4, #5).
# On a GPU machine after the build (scripts/gpu_check.sh): bash scripts/gdn_bwd_sanitize.sh > $OUT/sanitize.log
set -uo pipefail
cd "$(dirname "$0")/.."
SAN="${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"
case_py='
import os, torch, mom_ops
from tests.helpers import cu_from_lengths, gdn_inputs
# The third setting forces the fused forward with 128-column V-blocks and the backward chain kernel at that
# width: the forward kernel that double-buffers its loads (kPrefetch), training and inference; the fourth the
# warp-specialised forward (gdn_fwd_ws_kernel.cuh), training (with its saves) and inference, and the
# warp-specialised backward chain (gdn_bwd_chain_ws_kernel.cuh); the fifth the split forward with its output kernel
# beside the chain (MOM_OPS_GDN_OVERLAP: counters between the two kernels); the two after it the warp-specialised
# backward chain at K = 256 (registers moved by setmaxnreg, W in a buffer of its own), Qs scaled by either role; the
# last the split backward chain at K = 256 (q in a buffer of its own). Small cases like this one
# take the split backward chain unless MOM_OPS_GDN_BWD_SPLIT=0, or at K = 256 MOM_OPS_GDN_BWD_WS=1. SAN_ONLY_D=256
# runs only the settings of that head dim.
configs = ((64, 4, {}), (128, 2, {}),
           (128, 2, {"MOM_OPS_GDN_SPLIT": "0", "MOM_OPS_GDN_BV": "wide", "MOM_OPS_GDN_WS": "0",
                     "MOM_OPS_GDN_BWD_SPLIT": "0", "MOM_OPS_GDN_BWD_WS": "0"}),
           (128, 2, {"MOM_OPS_GDN_SPLIT": "0", "MOM_OPS_GDN_WS_TRAIN": "1", "MOM_OPS_GDN_BWD_SPLIT": "0"}),
           (128, 2, {"MOM_OPS_GDN_SPLIT": "1", "MOM_OPS_GDN_OVERLAP": "1"}),
           (256, 2, {"MOM_OPS_GDN_BWD_WS": "1"}),
           (256, 2, {"MOM_OPS_GDN_BWD_WS": "1", "MOM_OPS_GDN_BWD_WS_QS": "state"}),
           (256, 2, {}))
for D, HV, env in configs:
    if os.environ.get("SAN_ONLY_D", str(D)) != str(D):
        continue
    for name in ("MOM_OPS_GDN_SPLIT", "MOM_OPS_GDN_BV", "MOM_OPS_GDN_WS", "MOM_OPS_GDN_WS_TRAIN",
                 "MOM_OPS_GDN_OVERLAP", "MOM_OPS_GDN_BWD_SPLIT", "MOM_OPS_GDN_BWD_WS", "MOM_OPS_GDN_BWD_WS_QS"):
        os.environ.pop(name, None)
    os.environ.update(env)
    lengths = [70, 0, 129, 1]
    inp = gdn_inputs(1, sum(lengths) + 5, 2, D, D, HV=HV, dtype=torch.bfloat16, h0=True, n_seqs=len(lengths),
                     device="cuda")
    leaves = {k: t.detach().requires_grad_(True) for k, t in inp.items()}
    o, ht = mom_ops.chunk_gated_delta_rule(**leaves, output_final_state=True, use_qk_l2norm_in_kernel=True,
                                           cu_seqlens=cu_from_lengths(lengths).cuda())
    torch.autograd.backward((o, ht), (torch.randn_like(o), torch.randn_like(ht)))
    with torch.no_grad():
        mom_ops.chunk_gated_delta_rule(**inp, use_qk_l2norm_in_kernel=True, cu_seqlens=cu_from_lengths(lengths).cuda())
torch.cuda.synchronize()
print("case done")
'
# The scan in pieces (csrc/gdn/scan_pieces.cuh) forward and backward, with the plan kernel's passes: 40 value heads
# (two head blocks, the first in passes of 16 warm-up chunks: csrc/gdn/gdn_piece_plan.cuh), 20-chunk pieces, slow
# heads whose warm-ups take two passes, one 2600-row sequence beside a short one; the split paths forced, whose cut
# heads the ws kernels run.
pieces_py='
import os, torch, mom_ops
from tests.helpers import cu_from_lengths, gdn_inputs
os.environ.update({"MOM_OPS_GDN_PIECE_CHUNKS": "20", "MOM_OPS_GDN_SPLIT": "1", "MOM_OPS_GDN_BWD_SPLIT": "1"})
lengths = [2600, 70]
inp = gdn_inputs(1, sum(lengths), 2, 128, 128, HV=40, dtype=torch.bfloat16, h0=True, n_seqs=len(lengths), device="cuda")
inp["g"][..., [1, 2, 33]] *= 0.015
leaves = {k: t.detach().requires_grad_(True) for k, t in inp.items()}
o, ht = mom_ops.chunk_gated_delta_rule(**leaves, output_final_state=True, use_qk_l2norm_in_kernel=True,
                                       cu_seqlens=cu_from_lengths(lengths).cuda())
torch.autograd.backward((o, ht), (torch.randn_like(o), torch.randn_like(ht)))
torch.cuda.synchronize()
print("case done")
'
# SAN_CASES (default "scan pieces"), SAN_TOOLS (default "memcheck racecheck"), SAN_KERNEL (kernel-name substring,
# default gdn; racecheck on the pieces case checks the plan kernel only, the scan kernels at its size would take
# minutes), SAN_LINES (lines of each report kept, default 15; hazards print with device backtraces, which name the
# kernel).
for case in ${SAN_CASES:-scan pieces}; do
  for tool in ${SAN_TOOLS:-memcheck racecheck}; do
    echo "== $case $tool"
    py=$case_py kernel=${SAN_KERNEL:-gdn}
    if [ "$case" = pieces ]; then
      py=$pieces_py
      [ "$tool" = racecheck ] && kernel=piece_plan
    fi
    PYTHONPATH=".:${PYTHONPATH:-}" "$SAN" --tool "$tool" --error-exitcode 3 --show-backtrace device \
      --kernel-name "kns=$kernel" python3 -c "$py" 2>&1 | tail -n "${SAN_LINES:-15}"
    echo "exit: ${PIPESTATUS[0]}"
  done
done
