#!/usr/bin/env bash
# CPU emulation of the gdn forward kernels: the fused gdn_fwd_kernel (with its saves) and the split forward
# (gdn_split_kernels.cuh) run on the CPU through the host shim (shim/: one ucontext fiber per CUDA thread, ldmatrix and
# mma.sync m16n8k16 from the PTX fragment layouts, cp.async alignment and bounds checks, NaN-poisoned shared and
# global memory with guard pages, deadlock and divergent-collective checks, optional random warp speeds). driver.cpp
# compares o, ht and the four saved tensors of the two paths bit for bit and both against an fp64 recurrence; at K = 128
# with V % 128 == 0 it also runs the warp-specialised forward (gdn_fwd_ws_kernel.cuh), inference and training, and with
# l2norm the inference forward in pieces of 3 chunks (scan_pieces.cuh: the plan against the host's rule, the odd heads
# forced onto the split forward).
# For checking kernel edits without a GPU; it says nothing about speed, registers or the bindings.
# EMU_CHAIN_BV=32 / 16 runs the chain with narrow V-blocks. The backward kernels: run_bwd.sh.
#   bash scripts/gdn_emulate/run.sh      (from the repository root, with .venv; ~1 min to build, a few to run)
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-../../.venv/bin/python}"
TORCH_INC=$("$PY" -c "import torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))" 2>/dev/null)
BIN="${TMPDIR:-/tmp}/mom_ops_gdn_emulate"
mkdir -p "$BIN"
source build.sh
quick=${EMU_QUICK:-0}  # 1: CI's subset (tests/test_kernel_emulators.py), one case per path, bf16 builds only
[ "$quick" = 1 ] && export EMU_KB="128_64 128_128 256_64" EMU_BF=1
build_drivers driver.cpp emu
failed=0
# Args: H HV V l2norm v_first cu_int64 order(0 forward, 1 reverse, 2 random, 3 random warp speeds) eager_copies
#       rows_past_the_end lengths... ("B:T" = no cu_seqlens, B sequences of T rows)
run() {
  local out
  if out=$("$BIN/$@" 2>&1) && [ "$(echo "$out" | tail -1)" = OK ]; then echo "ok: $*"; else echo "FAIL: $*"; echo "$out"; failed=1; fi
}
if [ "$quick" = 1 ]; then
  run emu_128_64_1 1 2 128 1 0 0 3 1 3 200 64  # fused and split, GVA, random warp speeds, eager copies
  run emu_128_128_1 1 1 128 1 0 0 3 0 0 5 0 64 7 1 129 260  # + the ws forward and the pieces
  run emu_256_64_1 1 1 128 1 0 1 3 1 0 130 0 64 7 1  # K = 256, the wgmma output kernel
  EMU_TMA_EAGER=1 EMU_CHAIN_BV=32 run emu_128_128_1 2 4 128 1 1 0 2 0 7 300 0 65 1  # TMA boxes landing at issue
  # masked decay rows (g = -inf, -FLT_MAX, -1e9; two in one chunk): fused, split, ws, pieces
  EMU_G_MASKED_ROWS=11,40,41,150 run emu_128_128_1 1 1 128 1 0 0 2 0 0 200
  exit $failed
fi
for bf in 1 0; do
  run emu_64_64_$bf 1 2 128 1 0 0 0 0 5 130 0 64 7 1
  run emu_64_64_$bf 2 2 256 0 1 1 1 1 0 300 0 65 1
  run emu_64_64_$bf 2 4 64 1 1 0 2 0 0 2:150
  run emu_128_64_$bf 1 2 128 1 0 0 2 1 3 200 64
  run emu_128_64_$bf 2 2 192 0 1 1 0 0 0 0 0 70 1
  run emu_128_128_$bf 2 4 128 1 1 0 1 0 7 300 0 65 1
  run emu_128_128_$bf 1 1 256 1 0 1 0 1 0 3:64
  run emu_256_64_$bf 1 1 64 1 0 0 2 1 0 130 0 64 7 1
  run emu_256_64_$bf 2 2 128 1 1 1 1 0 2 200 64
  run emu_256_32_$bf 1 2 64 0 0 0 0 0 0 150 1
