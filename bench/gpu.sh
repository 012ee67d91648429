#!/usr/bin/env bash
# The benchmark on a GPU machine (torch 2.11+cu130 and transformers installed, no network, no
# Rust): the binary built on the CPU machine, so400m-384 (or $SHAPE) with random weights exported
# there in bfloat16 and its vision tower compiled with AOTInductor for this GPU; the server under
# load over gRPC once per way of running the tower (VARIANTS, default "torchscript aoti"; add
# torchscript-jit-off for TorchScript without its optimising executor, about 70 s more), the model
# alone, the Python way, and MFU against the card's measured bf16 matmul peak; bench/tower_probe.py
# on the tower alone (stalls at new batch sizes with the executor on and off, kernel mix;
# PROBE_ARGS=--compile adds torch.compile; COMPILE_ARGS=--max-autotune tunes the package's matmuls,
# a much longer compile). About 7.5 minutes, estimated: the AOTInductor compile of so400m on the
# GPU machine (capped at COMPILE_TIMEOUT, 240 s; near the cap the run passes 8 minutes) and the
# servers' warm-up at every batch size have not been timed there. Stage on the CPU machine:
#   make build && mkdir -p dist && strip -o dist/siglip-serve target/release/siglip-serve
#   and the transformers 5.24 + regex wheels in .whl/ (gpu/README.md)
# then run `bash bench/gpu.sh` from the repository root there, carrying dist/ and .whl/ (gpu/README.md,
# "GPU": under `timeout`, then copy /tmp/siglip-bench/out back).
# Before spending GPU time, `DEVICE=cpu SHAPE=tiny bash bench/gpu.sh` runs the same script on the
# CPU machine (with the venv's python3 first on PATH) as a check of the script itself.
set -euo pipefail
work=${WORK:-/tmp/siglip-bench}
shape=${SHAPE:-so400m-384}
max_batch=${MAX_BATCH:-64}
device=${DEVICE:-cuda}
variants=${VARIANTS:-torchscript aoti}
mkdir -p "$work/out"
source gpu/env.sh

t0=$SECONDS
python3 python/make_test_assets.py --out "$work/assets" > /dev/null
python3 -m siglip_export random --shape "$shape" --dtype bfloat16 --out "$work/$shape" > "$work/export.log" 2>&1 \
  || { tail -20 "$work/export.log"; exit 1; }
echo "export $shape bf16: $((SECONDS - t0)) s"
if [[ " $variants " == *" aoti "* ]]; then
  t1=$SECONDS
  # Bounded (COMPILE_TIMEOUT, s): an overlong compile must not cost the rest of the run. The
  # package is compiled under another name and moved into place with the manifest, so an
  # interrupted compile leaves the model as it was.
  # shellcheck disable=SC2086 # COMPILE_ARGS (e.g. --max-autotune) is a list of arguments
  if timeout "${COMPILE_TIMEOUT:-240}" python3 -m siglip_export compile --model-dir "$work/$shape" \
       --device "$device" --dtype bfloat16 --max-batch "$max_batch" ${COMPILE_ARGS:-} > "$work/compile.log" 2>&1; then
    echo "AOTInductor compile, $device bf16, batch 1..$max_batch: $((SECONDS - t1)) s"
  else
    tail -20 "$work/compile.log"
    echo "AOTInductor compile failed or took over ${COMPILE_TIMEOUT:-240} s (compile.log): benchmarking without the aoti variant"
    variants=${variants//aoti/}
  fi
fi
gflops=$(python3 bench/flops.py --checkpoint "$work/$shape-checkpoint" | python3 -c 'import json,sys; print(json.load(sys.stdin)["gflops_per_image"])')
peak=$(python3 bench/peak.py --device "$device" --dtype bfloat16 | python3 -c 'import json,sys; print(json.load(sys.stdin)["tflops"])')
echo "vision tower: $gflops GFLOP/image; measured bf16 matmul peak: $peak TFLOP/s"
# The tower outside the server: stalls at new batch sizes, executor settings, eager, kernel mix.
# shellcheck disable=SC2086 # PROBE_ARGS is a list of arguments
python3 bench/tower_probe.py --model "$work/$shape" --dtype bfloat16 --device "$device" --batch "$max_batch" \
  --seconds 2 --peak-tflops "$peak" --profile ${PROBE_ARGS:-} --json "$work/out/probe.json" 2> "$work/probe.log" \
  || tail -20 "$work/probe.log"

BIN=$PWD/dist/siglip-serve PY=python3 MODEL=$work/$shape CHECKPOINT=$work/$shape-checkpoint \
  DEVICE=$device DTYPES=bfloat16 VARIANTS=$variants PYTHON_DTYPE=bfloat16 THREADS=${THREADS:-8} \
  PHASE_SECONDS=${PHASE_SECONDS:-8} CONCURRENCY=${CONCURRENCY:-128} MAX_BATCH=$max_batch \
  ASSETS=$work/assets OUT_DIR=$work/out \
  REPORT_ARGS="--gflops-per-image $gflops --peak-tflops $peak" bash bench/run.sh \
  || echo "bench/run.sh: a run failed (above); the table has the others"
# What the servers' warm-up (every batch size up to MAX_BATCH on CUDA) cost.
grep -H "warmed up rounds=" "$work"/out/serve-*.log | sed 's|^.*/serve-||; s/\.log:.*INFO [^ ]* / /' || true
echo "total: $((SECONDS - t0)) s"
