"""Build a `tokenizer.json` that reproduces the checkpoint's transformers tokenizer for SigLIP.

SigLIP v1 only ships `spiece.model` and transformers has no fast SigLIP tokenizer, so the pipeline
is rebuilt from the sentencepiece proto. Gemma-tokenised checkpoints (SigLIP 2) already have a
tokenizers-backed tokenizer; we only pin post-processing, truncation and padding.
Either way the result is checked against transformers on a text sample before it is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram

MAX_LENGTH = 64
SPIECE_UNDERLINE = "\u2581"

# Python's `str.isspace()` set, which is what `re.sub(r"\s+", ...)` in SiglipTokenizer uses.
# Oniguruma/Rust `\s` lacks U+001C..U+001F, so the class is spelt out with literal characters.
_PY_WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680" + "".join(
    chr(c) for c in range(0x2000, 0x200B)
) + "\u2028\u2029\u202f\u205f\u3000"
_WS_CLASS = "[" + "".join(_PY_WHITESPACE) + "]+"
# `string.punctuation`, escaped for a regex character class.
_ASCII_PUNCT_CLASS = "[!-/:-@\\[-`{-~]"
# Python's lower() maps a word-final capital sigma to ς (Unicode Final_Sigma); tokenizers' Lowercase
# works per character and would give σ. Approximation: preceded by a cased letter, not followed by one.
_FINAL_SIGMA = "(?<=[\\p{Lu}\\p{Ll}\\p{Lt}])\u03a3(?![\\p{Lu}\\p{Ll}\\p{Lt}])"
# nmt_nfkc keeps U+FF5E (full-width tilde) but NFKC turns it into "~": shield it across the NFKC step.
_SHIELD = {"\uff5e": "\ue000"}


# sentencepiece piece types (sentencepiece_model.proto): NORMAL=1, USER_DEFINED=4.
_MATCHABLE = {1, 4}
_NEVER = -1e9


@dataclass(frozen=True)
class TextSettings:
    """What the manifest records about text processing."""

    max_length: int
    pad_id: int
    eos_id: int
    lowercase: bool
    kind: str  # "siglip-sentencepiece" | "gemma"


def _load_spm_proto(spiece_path: Path) -> Any:
    from sentencepiece import sentencepiece_model_pb2 as pb  # ships with sentencepiece

    return pb.ModelProto.FromString(spiece_path.read_bytes())


def build_siglip_tokenizer(spiece_path: Path, *, do_lower_case: bool = True, max_length: int = MAX_LENGTH) -> Tokenizer:
    """Re-create transformers' slow `SiglipTokenizer` as a `tokenizers` pipeline.

    Slow behaviour (transformers 5.x): text -> "▁" + text.replace("▁", " "); split out literal
    special tokens; lower(); drop ASCII punctuation; collapse Python whitespace; strip; then
    sentencepiece (charsmap normalisation, whitespace collapse where "▁" counts as a space,
    strip) and finally "</s>". Here the leading "▁" is added by Metaspace instead.
    """
    proto = _load_spm_proto(spiece_path)
    spec = proto.normalizer_spec
    if proto.trainer_spec.model_type != 1:  # 1 = UNIGRAM
        raise ValueError(f"{spiece_path}: only Unigram sentencepiece models are supported")
    # sentencepiece never matches control/unknown/byte/unused pieces against text, but tokenizers'
    # Unigram would (e.g. NFKC turns "＜pad＞" into "<pad>"). A prohibitive score keeps them out of
    # every segmentation; ids (special tokens, byte fallback) still resolve through the vocab.
    vocab = [(p.piece, p.score if p.type in _MATCHABLE else _NEVER) for p in proto.pieces]
    unk_id = proto.trainer_spec.unk_id
    model = Unigram(vocab, unk_id=unk_id, byte_fallback=proto.trainer_spec.byte_fallback)
    tok = Tokenizer(model)

    # The slow tokenizer prefixes "▁" before its own normalisation, so leading characters that are
    # removed later (punctuation, zero-width, ...) never cost the word its "▁". A leading space at
    # offset 0 does the same here; Metaspace's own prepend is skipped when leading chars vanish.
    # (Prepend leaves the empty string empty, which then encodes to just "</s>", as the slow one.)
    steps: list[normalizers.Normalizer] = [normalizers.Replace(SPIECE_UNDERLINE, " "), normalizers.Prepend(" ")]
    if do_lower_case:
        steps += [normalizers.Replace(Regex(_FINAL_SIGMA), "\u03c2"), normalizers.Lowercase()]
    steps += [
        normalizers.Replace(Regex(_ASCII_PUNCT_CLASS), ""),
        normalizers.Replace(Regex(_WS_CLASS), " "),
    ]
    if spec.precompiled_charsmap:
        # tokenizers' Precompiled maps per grapheme and misses sentencepiece's longest-match
        # composition of decomposed (NFD) text; NFKC first makes the input already composed.
        steps += [normalizers.Replace(k, v) for k, v in _SHIELD.items()]
        steps += [normalizers.NFKC()]
        steps += [normalizers.Replace(v, k) for k, v in _SHIELD.items()]
        steps += [normalizers.Precompiled(spec.precompiled_charsmap)]
    if spec.remove_extra_whitespaces:
        # sentencepiece collapses/strips spaces *after* its charsmap (which can create spaces);
        # the leading space is our "▁" prefix and stays.
        steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip(left=False, right=True)]
    tok.normalizer = normalizers.Sequence(steps)
    # Spaces -> "▁"; the prefix is already there (see Prepend above). split=False: sentencepiece
    # segments the whole string at once (pieces never span "▁" anyway).
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPIECE_UNDERLINE, prepend_scheme="never", split=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace(SPIECE_UNDERLINE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )

    eos = proto.pieces[proto.trainer_spec.eos_id].piece
    unk = proto.pieces[unk_id].piece
    # The slow tokenizer splits literal eos/unk out of raw text (lstrip/rstrip, not normalised).
    tok.add_special_tokens(
        [AddedToken(t, lstrip=True, rstrip=True, normalized=False, special=True) for t in (eos, unk)]
    )
    eos_id = proto.trainer_spec.eos_id
    tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, eos_id)])
    tok.enable_truncation(max_length=max_length)
    # SigLIP's pad token is "</s>" (same id as eos).
    tok.enable_padding(direction="right", pad_id=eos_id, pad_token=eos, length=max_length)
    return tok


def build_from_fast(hf_tokenizer: Any, *, max_length: int = MAX_LENGTH) -> Tokenizer:
    """Gemma/SigLIP 2: reuse transformers' backend tokenizer (it already carries the normaliser,
    e.g. Lowercase for Siglip2Tokenizer, and the eos/bos template), fix truncation and padding."""
    tok = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    tok.no_padding()
    tok.no_truncation()
    tok.enable_truncation(max_length=max_length)
    pad_id = hf_tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("tokenizer has no pad token")
    tok.enable_padding(
        direction=hf_tokenizer.padding_side, pad_id=pad_id, pad_token=str(hf_tokenizer.pad_token), length=max_length
    )
    return tok


def normalizer_lowercases(tok: Tokenizer) -> bool:
    return '"Lowercase"' in json.dumps(json.loads(tok.to_str()).get("normalizer"))


def reference_ids(hf_tokenizer: Any, texts: Sequence[str], max_length: int = MAX_LENGTH) -> list[list[int]]:
    """transformers' own ids: padding to max_length, truncation (never pad-to-longest: SigLIP pools the last token)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sequence already has </s>" for literal </s> inputs
        out = hf_tokenizer(list(texts), padding="max_length", max_length=max_length, truncation=True)
    return [list(map(int, ids)) for ids in out["input_ids"]]


