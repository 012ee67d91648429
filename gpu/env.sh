# Sourced by the GPU scripts (gpu/parity.sh, bench/gpu.sh), from the repository root on a GPU
# machine: torch 2.11+cu130 is installed there, the binary was built on the CPU machine.
# - carried wheels (.whl/): transformers >= 5.24, since 5.17 (preinstalled there) traces the text
#   tower with a CPU-pinned attention mask; torchvision for the torchvision processor's references;
# - PYTHONPATH: the export package (python/siglip_export) by path, as `make venv` cannot install it
#   there (no venv, no network); `python3 -m siglip_export` then runs it as `siglip-export` does;
# - LD_LIBRARY_PATH: the binary's RUNPATH names the CPU machine's venv; use this machine's torch.
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/python
torch_lib=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH=$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
