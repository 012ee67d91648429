"""manifest.json: the contract between this exporter and the Rust server (keep key names stable)."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from . import __version__

FORMAT_VERSION = 2
# Tower dtypes a directory may hold; manifest["towers"] maps each exported one to its two files.
TOWER_DTYPES = ("float32", "float16", "bfloat16")
REQUIRED_KEYS = (
    "format_version", "model_id", "architecture", "source", "image", "text", "embedding_dim", "towers",
    "logit_scale", "logit_bias", "versions", "files", "created",
)


def tower_files(dtype: str) -> dict[str, str]:
    """File names of one dtype's traced towers, relative to the model directory."""
    if dtype not in TOWER_DTYPES:
        raise ValueError(f"unknown tower dtype {dtype!r}; choose from {TOWER_DTYPES}")
    return {"vision": f"vision.{dtype}.pt", "text": f"text.{dtype}.pt"}


def versions() -> dict[str, str]:
    import tokenizers
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "siglip_export": __version__,
    }


def build(
    *, model_id: str, architecture: str, source: dict[str, Any], image: dict[str, Any], text: dict[str, Any],
    embedding_dim: int, files: dict[str, str], dtypes: list[str], logit_scale: float, logit_bias: float,
) -> dict[str, Any]:
    if not dtypes:
        raise ValueError("a model directory needs at least one tower dtype")
    return {
        "format_version": FORMAT_VERSION,
        "model_id": model_id,
        "architecture": architecture,
        "source": source,
        "image": image,
        "text": text,
        "embedding_dim": embedding_dim,
        "logit_scale": logit_scale,
        "logit_bias": logit_bias,
        "versions": versions(),
        "files": dict(files),
        "towers": {dtype: tower_files(dtype) for dtype in dtypes},
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def write(manifest: dict[str, Any], out_dir: Path) -> Path:
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"manifest lacks {missing}")
    path = out_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return path
