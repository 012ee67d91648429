#!/usr/bin/env bash
# Parity on a GPU machine: the binary built on the CPU machine, copied over, runs the exported
# models on CUDA and is compared with transformers' reference (computed there, on its CPU).
#
# The GPU machine has torch 2.11+cu130, transformers and scikit-image but no Rust and no network.
# Build and stage here:
#   make build && mkdir -p dist && strip -o dist/siglip-serve target/release/siglip-serve
#   pip download (cp312 manylinux) transformers==5.24.0 regex torchvision==0.26.0 into .whl/   (gpu/README.md)
# then run this script from the repository root there, carrying dist/ and .whl/.
set -euo pipefail

work=${WORK:-/tmp/siglip-gpu}
bin=$PWD/dist/siglip-serve
mkdir -p "$work"

source gpu/env.sh
python3 -c 'import torch, transformers, PIL; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__, "Pillow", PIL.__version__)'

python3 python/make_test_assets.py --out "$work/assets" > /dev/null
# Each step logs to $work/<step>.log and shows its tail if it fails; `step` stops the script.
try_step() {
  local name=$1
  shift
  "$@" > "$work/$name.log" 2>&1 || { tail -20 "$work/$name.log"; echo "$name failed ($work/$name.log)"; return 1; }
}
step() { try_step "$@" || exit 1; }
step export-tiny python3 -m siglip_export random --shape tiny --dtype float32,bfloat16,float16 --out "$work/models/tiny"
step export-tiny-siglip2 python3 -m siglip_export random --shape tiny-siglip2 --dtype float32 --out "$work/models/tiny-siglip2"
step export-base-224 python3 -m siglip_export random --shape base-224 --dtype float32,bfloat16 --out "$work/models/base-224"
# The compiled-tower row: tiny with its vision tower compiled by AOTInductor for this GPU (left
# out of the table if the compile fails, e.g. without the CUDA toolkit).
rm -rf "$work/models/tiny-aoti" && cp -r "$work/models/tiny" "$work/models/tiny-aoti"
try_step compile-tiny-aoti python3 -m siglip_export compile --model-dir "$work/models/tiny-aoti" \
  --device cuda --dtype float32 --max-batch 8 || echo "no tiny-aoti row"
step parity-suite python3 python/make_parity_suite.py --build "$work" --out "$work/parity"

echo "== parity on CUDA (binary built on the CPU machine)"
"$bin" parity --suite "$work/parity/suite.json" --device cuda | awk '/^pixel/ || /input ids/ {show=1} /^  [^ ]/ && $5 == "0.000000" {next} show'
echo "== the same binary classifying a photo on CUDA"
"$bin" classify --model-dir "$work/models/base-224" --device cuda \
  --dtype bfloat16 "$work/assets/images/chelsea_progressive.jpg" --labels "a photo of a cat" "a rocket" 2>/dev/null