@dataclass
class Mismatch:
    text: str
    ours: list[int]
    reference: list[int]
    viterbi_tie: bool  # both segmentations have the same total piece score (see README)


def compare(tok: Tokenizer, hf_tokenizer: Any, texts: Sequence[str]) -> list[Mismatch]:
    """Encode with tokenizer.json and with transformers; return every text whose ids differ."""
    ours = [e.ids for e in tok.encode_batch(list(texts))]
    ref = reference_ids(hf_tokenizer, texts, max_length=tok.truncation["max_length"] if tok.truncation else MAX_LENGTH)
    sp = getattr(hf_tokenizer, "sp_model", None)

    def tie(a: list[int], b: list[int]) -> bool:
        """Same normalised text split differently with exactly the same total piece score."""
        if sp is None:
            return False
        n = sp.GetPieceSize()
        pa, pb = [i for i in a if i < n], [i for i in b if i < n]
        same_text = "".join(map(sp.IdToPiece, pa)) == "".join(map(sp.IdToPiece, pb))
        return same_text and abs(sum(map(sp.GetScore, pa)) - sum(map(sp.GetScore, pb))) < 1e-4

    return [Mismatch(t, a, b, viterbi_tie=tie(a, b)) for t, a, b in zip(texts, ours, ref) if a != b]


def summarize(mismatches: Sequence[Mismatch], n_texts: int) -> str:
    ties = sum(m.viterbi_tie for m in mismatches)
    return f"{len(mismatches)}/{n_texts} mismatches ({ties} equal-score Viterbi ties, {len(mismatches) - ties} other)"
