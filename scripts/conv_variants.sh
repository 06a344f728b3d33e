#!/usr/bin/env bash
# segment_conv kernel shapes, timed at the bench shape by scripts/conv_variants.cu (on a GPU machine), and ncu's
# headline of the default shape. Each line: "name: -D flags".
#   [CONV_ROWS_LIST="32768 49152"] [CONV_VARIANTS=...] [NCU_FULL=1 | NCU=0] bash scripts/conv_variants.sh [out dir]
# (CONV_ROWS_LIST: the rows R of each timing; NCU_FULL=1: ncu's full section set, with source-level stall samples)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp}
TI=$(python3 -c "import torch.utils.cpp_extension as c; print(' '.join('-I'+p for p in c.include_paths()))")
NVCC="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
variants=(
  "default:"
  "w4b4:-DMOM_OPS_CONV_WARPS=4 -DMOM_OPS_CONV_BWD_CHUNK=4"
  "runs_first:-DMOM_OPS_CONV_TILES_FIRST=0"
)
# CONV_VARIANTS="name:flags;name:flags" replaces the list (keep a "default:" entry: ncu profiles it).
if [ -n "${CONV_VARIANTS:-}" ]; then IFS=';' read -r -a variants <<<"$CONV_VARIANTS"; fi
for v in "${variants[@]}"; do
  name=${v%%:*}
  "$NVCC" -std=c++20 -O3 -gencode arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -Icsrc $TI ${v#*:} \
    -Xptxas -v scripts/conv_variants.cu -o "/tmp/cv_$name" >"/tmp/cv_$name.log" 2>&1 &
done
wait
for v in "${variants[@]}"; do
  name=${v%%:*}
  regs=$(grep -A3 "Compiling entry.*segment_conv" "/tmp/cv_$name.log" \
    | grep -oE "Used [0-9]+ registers|[0-9]+ bytes spill stores" | tr '\n' ' ')
  echo "== $name ($regs)"
  if [ -x "/tmp/cv_$name" ]; then
    for rows in ${CONV_ROWS_LIST:-32768}; do "/tmp/cv_$name" "$rows"; done
  else
    grep -i error "/tmp/cv_$name.log" | head -5
  fi
done
[ "${NCU:-1}" = 1 ] || exit 0  # NCU=0: timings only
NCU="${CUDA_HOME:-/usr/local/cuda}/bin/ncu"
for k in fwd bwd; do
  if [ "${NCU_FULL:-0}" = 1 ]; then sections=(--set full --import-source yes -o "/tmp/ncu_conv_$k" -f); else
    sections=(--section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy
              --section LaunchStats); fi
  timeout 120 "$NCU" --kernel-name "regex:segment_conv_$k" --launch-skip 2 --launch-count 1 "${sections[@]}" \
    /tmp/cv_default ${CONV_ROWS_LIST%% *} >"$out/ncu_conv_$k.txt" 2>&1
  if [ "${NCU_FULL:-0}" = 1 ]; then  # the details page, and the SASS page for scripts/ncu_phases.py
    "$NCU" -i "/tmp/ncu_conv_$k.ncu-rep" --page details >>"$out/ncu_conv_$k.txt" 2>&1
    "$NCU" -i "/tmp/ncu_conv_$k.ncu-rep" --page source --csv --print-source sass >"$out/ncu_conv_${k}_sass.csv" 2>&1
  fi
done
