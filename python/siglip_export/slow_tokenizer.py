"""What transformers' slow `SiglipTokenizer` does around sentencepiece, written down for the server.

SigLIP v1 checkpoints ship only `spiece.model`, and transformers tokenises them with the slow
`SiglipTokenizer`: Python code (added-token splitting, `str.lower()`, punctuation and whitespace
rules) around libsentencepiece. The server ports both to Rust (`src/model/tokenizer/`) and
reads two files this module writes into the model directory:

- `spiece.model`: the sentencepiece model exactly as transformers loaded it
  (`sp_model.serialized_model_proto()`, after any change transformers made to it);
- `slow_tokenizer.json`: everything on the Python side that is data rather than code — the added
  tokens with their strip flags, `do_lower_case`, and tables of Python's own `str` behaviour
  (lower-casing, Final_Sigma's cased and case-ignorable sets, `isspace`) taken from the Python that
  runs the export, so the server follows that Python whatever its Unicode version.

No `tokenizers` pipeline can express this tokenizer exactly (literal special tokens split before
normalisation, per-chunk lower-casing, sentencepiece's float32 Viterbi); `siglip-serve parity`
checks the Rust port against transformers on the generated corpus.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from pathlib import Path
from typing import Any

SPIECE_FILE = "spiece.model"
SPEC_FILE = "slow_tokenizer.json"
# Written by this module, read by src/model/tokenizer/siglip.rs; bump both together.
SPEC_VERSION = 1

_SIGMA = "\u03a3"
_FINAL_SIGMA = "\u03c2"


def _ranges(code_points: list[int]) -> list[list[int]]:
    """Sorted code points as inclusive [start, end] runs."""
    runs: list[list[int]] = []
    for cp in code_points:
        if runs and runs[-1][1] == cp - 1:
            runs[-1][1] = cp
        else:
            runs.append([cp, cp])
    return runs


def python_str_tables() -> dict[str, Any]:
    """This Python's `str.lower()`, `str.isspace()` and the two character sets of its Final_Sigma rule.

    CPython lower-cases one code point at a time (its full mapping, e.g. "İ" -> "i̇"), except that a
    capital sigma becomes "ς" when preceded by a cased character and not followed by one, skipping
    case-ignorable characters both ways. Python does not expose those two properties, so they are
    read off the rule itself: "AcΣ" ends in ς when c is case-ignorable or cased, "cΣ" only when c is
    cased and not case-ignorable.
    """
    lower: list[list[Any]] = []
    whitespace: list[int] = []
    ignorable: list[int] = []
    cased: list[int] = []
    for cp in range(sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:  # surrogates never occur in UTF-8 text
            continue
        char = chr(cp)
        lowered = char.lower()
        if lowered != char:
            lower.append([cp, lowered])
        if char.isspace():
            whitespace.append(cp)
        alone = (char + _SIGMA).lower().endswith(_FINAL_SIGMA)
        after_cased = ("A" + char + _SIGMA).lower().endswith(_FINAL_SIGMA)
        if alone:
            cased.append(cp)
        elif after_cased:
            ignorable.append(cp)
    return {
        "python": sys.version.split()[0],
        "unicode": unicodedata.unidata_version,
        "lower": lower,
        "whitespace": whitespace,
        "case_ignorable": _ranges(ignorable),
        "cased": _ranges(cased),
    }


def spec(hf_tokenizer: Any) -> dict[str, Any]:
    """The Python half of a slow `SiglipTokenizer`, as `slow_tokenizer.json` holds it."""
    added = [
        {
            "id": int(token_id),
            "content": str(token.content),
            "lstrip": bool(token.lstrip),
            "rstrip": bool(token.rstrip),
            "single_word": bool(token.single_word),
            "special": bool(token.special),
        }
        for token_id, token in sorted(hf_tokenizer._added_tokens_decoder.items())
    ]
    encoder = {str(k): int(v) for k, v in hf_tokenizer._added_tokens_encoder.items()}
    if {token["content"]: token["id"] for token in added} != encoder:
        raise ValueError("the tokenizer's added-token encoder and decoder disagree")
    return {
        "version": SPEC_VERSION,
        "class": type(hf_tokenizer).__name__,
        "do_lower_case": bool(hf_tokenizer.do_lower_case),
        "unk_token": str(hf_tokenizer.unk_token),
        "split_special_tokens": bool(hf_tokenizer.split_special_tokens),
        "added_tokens": added,
        # What PreTrainedTokenizer.tokenize splits the text on (its Trie), and what counts as special.
        "split_on": sorted(hf_tokenizer.tokens_trie._tokens),
        "all_special_tokens": list(hf_tokenizer.all_special_tokens),
        "python_str": python_str_tables(),
    }


def write(hf_tokenizer: Any, out: Path) -> dict[str, str]:
    """Writes spiece.model and slow_tokenizer.json into `out`; returns the manifest's file entries."""
    (out / SPIECE_FILE).write_bytes(hf_tokenizer.sp_model.serialized_model_proto())
    (out / SPEC_FILE).write_text(json.dumps(spec(hf_tokenizer), ensure_ascii=False, separators=(",", ":")) + "\n")
    return {"tokenizer": SPIECE_FILE, "slow_tokenizer": SPEC_FILE}
