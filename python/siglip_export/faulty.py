"""A test model whose vision tower fails inside libtorch for inputs a test chooses.

The server must tell a device that keeps failing from a client's bad input, retry a batch that ran
out of memory in halves, and report its health truthfully. None of that can be tested on a CPU
with a healthy model, and a mock of libtorch would not test the server's real error path. This
writes a copy of an exported model directory whose float32 vision tower is the traced tower
wrapped in a small scripted TorchScript module that raises a ``RuntimeError`` (inside libtorch's
interpreter, as a real CUDA fault does) for inputs that no real test image produces by accident:

- any image all white (every value 1.0 after normalisation): ``CUDA error: device-side assert
  triggered``, the batch fails whatever its size (a fault, not a size problem);
- a batch of more than 2 images with one all black (every value -1.0): ``CUDA out of memory``, so
  that the same images in smaller batches succeed (what halving a batch is for);
- any image pure red (channel 0 at 1.0, the others at -1.0): ``CUDA out of memory`` at every
  batch size, even alone (only that image can fail).

Raw 224x224 RGB8 frames of those colours reach the tower unchanged (no resize), so a test drives
each failure with an ordinary request. The text tower, tokenizer files and their start-up check are
the source's own: the server starts on it as on the source model. Only float32 is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import manifest
from .export import ExportError

DTYPE = "float32"


class FaultyVision(nn.Module):
    """The traced vision tower, behind the faults described in the module docstring."""

    def __init__(self, tower: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # Normalised values of white and black 8-bit pixels are +-1.0; float32 rounding of
        # 255 * (1/255) may land a hair below, so compare with a margin (a local: TorchScript
        # does not close over module globals).
        saturated = 0.99
        n = pixel_values.shape[0]
        per_image = pixel_values.float().flatten(1)
        white = per_image.min(dim=1).values >= saturated
        black = per_image.max(dim=1).values <= -saturated
        channels = pixel_values.float().flatten(2)
        red = (channels[:, 0].min(dim=1).values >= saturated) & (channels[:, 1:].flatten(1).max(dim=1).values <= -saturated)
        if bool(white.any()):
            raise RuntimeError("CUDA error: device-side assert triggered (siglip-export faulty: an all-white image)")
        if bool(red.any()) or (n > 2 and bool(black.any())):
            raise RuntimeError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.10 GiB total capacity) "
                "(siglip-export faulty: a pure red image, or a black one in a batch of more than 2)"
            )
        return self.tower(pixel_values)


def make_faulty(source: Path, out: Path) -> dict[str, Any]:
    """Writes the faulty copy of the model directory ``source`` (exported with float32 towers)
    to ``out``; returns what the faults are, for the CLI to print."""
    source_manifest_path = source / "manifest.json"
    if not source_manifest_path.is_file():
        raise ExportError(f"{source} has no manifest.json: export the model there first (export or random)")
    source_manifest = json.loads(source_manifest_path.read_text())
    towers = source_manifest["towers"]
    if DTYPE not in towers:
        raise ExportError(f"{source} has no {DTYPE} towers (it has {', '.join(towers)}); export {DTYPE} first")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in source_manifest["files"].values():
        shutil.copy2(source / name, out / name)
    files = towers[DTYPE]
    shutil.copy2(source / files["text"], out / files["text"])
    traced = torch.jit.load(str(source / files["vision"]), map_location="cpu")
    faulty = torch.jit.script(FaultyVision(traced))
    faulty.save(str(out / files["vision"]))
    _check(faulty, traced, source_manifest["image"]["size"])
    faulty_manifest = {
        **source_manifest,
        "model_id": f"{source_manifest['model_id']}-faulty",
        "towers": {DTYPE: {"vision": files["vision"], "text": files["text"]}},
    }
    manifest.write(faulty_manifest, out)
    return {"out": str(out), "model_id": faulty_manifest["model_id"], "dtype": DTYPE}


def _check(faulty: torch.jit.ScriptModule, traced: torch.jit.ScriptModule, size: int) -> None:
    """Ordinary pixels pass through unchanged; each chosen input raises what it should."""
    generator = torch.Generator().manual_seed(0)
    ordinary = torch.rand(3, 3, size, size, generator=generator) * 2 - 1
    with torch.no_grad():
        if not torch.equal(faulty(ordinary), traced(ordinary)):
            raise ExportError("the faulty tower changed the embeddings of ordinary images")
        white = torch.ones(1, 3, size, size)
        black = -torch.ones(1, 3, size, size)
        red = torch.cat([torch.ones(1, 1, size, size), -torch.ones(1, 2, size, size)], dim=1)
        faulty(torch.cat([ordinary[:1], black]))  # small batches with black pass
        for batch, needle in (
            (white, "device-side assert"),
            (red, "out of memory"),
            (torch.cat([ordinary, black]), "out of memory"),
        ):
            try:
                faulty(batch)
            except (RuntimeError, torch.jit.Error) as e:  # raised in the interpreter: a jit.Error
                if needle not in str(e):
                    raise ExportError(f"the faulty tower raised {e!s:.200} instead of {needle!r}") from e
            else:
                raise ExportError(f"the faulty tower did not raise {needle!r} for a batch of {batch.shape[0]}")
