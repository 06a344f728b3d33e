#!/usr/bin/env bash
# On a GPU, after scripts/gpu_check.sh has built mom_ops: the scan's opt-in variants against the default, one bench
# run per setting (JSON and log under $OUT/variants/), then a table of ms per (case, mode) and setting. For choosing
# defaults; the results file of record stays bench/results/<gpu>.json.
#   bash scripts/gdn_variants.sh [bench --only list, default gdn_T32768]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT/variants"
ONLY="${1:-gdn_T32768}"
export PYTHONPATH="/tmp/mom_ops_site:.:${PYTHONPATH:-}"
# name:environment (MOM_OPS_GDN_SPLIT=0 is the fused forward everywhere, for reference)
# VARIANTS="name:ENV=1 ENV2=0;name2:..." replaces the list.
settings=("default:" "chain_bv16:MOM_OPS_GDN_CHAIN_BV=16" "chain_bv32:MOM_OPS_GDN_CHAIN_BV=32"
          "chain_bv64:MOM_OPS_GDN_CHAIN_BV=64" "bwd_chain:MOM_OPS_GDN_BWD_SPLIT=0"
          "fused:MOM_OPS_GDN_SPLIT=0 MOM_OPS_GDN_BWD_SPLIT=0")
[ -n "${VARIANTS:-}" ] && IFS=';' read -ra settings <<<"$VARIANTS"
for setting in "${settings[@]}"; do
  name=${setting%%:*}
  # shellcheck disable=SC2086  # the variables are words on purpose
  env ${setting#*:} timeout "${VARIANT_TIMEOUT:-240}" python3 -m bench.run --out "$OUT/variants/$name.json" --plots '' \
    --only "$ONLY" --providers mom_ops >"$OUT/variants/$name.log" 2>&1 || echo "$name: bench failed (variants/$name.log)"
done
python3 - "$OUT/variants" "${settings[@]}" <<'PY'
import json, os, sys
folder, names = sys.argv[1], [s.split(":")[0] for s in sys.argv[2:]]
table = {}
for name in names:
    path = os.path.join(folder, name + ".json")
    if os.path.exists(path):
        for r in json.load(open(path))["records"]:
            table.setdefault((r["case"], r["mode"]), {})[name] = r["ms"]
print(f"{'case':34s} {'mode':7s}" + "".join(f"{n:>16s}" for n in names))
for (case, mode), row in sorted(table.items()):
    print(f"{case:34s} {mode:7s}" + "".join(f"{row[n]:16.3f}" if n in row else f"{'-':>16s}" for n in names))
PY
