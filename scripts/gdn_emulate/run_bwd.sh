#!/usr/bin/env bash
# CPU emulation of the gdn backward kernels (gdn_bwd_chain_kernel or, with EMU_BWD_SPLIT=1, the split chain of
# gdn_bwd_split_kernels.cuh, or with EMU_BWD_WS=1 gdn_bwd_chain_ws_kernel, EMU_WS_QS=aux / state choosing who scales
# its Qs, or with EMU_BWD_SPLIT=1 EMU_BWD_PIECES=<chunks> the split chain beside the ws chain in pieces;
# gdn_bwd_grads_kernel) through the host shim of
# run.sh: bwd_driver.cpp reruns the fused forward with its saves, runs the two kernels as gdn_bwd_cuda.cu launches
# them, checks coverage (sequence rows written and finite, other rows untouched) and, under a non-default schedule,
# bitwise equality with a forward-order run; compare_bwd.py then checks the gradients against mom_ops's CPU backward
# in fp64 (relative RMS under the GPU tests' bars).
#   bash scripts/gdn_emulate/run_bwd.sh      (from the repository root, with .venv and the CPU build of mom_ops)
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-../../.venv/bin/python}"
TORCH_INC=$("$PY" -c "import torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))" 2>/dev/null)
BIN="${TMPDIR:-/tmp}/mom_ops_gdn_emulate"
OUT="$BIN/bwd_out"
mkdir -p "$BIN" "$OUT"
source build.sh
quick=${EMU_QUICK:-0}  # 1: CI's subset (tests/test_kernel_emulators.py), one case per path, bf16 builds only
[ "$quick" = 1 ] && export EMU_KB="128_64 128_128 256_64" EMU_BF=1
build_drivers bwd_driver.cpp emu_bwd
failed=0
# Args: H HV V l2norm v_first cu_int64 order(0 forward, 1 reverse, 2 random, 3 random warp speeds) eager_copies
#       rows_past_the_end h0 dht lengths... ("B:T" = no cu_seqlens, B sequences of T rows)
n=0
run() {
  local bin=$1 out dir="$OUT/case$n"
  shift
  n=$((n + 1))
  rm -rf "$dir" && mkdir -p "$dir"
  set -- "${@:1:11}" "$dir" "${@:12}"
  if out=$("$BIN/$bin" "$@" 2>&1 && PYTHONPATH=../.. "$PY" compare_bwd.py "$dir" 2>&1) && [ "$(echo "$out" | tail -1)" = OK ]; then
    echo "ok: $bin $*"; echo "$out" | grep "relative RMS"
  else
    echo "FAIL: $bin $*"; echo "$out"; failed=1
  fi
}
if [ "$quick" = 1 ]; then
  run emu_bwd_128_64_1  1 2 128 1 0 0 3 0 3 1 1 200 0 1 64  # chain + grads, varlen, h0 / dht, random warp speeds
  EMU_BWD_WS=1 run emu_bwd_128_128_1 2 2 128 1 1 0 2 1 7 1 1 150 0 1 65  # the ws chain
  EMU_BWD_SPLIT=1 EMU_TMA_EAGER=1 run emu_bwd_128_64_1 2 2 192 1 0 1 2 0 0 1 1 1 0 129  # split chain, TMA at issue
  EMU_BWD_SPLIT=1 EMU_CHAIN_BV=16 run emu_bwd_256_64_1 1 2 128 1 1 1 3 1 0 1 1 130 0 64 1  # K = 256, mma.sync chain
  # masked decay rows (g = -inf, -FLT_MAX, -1e9; two in one chunk): chain + grads, ws chain, split chain
  export EMU_G_MASKED_ROWS=11,40,41,150
  run emu_bwd_128_64_1 1 2 128 1 0 0 2 0 0 1 1 200
  EMU_BWD_WS=1 run emu_bwd_128_128_1 1 2 128 1 0 0 2 0 0 1 1 200
  EMU_BWD_SPLIT=1 run emu_bwd_128_64_1 1 2 128 1 0 0 2 0 0 1 1 200
  exit $failed
