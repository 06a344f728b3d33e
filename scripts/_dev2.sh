export CC=/usr/bin/gcc CXX=/usr/bin/g++
MOM_OPS_COMMIT=$(cat .commit) BENCH_MERGE=1 BENCH_PROVIDERS=mom_ops BENCH_MODES=fwd PROFILE_CASES="gdn_T32768_H16_D128_n32:fwd" SKIP_PROBE=1 TEST_TIMEOUT=200 bash scripts/gpu_check.sh "test_gdn_ws or (split_forward and not training) or fused_wide" gdn_T32768_H16_D128_n32,layer_340M_B8 > $OUT/gc.log 2>&1
MOM_OPS_GDN_WS=0 python3 scripts/profile_case.py gdn_T32768_H16_D128_n32 fwd 2>&1 | grep -E "kernel|total" | head -5 >> $OUT/gc.log
PYTHONPATH=/tmp/mom_ops_site timeout 150 /usr/local/cuda/bin/compute-sanitizer --tool racecheck python3 -m pytest -q -x tests/test_gdn_ws.py -k "value_blocks" -p no:cacheprovider > $OUT/race.log 2>&1; tail -4 $OUT/race.log >> $OUT/gc.log
PYTHONPATH=/tmp/mom_ops_site timeout 120 /usr/local/cuda/bin/compute-sanitizer --tool memcheck python3 -m pytest -q -x tests/test_gdn_ws.py -k "value_blocks" -p no:cacheprovider > $OUT/mem.log 2>&1; tail -4 $OUT/mem.log >> $OUT/gc.log
rm -rf $OUT/plots
tail -c 7000 $OUT/gc.log
