#!/usr/bin/env bash
# Two server binaries side by side in one run: the same closed-loop load (siglip-serve bench from
# BENCH_BIN against each), ROUNDS rounds, A and B alternating (A first in odd rounds, B first in
# even ones), so that the machine's drift hits both alike. Prints each run's images/s and CPU per
# image (the server's, the model's, the server's own outside the model), then the medians and B
# against A; last line:
#   ab: a_img_s=… b_img_s=… a_cpu_ms_per_img=… b_cpu_ms_per_img=… a_own_ms_per_img=… b_own_ms_per_img=…
# A binary that does not export siglip_cpu_seconds still gets its process and model CPU (from
# /proc); its own CPU then includes the worker's batching share.
# Settings: BIN_A BIN_B MODEL (required), BENCH_BIN (default BIN_B), DTYPE (float32), THREADS
# (0: all cores), CONCURRENCY (8), MAX_BATCH (8), PHASE_SECONDS (15), ROUNDS (3), ASSETS
# (build/assets), OUT_DIR (build/ab).
set -euo pipefail
: "${BIN_A:?}" "${BIN_B:?}" "${MODEL:?}"
# shellcheck source=bench/listening.sh
. "$(dirname "$0")/listening.sh"
bench_bin=${BENCH_BIN:-$BIN_B}
threads=${THREADS:-0}
[ "$threads" = 0 ] && threads=$(nproc)
assets=${ASSETS:-build/assets}
out=${OUT_DIR:-build/ab}
mkdir -p "$out"
rm -f "$out"/ab-*.json
photos=("$assets/images/chelsea_progressive.jpg" "$assets/images/astronaut_baseline.jpg"
        "$assets/images/coffee_444.jpg" "$assets/images/rocket_420.jpg")

server_pid=""
trap '[ -z "$server_pid" ] || kill "$server_pid" 2> /dev/null || true' EXIT
one() {
  local which=$1 round=$2 bin log addr
  bin=$([ "$which" = a ] && echo "$BIN_A" || echo "$BIN_B")
  log="$out/serve-$which-$round.log"
  "$bin" serve --model-dir "$MODEL" --device cpu --dtype "${DTYPE:-float32}" --threads "$threads" \
    --max-batch-size "${MAX_BATCH:-8}" --grpc-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 > "$log" 2>&1 &
  server_pid=$!
  addr=$(listening_addr "$log" "$server_pid")
  [ -n "$addr" ] || { tail -20 "$log"; echo "ab: server $which did not start"; exit 1; }
  echo "== round $round: $which ($bin)"
  "$bench_bin" bench --addr "http://$addr" --images "${photos[@]}" --labels-file bench/labels.json \
    --labels 10 --concurrency "${CONCURRENCY:-8}" --seconds "${PHASE_SECONDS:-15}" --streams 0 \
    --fair-streams 0 --skip-model-only --server-pid "$server_pid" --metrics-addr "$(metrics_addr "$log")" \
    --model-dir "$MODEL" --dtype "${DTYPE:-float32}" --threads "$threads" \
    --json "$out/ab-$which-$round.json" | grep -E '^(closed loop|server CPU|machine CPU)'
  kill -TERM "$server_pid"
  wait "$server_pid" || true
  server_pid=""
}

for round in $(seq "${ROUNDS:-3}"); do
  if [ $((round % 2)) = 1 ]; then one a "$round"; one b "$round"; else one b "$round"; one a "$round"; fi
done

"${PY:-python3}" "$(dirname "$0")/ab_report.py" "$out"
