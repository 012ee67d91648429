#!/usr/bin/env bash
# One benchmark run: for each dtype the server under load and the model alone, then the Python
# way, then one table (bench/report.py) whose last line is
#   bench: server_img_s=… model_only_img_s=… python_img_s=… vs_python=…x overhead=…% own_cpu_ms_per_img=…
#          model_slowdown=…% client_cpu=…%   (one line)
# Used by `make bench` (CPU) and bench/gpu.sh. Settings come from the environment:
#   BIN PY MODEL CHECKPOINT (required), DEVICE (cpu), DTYPES ("float32 bfloat16"), THREADS (0: all
#   cores), PHASE_SECONDS (20), CONCURRENCY (8), MAX_BATCH (8), ASSETS (build/assets),
#   OUT_DIR (build/bench), PYTHON_DTYPE (float32), TRACING (1; 0 skips the tracing run), FAIR_STREAMS (4; 0 skips the fair-share phase),
#   FAIR_MODE (latest or every), VARIANTS ("auto": how to run the towers, one
#   server run each: auto, torchscript, torchscript-jit-off, aoti), REPORT_ARGS (extra arguments
#   for report.py, e.g. MFU inputs), SECOND_MODEL (a second model directory: one more server run
#   serves it beside MODEL from one repository, and measures each model's throughput and how long
#   a caller of SECOND_MODEL waits while MODEL is flooded; unset skips it), NAFLEX_MODEL (a SigLIP 2
#   NaFlex model directory: one more server run per budget in NAFLEX_BUDGETS ("256 1024"), the first
#   dtype, closed loop, half load, the model alone and host preprocessing at that budget; unset
#   skips it).
set -euo pipefail
: "${BIN:?}" "${PY:?}" "${MODEL:?}" "${CHECKPOINT:?}"
# shellcheck source=bench/listening.sh
. "$(dirname "$0")/listening.sh"
device=${DEVICE:-cpu}
threads=${THREADS:-0}
seconds=${PHASE_SECONDS:-20}
assets=${ASSETS:-build/assets}
out=${OUT_DIR:-build/bench}
dtypes=${DTYPES:-float32 bfloat16}
# The dtype of the runs made once (NaFlex, tracing).
first_dtype=${dtypes%% *}
mkdir -p "$out"
rm -f "$out"/bench-*.json "$out"/naflex-*.json
labels=bench/labels.json
photos=("$assets/images/chelsea_progressive.jpg" "$assets/images/astronaut_baseline.jpg"
        "$assets/images/coffee_444.jpg" "$assets/images/rocket_420.jpg")
# Same threads for every contestant (libtorch's intra-op pool; 0 = all cores).
[ "$threads" = 0 ] && threads=$(nproc)

# Server (and model-alone) flags for each variant.
variant_flags() {
  case $1 in
    auto) echo "--backend auto" ;;
    torchscript) echo "--backend torchscript" ;;
    torchscript-jit-off) echo "--backend torchscript --jit-optimize false" ;;
    aoti) echo "--backend aoti" ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
  esac
}

# The bench's load: the same photos and labels for every server run.
load=(--images "${photos[@]}" --labels-file "$labels" --labels 10 --concurrency "${CONCURRENCY:-8}"
      --seconds "$seconds")

server_pid=""
tracing_pids=()
trap '[ -z "$server_pid" ] || kill "$server_pid" 2> /dev/null || true; [ ${#tracing_pids[@]} = 0 ] || kill "${tracing_pids[@]}" 2> /dev/null || true' EXIT

# start_server LOG ARGS...: `siglip-serve serve` in the background with the flags every run shares
# and ARGS, logging to LOG; sets server_pid, and addr to its gRPC address (empty when it did not
# start).
start_server() {
  local log=$1
  shift
  "$BIN" serve --device "$device" --threads "$threads" --max-batch-size "${MAX_BATCH:-8}" \
    --grpc-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 "$@" > "$log" 2>&1 &
  server_pid=$!
  addr=$(listening_addr "$log" "$server_pid")
}

# stop_server: stops what start_server started; non-zero when it did not exit cleanly.
stop_server() {
  local status=0
  kill -TERM "$server_pid" 2> /dev/null || true
  wait "$server_pid" || status=$?
  server_pid=""
  return "$status"
}

# One server run and its benchmark; returns non-zero (and leaves no server behind) on failure.
run_variant() {
  local dtype=$1 variant=$2 flags run log addr="" status=0
  flags=$(variant_flags "$variant") || return 1
  echo "== siglip-serve, $dtype on $device, $flags"
  run="$dtype-$variant"
  log="$out/serve-$run.log"
  # shellcheck disable=SC2086 # $flags is a list of arguments
  start_server "$log" --model-dir "$MODEL" --dtype "$dtype" $flags
  if [ -z "$addr" ]; then
    tail -20 "$log"
    echo "== $run: the server did not start ($log)"
    return 1
  fi
  # shellcheck disable=SC2086
  "$BIN" bench --addr "http://$addr" "${load[@]}" --server-pid "$server_pid" \
    --metrics-addr "$(metrics_addr "$log")" \
    --fair-streams "${FAIR_STREAMS:-4}" --fair-mode "${FAIR_MODE:-latest}" \
    --model-dir "$MODEL" --device "$device" --dtype "$dtype" --threads "$threads" $flags \
    --json "$out/bench-$run.json" || status=$?
  stop_server || status=$?
  [ "$status" = 0 ] || { tail -5 "$log"; echo "== $run failed ($log)"; }
  return "$status"
}

