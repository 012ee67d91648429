#!/usr/bin/env bash
# Parity on a GPU machine: the binary built on the CPU machine, copied over, runs the exported
# models on CUDA and is compared with transformers' reference (computed there, on its CPU).
#
# The GPU machine has torch 2.11+cu130, transformers and scikit-image but no Rust and no network.
# Build and stage here:
#   make build && mkdir -p dist && strip -o dist/siglip-serve target/release/siglip-serve
#   pip download (cp312 manylinux) transformers==5.24.0 regex into .whl/   (see README, "GPU")
# then run this script from the repository root there, carrying dist/ and .whl/.
set -euo pipefail

work=${WORK:-/tmp/siglip-gpu}
bin=$PWD/dist/siglip-serve
mkdir -p "$work"

source gpu/env.sh
python3 -c 'import torch, transformers, PIL; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__, "Pillow", PIL.__version__)'

python3 python/make_test_assets.py --out "$work/assets" > /dev/null
export_random() {
  python3 -m siglip_export random --shape "$1" --dtype "$2" --out "$work/models/$1" > /dev/null 2>&1
}
export_random tiny float32,bfloat16,float16
export_random tiny-siglip2 float32
export_random base-224 float32,bfloat16
python3 python/make_parity_suite.py --build "$work" --out "$work/parity" > /dev/null 2>&1

echo "== parity on CUDA (binary built on the CPU machine)"
"$bin" parity --suite "$work/parity/suite.json" --device cuda | awk '/^pixel/ || /input ids/ {show=1} /^  [^ ]/ && $3 == "0.000000" {next} show'
echo "== the same binary classifying a photo on CUDA"
"$bin" classify --model-dir "$work/models/base-224" --device cuda \
  --dtype bfloat16 "$work/assets/images/chelsea_progressive.jpg" --labels "a photo of a cat" "a rocket" 2>/dev/null
