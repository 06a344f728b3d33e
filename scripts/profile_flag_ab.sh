#!/usr/bin/env bash
# A/B of a runtime switch by kernel times: scripts/profile_case.py for each case with FLAG=0 and FLAG=1, alternating,
# each in a process of its own, ROUNDS times (default 2); prints the rows of the kernels matching PATTERN (default:
# all) and the total kernel time per call.
#   bash scripts/profile_flag_ab.sh FLAG "case:mode ..." [PATTERN]
# e.g. bash scripts/profile_flag_ab.sh MOM_OPS_GDN_GRADS_ITEMS "gdn_T32768_H16_D128_n32:fwdbwd" grads
set -uo pipefail
cd "$(dirname "$0")/.."
flag=$1 cases=$2 pattern=${3:-.}
for round in $(seq "${ROUNDS:-2}"); do
  for case_mode in $cases; do
    for value in 0 1; do
      echo "== round $round ${case_mode} $flag=$value"
      env "$flag=$value" python3 scripts/profile_case.py "${case_mode%%:*}" "${case_mode##*:}" mom_ops 40 2>&1 |
        grep -E "$pattern|Self CUDA time total" | sed -E 's/ {2,}/ /g' | cut -c1-200
    done
  done
done
