export CC=/usr/bin/gcc CXX=/usr/bin/g++ MAX_JOBS=16
site=/tmp/mom_ops_site; python3 -m pip install -q --no-index --no-deps --target $site .whl/*.whl > /dev/null 2>&1; export PYTHONPATH=$site
python3 setup.py build_ext --inplace > $OUT/build.log 2>&1 || { grep error $OUT/build.log | head; exit 1; }
timeout 90 python3 -m pytest -q -x tests/test_gdn_ws.py -p no:cacheprovider 2>&1 | tail -5
timeout 60 python3 scripts/profile_case.py gdn_T32768_H16_D128_n32 fwd 2>&1 | grep -E "gdn_|total" | head -4
MOM_OPS_GDN_WS=0 timeout 60 python3 scripts/profile_case.py gdn_T32768_H16_D128_n32 fwd 2>&1 | grep -E "gdn_|total" | head -3
