"""The tokenizer files of a model directory, and the ids the server must reproduce.

Two routes, picked from the tokenizer transformers itself loads for the checkpoint:
- SigLIP v1 (slow `SiglipTokenizer`): `spiece.model` and `slow_tokenizer.json`, which the
  server's Rust port of the slow tokenizer reads (see slow_tokenizer.py);
- Gemma-tokenised checkpoints (SigLIP 2): transformers' own `tokenizer.json`, with truncation and
  padding pinned, checked here against transformers before it is written.

Either way the directory also gets `tokenizer_check.json`: sample texts with transformers' ids,
which the server re-tokenises at every start and refuses to serve if any id differs.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import slow_tokenizer

MAX_LENGTH = 64
JSON_FILE = "tokenizer.json"
CHECK_FILE = "tokenizer_check.json"


@dataclass(frozen=True)
class TextSettings:
    """What the manifest records about text processing."""

    max_length: int
    pad_id: int
    eos_id: int
    lowercase: bool
    kind: str  # "siglip-sentencepiece" | "gemma"


def build_from_fast(hf_tokenizer: Any, *, max_length: int = MAX_LENGTH) -> Any:
    """Gemma/SigLIP 2: reuse transformers' backend tokenizer (it already carries the normaliser,
    e.g. Lowercase for Siglip2Tokenizer, and the eos/bos template), fix truncation and padding."""
    from tokenizers import Tokenizer

    fast = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    fast.no_padding()
    fast.no_truncation()
    fast.enable_truncation(max_length=max_length)
    pad_id = hf_tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("tokenizer has no pad token")
    fast.enable_padding(
        direction=hf_tokenizer.padding_side, pad_id=pad_id, pad_token=str(hf_tokenizer.pad_token), length=max_length
    )
    return fast


def normalizer_lowercases(fast: Any) -> bool:
    return '"Lowercase"' in json.dumps(json.loads(fast.to_str()).get("normalizer"))


def reference_ids(hf_tokenizer: Any, texts: Sequence[str], max_length: int = MAX_LENGTH) -> list[list[int]]:
    """transformers' own ids: padding to max_length, truncation (never pad-to-longest: SigLIP pools the last token)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sequence already has </s>" for literal </s> inputs
        encoded = hf_tokenizer(list(texts), padding="max_length", max_length=max_length, truncation=True)
    return [list(map(int, ids)) for ids in encoded["input_ids"]]


def mismatches(fast: Any, hf_tokenizer: Any, texts: Sequence[str]) -> list[str]:
    """Texts whose ids from a `tokenizers` Tokenizer differ from transformers'."""
    ours = [encoding.ids for encoding in fast.encode_batch(list(texts))]
    theirs = reference_ids(hf_tokenizer, texts, max_length=fast.truncation["max_length"] if fast.truncation else MAX_LENGTH)
    return [text for text, our_ids, their_ids in zip(texts, ours, theirs, strict=True) if our_ids != their_ids]


def write(hf_tokenizer: Any, out: Path, check_texts: Sequence[str]) -> tuple[TextSettings, dict[str, str]]:
    """Writes the tokenizer files and the start-up check; returns the manifest's text settings and
    file entries. Raises ValueError when a tokenizer.json would not reproduce transformers."""
    from transformers import SiglipTokenizer

    if isinstance(hf_tokenizer, SiglipTokenizer):
        files = slow_tokenizer.write(hf_tokenizer, out)
        pad_id = int(hf_tokenizer.pad_token_id)
        settings = TextSettings(MAX_LENGTH, pad_id, int(hf_tokenizer.eos_token_id), bool(hf_tokenizer.do_lower_case),
                                "siglip-sentencepiece")
        if settings.pad_id != settings.eos_id:
            raise ValueError(f"pad id {settings.pad_id} differs from eos id {settings.eos_id}; SigLIP pads with EOS")
    elif getattr(hf_tokenizer, "backend_tokenizer", None) is not None:
        fast = build_from_fast(hf_tokenizer)
        fast.save(str(out / JSON_FILE))
        from tokenizers import Tokenizer

        # The file on disk is what the server reads: check it after the round trip.
        bad = mismatches(Tokenizer.from_file(str(out / JSON_FILE)), hf_tokenizer, check_texts)
        if bad:
            raise ValueError(f"tokenizer.json differs from transformers on {len(bad)}/{len(check_texts)} texts, e.g. {bad[:3]!r}")
        files = {"tokenizer": JSON_FILE}
        settings = TextSettings(MAX_LENGTH, fast.padding["pad_id"], int(hf_tokenizer.eos_token_id), normalizer_lowercases(fast),
                                "gemma")
    else:
        raise ValueError(f"unsupported tokenizer class {type(hf_tokenizer).__name__}")
    check = {"texts": list(check_texts), "input_ids": reference_ids(hf_tokenizer, check_texts)}
    (out / CHECK_FILE).write_text(json.dumps(check, ensure_ascii=False, separators=(",", ":")) + "\n")
    return settings, {**files, "tokenizer_check": CHECK_FILE}
