# Sourced by bench/run.sh and bench/soak.sh.
# listening_addr LOG PID: prints the gRPC address a `siglip-serve serve` started in the background
# (PID, logging to LOG) says it listens on, once it does (within 60 s); prints nothing if the
# process exits first or never says.
listening_addr() {
  local log=$1 pid=$2 addr=""
  for _ in $(seq 600); do
    addr=$(sed -n 's/^siglip-serve: gRPC listening on //p' "$log")
    [ -n "$addr" ] && break
    kill -0 "$pid" 2> /dev/null || break
    sleep 0.1
  done
  echo "$addr"
}

# metrics_addr LOG: the metrics address the server logging to LOG printed (once it listens).
metrics_addr() {
  sed -n 's/^siglip-serve: metrics listening on //p' "$1"
}