fi
# varlen with an empty and a 1-row segment, h0 and dht; GVA (HV = 2H) and HV == H with l2norm
run emu_bwd_64_64_1   1 2 128 1 0 0 0 0 5 1 1 130 0 64 1
run emu_bwd_64_64_1   2 2 128 1 1 1 2 1 0 1 1 100 1 0 70
run emu_bwd_64_64_1   2 4 64  0 0 0 3 0 0 0 0 2:150
run emu_bwd_128_64_1  1 2 128 1 0 0 3 0 3 1 1 200 0 1 64
run emu_bwd_128_64_1  2 2 192 1 0 1 1 0 0 1 1 1 0 129
run emu_bwd_128_128_1 2 2 128 1 1 0 2 1 7 1 1 150 0 1 65
run emu_bwd_128_128_1 1 1 256 0 0 1 0 0 0 1 0 3:64
run emu_bwd_256_32_1  1 1 64  1 0 0 2 1 3 1 1 130 0 64 1
run emu_bwd_256_32_1  1 2 64  1 1 1 3 0 0 1 1 0 1 100
run emu_bwd_256_32_1  1 2 64  1 0 0 2 0 0 0 0 130 0 64 1  # no h0, no dht: the grads instance without exact ends
run emu_bwd_256_64_1  1 2 128 1 0 0 1 0 2 1 1 200 1 0 64
run emu_bwd_256_64_1  2 2 128 1 1 1 0 0 0 0 1 70 1
# 70 sequences (empty and 1-row ones among them): the chunk-slot search (slot_sequence) takes two rounds
pattern=(0 1 5 64 65 17 130)
many=$(for i in $(seq 0 69); do echo -n "${pattern[i % 7]} "; done)
run emu_bwd_64_64_1   1 1 64  1 0 0 2 0 3 1 1 $many
# the grads kernel with a CTA per item (MOM_OPS_GDN_GRADS_ITEMS=0; the other cases run 3 CTAs that take the items
# in turn)
EMU_GRADS_GRID=0 run emu_bwd_128_64_1  1 2 128 1 0 0 3 0 3 1 1 200 0 1 64
EMU_GRADS_GRID=0 run emu_bwd_256_32_1  1 2 64  1 0 0 2 0 0 0 0 130 0 64 1
# fp16
run emu_bwd_64_64_0   1 2 128 1 0 0 2 0 5 1 1 130 0 64 1
run emu_bwd_128_64_0  2 2 128 1 1 1 3 1 0 1 1 100 1 0 70
run emu_bwd_256_32_0  1 1 64  1 0 0 0 0 0 1 1 129 1
# the warp-specialised chain (K = 128, V a multiple of 128): the same checks
export EMU_BWD_WS=1
run emu_bwd_128_128_1 2 2 128 1 1 0 2 1 7 1 1 150 0 1 65
run emu_bwd_128_128_1 1 1 256 0 0 1 0 0 0 1 0 3:64
run emu_bwd_128_128_1 2 4 128 1 0 0 3 0 3 1 1 200 0 1 64 130
run emu_bwd_128_128_1 1 2 384 1 0 1 1 1 0 0 1 1 0 129
run emu_bwd_128_128_0 2 2 128 1 1 0 3 1 0 1 1 100 1 0 70
# ... at K = 256 (registers A, W in one buffer of its own)
run emu_bwd_256_64_1  1 2 128 1 0 0 2 1 3 1 1 130 0 64 1
run emu_bwd_256_64_1  1 1 256 0 1 1 3 0 0 1 1 200 1 129
run emu_bwd_256_64_0  2 2 128 1 0 0 1 0 0 0 1 70 65
# ... with Qs scaled by the other role than the default (EMU_WS_QS: aux at K = 128, state at K = 256)
EMU_WS_QS=aux run emu_bwd_128_128_1 2 2 128 1 1 0 2 1 7 1 1 150 0 1 65
EMU_WS_QS=state run emu_bwd_256_64_1  1 2 128 1 0 0 2 1 3 1 1 130 0 64 1
unset EMU_BWD_WS
# the split backward chain (V a multiple of 64): the same checks
export EMU_BWD_SPLIT=1
run emu_bwd_64_64_1   1 2 128 1 0 0 0 0 5 1 1 130 0 64 1
run emu_bwd_64_64_1   2 4 64  0 0 0 3 0 0 0 0 2:150
run emu_bwd_128_64_1  1 2 128 1 0 0 3 0 3 1 1 200 0 1 64
run emu_bwd_128_64_1  2 2 192 1 0 1 1 0 0 1 1 1 0 129
run emu_bwd_128_128_1 2 2 128 1 1 0 2 1 7 1 1 150 0 1 65
run emu_bwd_128_64_0  2 2 128 1 1 1 3 1 0 1 1 100 1 0 70
# ... at K = 256 (32 columns at most; q in a buffer of its own, loaded by the compute warps)
run emu_bwd_256_32_1  1 2 64  1 0 0 2 1 3 1 1 130 0 64 1
run emu_bwd_256_64_1  1 1 256 0 1 1 3 0 0 1 1 200 1 129
run emu_bwd_256_32_0  2 2 128 1 0 0 1 0 0 1 1 70 65
# ... with its narrow V-blocks (for few sequences)
export EMU_CHAIN_BV=32
run emu_bwd_64_64_1   1 2 128 1 0 0 3 1 5 1 1 130 0 64 1
run emu_bwd_128_64_1  2 2 192 1 0 1 2 0 0 1 1 1 0 129
export EMU_CHAIN_BV=16
run emu_bwd_128_128_1 2 2 128 1 1 0 3 1 7 1 1 150 0 1 65
run emu_bwd_128_64_0  1 2 128 1 0 0 1 0 3 1 1 200 0 1 64
run emu_bwd_256_64_1  1 2 128 1 1 1 3 1 0 1 1 130 0 64 1
# ... on mma.sync (MOM_OPS_GDN_CHAIN_WGMMA=0; the cases above run it on wgmma at K = 128 / 256, V-blocks of 32 / 64)
export MOM_OPS_GDN_CHAIN_WGMMA=0
run emu_bwd_128_64_1  2 2 192 1 0 1 3 0 0 1 1 1 0 129
run emu_bwd_256_32_1  1 2 64  1 0 0 3 1 3 1 1 130 0 64 1
unset MOM_OPS_GDN_CHAIN_WGMMA
# ... with the TMA boxes landing at issue (EMU_TMA_EAGER=1: a stage refilled while it is still read shows up), on
# wgmma (K = 128 / 256, 32 / 64 columns) and mma.sync (K = 64; 16 columns), short last chunks
export EMU_TMA_EAGER=1
run emu_bwd_64_64_1   1 2 128 1 0 0 3 0 5 1 1 130 0 64 1
run emu_bwd_128_64_1  2 2 192 1 0 1 2 0 0 1 1 1 0 129
run emu_bwd_256_64_1  1 1 256 0 1 1 3 0 0 1 1 200 1 129
EMU_CHAIN_BV=16 run emu_bwd_256_64_1 1 2 128 1 1 1 3 1 0 1 1 130 0 64 1
unset EMU_TMA_EAGER
# ... with the chain in pieces of 3 chunks (EMU_BWD_PIECES; gdn_bwd_cuda.cu's pieces are 16): the ws chain takes the
# cut heads, odd heads forced onto the split chain, the plan checked against the host
unset EMU_CHAIN_BV
export EMU_BWD_PIECES=3
run emu_bwd_128_128_1 2 4 128 1 0 0 2 0 3 1 1 500 0 1 700 130
run emu_bwd_128_128_0 2 2 256 1 1 1 0 1 0 1 0 3:400
EMU_SEED=7 run emu_bwd_128_128_1 1 2 128 1 0 0 3 0 0 0 1 900 64
EMU_G_SCALE=0.06 EMU_PIECE_WARMUP=40 run emu_bwd_128_128_1 1 1 128 1 0 0 2 0 0 1 1 2000  # ~26-chunk warm-ups
unset EMU_BWD_PIECES
exit $failed
