export CC=/usr/bin/gcc CXX=/usr/bin/g++ MAX_JOBS=16
site=/tmp/mom_ops_site; python3 -m pip install -q --no-index --no-deps --target $site .whl/*.whl > /dev/null 2>&1; export PYTHONPATH=$site
python3 setup.py build_ext --inplace > $OUT/build.log 2>&1 || { grep error $OUT/build.log | head; exit 1; }
timeout 90 python3 -m pytest -q -x tests/test_gdn_ws.py -p no:cacheprovider 2>&1 | tail -5
timeout 60 python3 scripts/profile_case.py gdn_T32768_H16_D128_n32 fwd 2>&1 | grep -E "gdn_|total" | head -4
MOM_OPS_GDN_WS=0 timeout 60 python3 scripts/profile_case.py gdn_T32768_H16_D128_n32 fwd 2>&1 | grep -E "gdn_|total" | head -3
cp bench/results/h200.json $OUT/h200.json
timeout 120 python3 -m bench.run --out $OUT/h200.json --plots /tmp/plots --only gdn_T32768_H16_D128_n32,gdn_T32768_H16_D128_n1,gdn_T32768_H4_D256_n32 --providers mom_ops --modes fwd --merge 2>$OUT/bench.err | grep -E "healthy|mom_ops" | head -8
timeout 100 python3 -m pytest -q tests/test_gdn_split.py -k "split_forward and not training" -p no:cacheprovider 2>&1 | tail -3