done
# 70 sequences (empty and 1-row ones among them): the chunk-slot search (slot_sequence) takes two rounds
pattern=(0 1 5 64 65 17 130)
many=$(for i in $(seq 0 69); do echo -n "${pattern[i % 7]} "; done)
run emu_64_64_1 1 1 64 1 0 0 2 0 3 $many
# the same at K = V = 128 with 400-row ones: the forward in pieces finds its sequences by piece slot (two rounds)
pattern=(0 1 5 64 65 17 130 400)
many=$(for i in $(seq 0 69); do echo -n "${pattern[i % 8]} "; done)
run emu_128_128_1 1 2 128 1 0 0 2 0 3 $many
for seed in 11 22; do  # random warp speeds: barriers that are missing show up here
  export EMU_SEED=$seed
  run emu_64_64_1 1 2 128 1 0 0 3 1 5 130 0 64 7 1
  run emu_128_64_0 1 2 128 1 0 0 3 0 3 200 64
  run emu_256_64_1 1 1 64 1 0 1 3 1 0 130 0 64 7 1
  run emu_128_128_1 1 1 128 1 0 0 3 0 0 5 0 64 7 1 129 260  # the ws forward's stages and prefetch, several chunks
  run emu_256_64_1 1 1 128 1 0 1 3 1 0 130 0 64 7 1  # the wgmma output kernel (V % 128 == 0): S0 in two parts
done
for seed in 11 22; do  # the chain's narrow V-blocks (for few sequences)
  export EMU_SEED=$seed EMU_CHAIN_BV=$((seed == 11 ? 32 : 16))
  run emu_64_64_1 1 2 128 1 0 0 3 1 5 130 0 64 7 1
  run emu_128_64_0 2 2 192 0 1 1 3 0 0 0 0 70 1
  run emu_128_128_1 1 1 256 1 0 1 2 1 0 3:64
  run emu_256_64_1 1 1 64 1 0 1 3 0 0 130 0 64 7 1
  run emu_256_32_0 1 2 64 0 0 0 1 1 0 150 1
done
# The chain on mma.sync (MOM_OPS_GDN_CHAIN_WGMMA=0; the cases above run it on wgmma at K = 128 / 256 with V-blocks
# of 32 / 64 columns)
export MOM_OPS_GDN_CHAIN_WGMMA=0 EMU_SEED=44
run emu_128_64_0 1 2 128 1 0 0 3 1 3 200 64
run emu_256_64_1 1 1 128 1 0 1 3 1 0 130 0 64 7 1
EMU_CHAIN_BV=32 run emu_256_32_1 1 2 64 0 0 0 3 1 0 150 1
EMU_CHAIN_BV=32 run emu_128_128_0 2 2 128 1 1 0 3 0 0 300 0 65 1
unset MOM_OPS_GDN_CHAIN_WGMMA EMU_SEED
# The split chain's TMA boxes landing at issue (EMU_TMA_EAGER=1: a stage refilled while it is still read shows up)
export EMU_TMA_EAGER=1 EMU_SEED=55
run emu_128_64_1 1 2 128 1 0 0 3 1 3 200 64
run emu_256_64_0 2 2 128 1 1 1 3 0 2 200 64
EMU_CHAIN_BV=32 run emu_128_128_1 2 4 128 1 1 0 2 0 7 300 0 65 1
unset EMU_TMA_EAGER EMU_SEED
# MOM_OPS_GDN_OVERLAP=1: the output kernel beside the chain, through the chain's counters (a wait that would block
# fails in the emulator, which runs the kernels one after another)
export MOM_OPS_GDN_OVERLAP=1 EMU_SEED=33 EMU_CHAIN_BV=16
run emu_128_128_1 1 1 256 1 0 1 2 1 0 3:64
run emu_256_64_0 1 2 128 1 0 0 3 1 5 130 0 64 7 1
run emu_64_64_1 2 2 192 1 1 1 1 0 0 300 0 65 1
unset MOM_OPS_GDN_OVERLAP EMU_SEED EMU_CHAIN_BV
# pieces where the decay is slow (EMU_G_SCALE): warm-ups of ~10 chunks within the default bound (16), and of ~26
# within a bound of 40 (MOM_OPS_GDN_PIECE_CHUNKS's longer warm-ups; the plan's passes over several batches of
# chunks need 16+ heads: tests/test_gdn_pieces.py's 40-head cases on the GPU); there the
# runs' bf16 rounding differs after the warm-up, so the pieces are checked against fp64 (as far from it as unsplit)
EMU_G_SCALE=0.15 run emu_128_128_1 1 1 128 1 0 0 2 0 0 2000
EMU_G_SCALE=0.06 EMU_PIECE_WARMUP=40 run emu_128_128_1 1 1 128 1 0 0 2 0 0 2000
exit $failed
