"""Where a Hugging Face checkpoint's files are, and its transformers tokenizer.

Shared by every subcommand that reads a checkpoint: `export` and `random` (export.py), `compile`
(compile.py, through the manifest's `source.checkpoint`) and `reference*` (reference.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Checkpoint:
    path: Path  # local directory
    source: str  # hub id or absolute local path
    revision: str | None


def resolve_checkpoint(checkpoint: str, revision: str | None = None) -> Checkpoint:
    """Local directory as is; otherwise a hub id resolved through the HF cache (offline works
    when cached), recording the snapshot's commit sha."""
    path = Path(checkpoint)
    if path.is_dir():
        return Checkpoint(path.resolve(), str(path.resolve()), revision)
    from huggingface_hub import snapshot_download

    local = Path(
        snapshot_download(checkpoint, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
    )
    sha = local.name if re.fullmatch(r"[0-9a-f]{40}", local.name) else revision
    return Checkpoint(local, checkpoint, sha)


def load_tokenizer(path: Path) -> Any:
    """The tokenizer transformers itself loads for the checkpoint (AutoTokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
