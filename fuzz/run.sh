#!/usr/bin/env bash
# Runs each built fuzz target for FUZZ_SECONDS (`make fuzz` builds them first) on a scratch
# corpus seeded from fuzz/seeds (read only); a crash fails the run and names its input.
# Last line: fuzz: targets=… seconds_each=… runs=… crashes=…
set -euo pipefail
: "${FUZZ_BIN:?folder of the built targets}" "${OUT_DIR:?scratch folder}" "${FUZZ_SECONDS:=60}"
: "${TORCH_LIB:?libtorch folder}"
# The targets link libtorch through the library, whose rpath (build.rs) only the server's own
# binaries get.
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cd "$(dirname "$0")"
targets=(decode reassembly request)
runs=0
crashes=0
for target in "${targets[@]}"; do
  corpus="$OUT_DIR/corpus/$target" artifacts="$OUT_DIR/artifacts/$target"
  rm -rf "$artifacts"  # only this run's crashes are reported
  mkdir -p "$corpus" "$artifacts"
  log="$OUT_DIR/$target.log"
  # -rss_limit_mb: the targets' limits are 1 Mpx and 1 MiB, so 2 GB is a blow-up, not a big
  # image; -timeout: one input taking 10 s is a hang. The first corpus folder takes new inputs.
  status=0
  "$FUZZ_BIN/$target" "$corpus" "seeds/$target" -max_total_time="$FUZZ_SECONDS" \
    -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 -artifact_prefix="$artifacts/" \
    > "$log" 2>&1 || status=$?
  n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  runs=$((runs + ${n:-0}))
  echo "$target: runs=${n:-0} exit=$status (log: $log)"
  if [ "$status" != 0 ]; then
    crashes=$((crashes + 1))
    grep -E '^(==[0-9]+== ERROR|SUMMARY|thread .* panicked)' "$log" | head -n 5 || true
    for artifact in "$artifacts"/*; do
      [ -e "$artifact" ] && echo "$target: crash input $artifact (replay: $FUZZ_BIN/$target $artifact)"
    done
  fi
done
echo "fuzz: targets=${#targets[@]} seconds_each=$FUZZ_SECONDS runs=$runs crashes=$crashes"
[ "$crashes" = 0 ]
