#!/usr/bin/env bash
# ncu of one kernel of one bench case, split by barrier phase (scripts/ncu_phases.py), on a GPU machine after the build:
#   bash scripts/ncu_phases.sh <case> <mode> <kernel-name regex> <CTAs in its grid> <out prefix>
# e.g. MOM_OPS_GDN_WS_TRAIN=1 bash scripts/ncu_phases.sh gdn_T32768_H16_D128_n32 fwdbwd gdn_fwd_ws 512 $OUT/ws_train
# Writes <out prefix>.txt (the phase table and the kernel's headline metrics); the report itself stays in /tmp.
set -uo pipefail
cd "$(dirname "$0")/.."
case_name=$1 mode=$2 kernel=$3 ctas=$4 out=$5
NCU="${CUDA_HOME:-/usr/local/cuda}/bin/ncu"
report=/tmp/ncu_$(basename "$out")
PYTHONPATH=".:${PYTHONPATH:-}" timeout 240 "$NCU" --set full --import-source yes --kernel-name "regex:$kernel" \
  --launch-skip 1 --launch-count 1 -f -o "$report" python3 scripts/ncu_case.py "$case_name" "$mode" >"$out.ncu.log" 2>&1
"$NCU" -i "$report.ncu-rep" --page source --csv --print-source sass >"$report.csv" 2>>"$out.ncu.log"
{
  headline='Duration|Registers Per Thread|Achieved Occupancy|Compute \(SM\) Throughput|Memory Throughput'
  headline+='|L1/TEX Hit Rate|Issue Slots Busy|Local Memory Spilling Requests'
  "$NCU" -i "$report.ncu-rep" --page details --csv 2>/dev/null | grep -E "\"($headline)\""
  python3 scripts/ncu_phases.py "$report.csv" "$ctas" 0.005
} >"$out.txt" 2>&1
tail -n 4 "$out.ncu.log" >>"$out.txt"
