"""AOTInductor compilation of an exported model's vision tower, for the device that will serve it.

A traced TorchScript tower runs its graph op by op. AOTInductor (``torch.export`` + Inductor)
compiles the tower ahead of time into a package of generated, fused kernels for one kind of
device — the CPU, or CUDA with this machine's GPU architecture — and a range of batch sizes. The
server loads the package through libtorch, no Python involved, and uses it in place of the traced
vision tower (``--backend auto|aoti``). The text tower stays TorchScript: its results are cached
per label.

Run it where the model will be served (same kind of GPU): a CUDA package holds machine code for
the GPU it was compiled on. It reads the weights from the checkpoint named in the manifest
(``source.checkpoint``), checks the package against the traced tower on this device, and records
it in ``manifest.json`` under ``towers[dtype]["compiled_vision"][device]``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from . import manifest
from .checkpoint import load_tokenizer, resolve_checkpoint
from .export import ExportError
from .towers import ATTN_IMPLEMENTATION, DTYPES, VisionEmbed, max_diff, sample_inputs

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda")


def compile_vision(model_dir: Path, *, device: str, dtype: str, max_batch: int, max_autotune: bool = False) -> dict[str, Any]:
    """Compiles, validates and records one package; returns its manifest entry plus figures.
    ``max_autotune`` lets Inductor time alternative matmul kernels on this device (much longer
    compile, possibly faster package)."""
    from transformers import SiglipModel

    if device not in DEVICES:
        raise ExportError(f"device {device!r}: choose from {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ExportError("--device cuda: this machine's torch sees no CUDA device (compile where the model is served)")
    if max_batch < 1:
        raise ExportError("--max-batch must be at least 1")
    if not (model_dir / "manifest.json").is_file():
        raise ExportError(f"{model_dir} has no manifest.json: export the model there first (export or random)")
    model_manifest = json.loads((model_dir / "manifest.json").read_text())
    if "naflex" in model_manifest["image"]:
        raise ExportError(f"{model_dir} is a SigLIP 2 NaFlex model: its vision tower takes patches, masks and grids, "
                          "which compile does not handle; serve its TorchScript tower (--backend torchscript or auto)")
    towers = model_manifest["towers"]
    if dtype not in towers:
        raise ExportError(f"{model_dir} has no {dtype} towers (it has {', '.join(towers)}); export that dtype first")
    t0 = time.time()
    source = model_manifest["source"]
    ckpt = resolve_checkpoint(source["checkpoint"], source.get("revision"))
    model = SiglipModel.from_pretrained(str(ckpt.path), attn_implementation=ATTN_IMPLEMENTATION, dtype=torch.float32)
    vision = VisionEmbed(model.vision_model.to(DTYPES[dtype])).to(device).eval()
    pixels, _ = sample_inputs(ckpt.path, load_tokenizer(ckpt.path))
    pixels = pixels.to(device=device, dtype=DTYPES[dtype])

    # Batch 1 must stay dynamic too: export with 2 examples and declare the range.
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with torch.no_grad():
        program = torch.export.export(vision, (pixels[:2],), dynamic_shapes=({0: batch},), strict=False)
    file = f"vision.{dtype}.{device}.pt2"
    path = model_dir / file
    # Compiled and checked under another name, then moved into place with the manifest: an
    # interrupted or failed compile leaves the directory as it was (a package already there
    # included, and the manifest entry that describes it).
    staging = model_dir / f".partial.{file}"  # aoti_compile_and_package wants a .pt2 name
    staging.unlink(missing_ok=True)
    t1 = time.time()
    try:
        torch._inductor.aoti_compile_and_package(program, package_path=str(staging),
                                                 inductor_configs={"max_autotune": max_autotune})
        log.info("compiled %s in %.1fs", file, time.time() - t1)
        figures = _validate(staging, model_dir / towers[dtype]["vision"], vision, pixels, device, DTYPES[dtype])
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    entry = {"file": file, "max_batch": max_batch, "max_autotune": max_autotune, "torch": torch.__version__}
    if device == "cuda":
        entry["gpu"] = torch.cuda.get_device_name()
    towers[dtype].setdefault("compiled_vision", {})[device] = entry
    manifest.write(model_manifest, model_dir)
    log.info("%s: %s, recorded in manifest.json", file, figures)
    return {"entry": entry, "validation": figures, "seconds": round(time.time() - t0, 1)}


def _validate(
    package: Path, traced: Path, vision: torch.nn.Module, pixels: torch.Tensor, device: str, dtype: torch.dtype,
) -> dict[str, float]:
    """The package against the traced TorchScript tower and eager PyTorch, on this device, at
    batch 1 and 3 (generated kernels may sum in another order: same tolerance as tracing)."""
    compiled_tower = torch._inductor.aoti_load_package(str(package))
    traced_tower = torch.jit.load(str(traced), map_location=device)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    report = {}
    with torch.no_grad():
        for n in (1, 3):
            embeds = compiled_tower(pixels[:n])
            if embeds.shape[0] != n:
                raise ExportError(f"batch {n}: the package returned shape {tuple(embeds.shape)}")
            diff = max(max_diff(embeds, traced_tower(pixels[:n])), max_diff(embeds, vision(pixels[:n])))
            report[f"compiled_vs_traced_b{n}"] = diff
            if diff > tolerance:
                raise ExportError(f"batch {n}: compiled vs traced max diff {diff:g} > {tolerance:g}")
    return report
