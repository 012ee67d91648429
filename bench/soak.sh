#!/usr/bin/env bash
# `make soak`: the tiny model served with short timeouts (so that abusers are cut off many times
# a minute), `siglip-serve soak` against it for SOAK_MINUTES, then SIGTERM, which must drain
# cleanly. The last line is the soak tool's:
#   soak: minutes=… requests=… errors_unexpected=… rss_start_mb=… rss_end_mb=… p99_ms=…
# Settings from the environment: BIN MODEL ASSETS (required), SOAK_MINUTES (10), OUT_DIR
# (build/soak).
set -euo pipefail
: "${BIN:?}" "${MODEL:?}" "${ASSETS:?}"
# shellcheck source=bench/listening.sh
. "$(dirname "$0")/listening.sh"
out=${OUT_DIR:-build/soak}
mkdir -p "$out"
log="$out/serve.log"
"$BIN" serve --model-dir "$MODEL" --device cpu --dtype float32 \
  --grpc-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 \
  --max-stream-seconds 10 --first-message-timeout-seconds 2 --idle-timeout-seconds 5 \
  > "$log" 2>&1 &
server_pid=$!
trap 'kill "$server_pid" 2> /dev/null || true' EXIT
addr=$(listening_addr "$log" "$server_pid")
[ -n "$addr" ] || { tail -20 "$log"; echo "soak: the server did not start ($log)"; exit 1; }
photos=("$ASSETS/images/chelsea_progressive.jpg" "$ASSETS/images/astronaut_baseline.jpg"
        "$ASSETS/images/coffee_444.jpg" "$ASSETS/images/rocket_420.jpg")
status=0
"$BIN" soak --addr "http://$addr" --minutes "${SOAK_MINUTES:-10}" --images "${photos[@]}" \
  --labels-file bench/labels.json --server-pid "$server_pid" > "$out/soak.txt" || status=$?
kill -TERM "$server_pid"
wait "$server_pid" || { echo "soak: the server did not exit cleanly on SIGTERM ($log)"; status=1; }
trap - EXIT
# The summary last, as the README promises.
grep -v '^soak:' "$out/soak.txt" || true
grep '^soak:' "$out/soak.txt" || echo "soak: no summary (see $out/soak.txt)"
exit "$status"