# A variant that fails is reported and the run goes on (on a GPU machine the other rows are worth
# having); the script still exits non-zero at the end.
failed=""
for dtype in $dtypes; do
  for variant in ${VARIANTS:-auto}; do
    run_variant "$dtype" "$variant" || failed="$failed $dtype-$variant"
  done
done

# Two models in one server: MODEL and SECOND_MODEL from one repository (links to both).
models_report=()
if [ -n "${SECOND_MODEL:-}" ]; then
  repo="$out/repository"
  rm -rf "$repo" && mkdir -p "$repo"
  a=$(basename "$MODEL") b=$(basename "$SECOND_MODEL")
  ln -s "$(realpath "$MODEL")" "$repo/$a"
  ln -s "$(realpath "$SECOND_MODEL")" "$repo/$b"
  echo "== siglip-serve, two models ($a flooded, $b called) on $device"
  log="$out/serve-models.log"
  start_server "$log" --model-repository "$repo"
  if [ -n "$addr" ] && "$BIN" bench --addr "http://$addr" "${load[@]}" --models "$a" "$b" \
      --model-repository "$repo" --json "$out/models.json"; then
    models_report=(--models "$out/models.json")
  else
    tail -5 "$log"
    failed="$failed two-models"
  fi
  stop_server || failed="$failed two-models-exit"
fi

# SigLIP 2 NaFlex: a server of NAFLEX_MODEL per patch budget, the first dtype, on the same photos.
naflex_report=()
if [ -n "${NAFLEX_MODEL:-}" ]; then
  for budget in ${NAFLEX_BUDGETS:-256 1024}; do
    echo "== siglip-serve, NaFlex at $budget patches, $first_dtype on $device"
    log="$out/serve-naflex-$budget.log"
    start_server "$log" --model-dir "$NAFLEX_MODEL" --dtype "$first_dtype"
    if [ -n "$addr" ] && "$BIN" bench --addr "http://$addr" "${load[@]}" --server-pid "$server_pid" \
        --metrics-addr "$(metrics_addr "$log")" --streams 0 --fair-streams 0 --skip-oip \
        --max-num-patches "$budget" --model-dir "$NAFLEX_MODEL" --device "$device" --dtype "$first_dtype" \
        --threads "$threads" --json "$out/naflex-$budget.json"; then
      naflex_report+=(--naflex "$out/naflex-$budget.json")
    else
      tail -5 "$log"
      failed="$failed naflex-$budget"
    fi
    stop_server || failed="$failed naflex-$budget-exit"
  done
fi

# Tracing's cost: two servers of the first dtype, one exporting every call's spans to the
# bench's OTLP receiver, one with tracing off; the bench alternates load between them.
tracing_report=()
if [ "${TRACING:-1}" = 1 ]; then
  sink_port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  echo "== siglip-serve, $first_dtype on $device: tracing on (ratio 1.0) against off"
  addrs=()
  for traced in off on; do
    log="$out/serve-tracing-$traced.log"
    otlp=()
    [ "$traced" = on ] && otlp=(--otlp-endpoint "http://127.0.0.1:$sink_port" --trace-sample-ratio 1)
    # Exports every 200 ms (the SDK's default is 5 s): little of one turn's export spills into
    # the next, untraced turn.
    OTEL_BSP_SCHEDULE_DELAY=200 "$BIN" serve --model-dir "$MODEL" --device "$device" --dtype "$first_dtype" \
      --threads "$threads" "${otlp[@]}" --max-batch-size "${MAX_BATCH:-8}" --grpc-addr 127.0.0.1:0 \
      --metrics-addr 127.0.0.1:0 > "$log" 2>&1 &
    tracing_pids+=($!)
    addrs+=("$(listening_addr "$log" "$!")")
    [ -n "${addrs[-1]}" ] || { tail -20 "$log"; echo "== tracing $traced: the server did not start ($log)"; }
  done
  if [ -n "${addrs[0]}" ] && [ -n "${addrs[1]}" ] && "$BIN" bench --addr "http://${addrs[0]}" \
      --traced-addr "http://${addrs[1]}" --otlp-sink-addr "127.0.0.1:$sink_port" "${load[@]}" \
      --model-dir "$MODEL" --json "$out/tracing.json"; then
    tracing_report=(--tracing "$out/tracing.json")
  else
    failed="$failed tracing"
  fi
  kill -TERM "${tracing_pids[@]}" 2> /dev/null || true
  for pid in "${tracing_pids[@]}"; do
    wait "$pid" || failed="$failed tracing-exit"
  done
  tracing_pids=()
fi

echo "== the Python way: transformers processor + SiglipModel per image, same texts, $threads threads"
"$PY" bench/python_way.py --checkpoint "$CHECKPOINT" --images "${photos[@]}" --labels-file "$labels" \
  --threads "$threads" --device "$device" --dtype "${PYTHON_DTYPE:-float32}" --seconds "$seconds" \
  | tail -n 1 > "$out/python.json" || echo '{"img_s": null}' > "$out/python.json"
cat "$out/python.json"

"$PY" bench/report.py --python "$out/python.json" "${models_report[@]}" "${tracing_report[@]}" \
  "${naflex_report[@]}" ${REPORT_ARGS:-} "$out"/bench-*.json
if [ -n "$failed" ]; then
  echo "failed:$failed"
  exit 1
fi
