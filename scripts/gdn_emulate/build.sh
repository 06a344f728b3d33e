# Sourced by run.sh and run_bwd.sh: build_drivers SOURCE PREFIX compiles SOURCE once per (K, V-block) pair the
# launches use and per dtype (bf16 1, fp16 0) into $BIN/PREFIX_<K>_<BV>_<bf16>, in parallel, and stops the script
# if any build fails (stale binaries from an earlier build are removed first, so they can never be run instead).
# The type-punning of the kernels needs -fno-strict-aliasing on the host.
# EMU_KB / EMU_BF (space lists) narrow the builds to what a run uses (run.sh / run_bwd.sh with EMU_QUICK=1).
build_drivers() {
  local source=$1 prefix=$2 pids=() kb bf pid
  for kb in ${EMU_KB:-64_64 128_64 128_128 256_32 256_64}; do
    for bf in ${EMU_BF:-1 0}; do
      rm -f "$BIN/${prefix}_${kb}_$bf"
      g++ -std=c++20 -O2 -fno-strict-aliasing -DKK="${kb%_*}" -DKBV="${kb#*_}" -DBF16=$bf -Ishim -I../../csrc \
        $TORCH_INC "$source" -o "$BIN/${prefix}_${kb}_$bf" &
      pids+=($!)
    done
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || { echo "FAIL: building $source"; exit 1; }
  done
}
