"""The towers a model directory holds, as PyTorch modules, and what it takes to check them.

`VisionEmbed` and `TextEmbed` wrap transformers' SigLIP towers into the modules the server runs:
export.py traces both to TorchScript (vision.<dtype>.pt, text.<dtype>.pt) and compile.py compiles
`VisionEmbed` with AOTInductor (vision.<dtype>.<device>.pt2). Both build them in the same dtypes
with the same attention kernel, feed them the same sample inputs and compare outputs the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .texts import builtin_sample
from .tokenizer import reference_ids

# The tower dtypes a model directory may hold (manifest.TOWER_DTYPES), by name.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Attention kernel used for tracing. sdpa traces to one aten op, equals eager exactly (NOTES.md)
# and keeps the traced graph device-agnostic.
ATTN_IMPLEMENTATION = "sdpa"


class VisionEmbed(nn.Module):
    """pixel_values (B,3,S,S) -> L2-normalised image embeddings (B,D), as SiglipModel.forward."""

    def __init__(self, vision_model: nn.Module) -> None:
        super().__init__()
        self.vision_model = vision_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        emb = self.vision_model(pixel_values=pixel_values).pooler_output
        return emb / emb.norm(p=2, dim=-1, keepdim=True)


class TextEmbed(nn.Module):
    """input_ids (B,64) -> L2-normalised text embeddings (B,D). No attention mask: SigLIP was
    trained on fixed-length padded text and pools the last position."""

    def __init__(self, text_model: nn.Module) -> None:
        super().__init__()
        self.text_model = text_model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        emb = self.text_model(input_ids=input_ids).pooler_output
        return emb / emb.norm(p=2, dim=-1, keepdim=True)


def parse_dtypes(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """"float32,bfloat16" (or a list) -> ["float32", "bfloat16"]: known names, duplicates dropped,
    order kept."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for raw in items:
        name = raw.strip()
        if name not in DTYPES:
            raise ValueError(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)} (comma-separated)")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError("no dtype given")
    return out


def sample_inputs(checkpoint_dir: Path, hf_tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel_values, input_ids) to trace and check the towers with: real photographs through the
    checkpoint's PIL image processor and a few texts through its transformers tokenizer."""
    from transformers import SiglipImageProcessorPil

    from .random_models import calibration_images

    processor = SiglipImageProcessorPil.from_pretrained(str(checkpoint_dir))
    pixels = processor(calibration_images()[:3], return_tensors="pt")["pixel_values"]
    return pixels, sample_ids(hf_tokenizer)


def sample_ids(hf_tokenizer: Any) -> torch.Tensor:
    """input_ids of a few texts through the checkpoint's transformers tokenizer."""
    from .random_models import CALIBRATION_TEXTS

    texts = [CALIBRATION_TEXTS[0], builtin_sample()[30], "a photo of 2 cats"]
    return torch.tensor(reference_ids(hf_tokenizer, texts), dtype=torch.int64)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference between two outputs, compared in float32."""
    return float((a.float() - b.float()).abs().max())
