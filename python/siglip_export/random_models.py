"""Random-weight checkpoints with the real transformers SigLIP architecture (no downloads).

The checkpoint is a normal HF directory (model, tokenizer with a locally trained sentencepiece
vocabulary, image processor config), so exporting it runs the real-checkpoint path. SigLIP v1
shapes get a `SiglipTokenizer` (Unigram `spiece.model`); `tiny-siglip2` gets a Gemma-style
byte-fallback BPE saved as `GemmaTokenizer`, laid out like the google/siglip2-*-patch16-* (fixed
resolution, model_type "siglip") checkpoints.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .texts import training_corpus

log = logging.getLogger(__name__)

VOCAB_SIZE = 2000

# Widths of the published checkpoints (config.json of google/siglip-base-patch16-224 and
# google/siglip-so400m-patch14-384); vocab_size is replaced by the local vocabulary's size.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {
        "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=224, patch_size=16),
    },
    # The published SigLIP vocabulary has no byte fallback: so neither do the larger shapes.
    "base-224": {
        "byte_fallback": False,
        "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=224, patch_size=16),
    },
    "so400m-384": {
        "byte_fallback": False,
        "text": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16),
        "vision": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                       image_size=384, patch_size=14),
    },
}
# SigLIP 2 fixed-resolution shapes: a SigLIP v1 architecture with a Gemma tokenizer.
SHAPES["tiny-siglip2"] = {**SHAPES["tiny"], "tokenizer": "gemma"}
# SigLIP 2 NaFlex (transformers' Siglip2Model, as google/siglip2-base-patch16-naflex): patches of
# 16 pixels, a 16 x 16 grid of learned position embeddings resized to each image's patch grid.
NAFLEX_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16,
                     num_patches=256)
SHAPES["tiny-naflex"] = {"text": SHAPES["tiny"]["text"], "vision": NAFLEX_VISION, "tokenizer": "gemma",
                         "naflex": True}
# The base layout of google/siglip2-base-patch16-naflex, for benchmarks.
SHAPES["base-naflex"] = {
    "byte_fallback": False, "text": SHAPES["base-224"]["text"], "tokenizer": "gemma", "naflex": True,
    "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16,
                   num_patches=256),
}

# The tokenizer settings of google/siglip2-*-patch16-* (transformers' SigLIP 2 conversion script:
# GemmaTokenizerFast.from_pretrained("google/gemma-7b", add_bos_token=False, add_eos_token=True,
# padding_side="right", model_input_names=["input_ids"]); one version also passes
# do_lower_case=True). transformers 5.x GemmaTokenizer ignores do_lower_case (and, with a
# tokenizer.json, add_*_token); they are kept so that the export sees what a real one may carry.
GEMMA_TOKENIZER_CONFIG = {
    "tokenizer_class": "GemmaTokenizer",
    "add_bos_token": False,
    "add_eos_token": True,
    "padding_side": "right",
    "do_lower_case": True,
    "model_input_names": ["input_ids"],
}

# Captions used to calibrate logit_scale/bias (also written to labels.json by make_test_assets).
CALIBRATION_TEXTS = [
    "a photo of a cat", "a photo of an astronaut", "a photo of a cup of coffee", "a photo of a rocket",
    "a photo of a man with a camera", "a photo of a dog", "a photo of a horse", "a photo of a city at night",
]


def train_spiece(seed: int = 0, byte_fallback: bool = True) -> bytes:
    """A small Unigram vocabulary laid out like SigLIP's (pad 0, eos 1, unk 2, no bos, nmt_nfkc).
    With byte fallback, unknown characters become byte pieces; without it (as in the published
    SigLIP vocabulary) runs of them merge into one <unk>, and two user-defined symbols exercise
    the matching that bypasses normalisation."""
    import sentencepiece as spm

    buf = io.BytesIO()
    extra = {} if byte_fallback else {"user_defined_symbols": ["cat", "\ufb01"]}
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_corpus(seed)), model_writer=buf, vocab_size=VOCAB_SIZE, **extra,
        model_type="unigram", byte_fallback=byte_fallback, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", normalization_rule_name="nmt_nfkc",
        character_coverage=0.9995, num_threads=1, minloglevel=2, hard_vocab_limit=False, seed_sentencepiece_size=100000,
    )
    return buf.getvalue()


def train_gemma_spm(seed: int = 0) -> bytes:
    """A small BPE vocabulary laid out like Gemma's tokenizer.model (pad 0, eos 1, bos 2, unk 3,
    <mask> 4, byte fallback, identity normalisation, no dummy prefix, digits split, whitespace
    kept as "▁" pieces). Deterministic: single-threaded training on the generated corpus."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_corpus(seed)), model_writer=buf, vocab_size=VOCAB_SIZE,
        model_type="bpe", byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>", user_defined_symbols=["<mask>"],
        normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
        split_digits=True, allow_whitespace_only_pieces=True, character_coverage=0.9995, num_threads=1,
        minloglevel=2, hard_vocab_limit=False,
    )
    return buf.getvalue()


def gemma_tokenizer(spm_path: Path) -> Any:
    """transformers' `GemmaTokenizer` (tokenizers backend) over the BPE vocabulary and merges of a
    sentencepiece model, configured as SigLIP 2 checkpoints are (no bos, eos added, right padding)."""
    from tokenizers.models import BPE
    from transformers import GemmaTokenizer
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    extracted = SentencePieceExtractor(str(spm_path)).extract(BPE)
    settings = {k: v for k, v in GEMMA_TOKENIZER_CONFIG.items() if k in ("add_bos_token", "add_eos_token", "padding_side")}
    tokenizer = GemmaTokenizer(vocab=extracted["vocab"], merges=extracted["merges"], **settings)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")}
    if list(ids.values()) != [0, 1, 2, 3, 4]:
        raise RuntimeError(f"unexpected Gemma special-token layout {ids}")
    return tokenizer


def _pin_gemma_tokenizer_config(out: Path) -> None:
    """Make tokenizer_config.json read like a real SigLIP 2 checkpoint's. transformers 5.24 drops
    add_bos_token/add_eos_token on save and ignores them on load whenever tokenizer.json exists:
    the saved post-processor ("$A <eos>", no bos) is what adds EOS, as in the hub files."""
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.update(GEMMA_TOKENIZER_CONFIG)
    for key in ("is_local", "local_files_only", "vocab_file"):  # machine-specific, never in hub files
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def calibration_images() -> list[Any]:
    """Real photographs bundled with scikit-image, as PIL images."""
    from PIL import Image
    from skimage import data

    arrays = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.camera()]
    return [Image.fromarray(np.asarray(array)).convert("RGB") for array in arrays]


def make_random_checkpoint(shape: str, out: Path, seed: int = 0) -> Path:
    """Create and save a random SigLIP checkpoint; returns `out`."""
    from transformers import (
        Siglip2Config,
        Siglip2ImageProcessorPil,
        Siglip2Model,
        Siglip2Processor,
        SiglipConfig,
        SiglipImageProcessorPil,
        SiglipModel,
        SiglipProcessor,
        SiglipTokenizer,
    )

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {sorted(SHAPES)}")
    spec = SHAPES[shape]
    gemma = spec.get("tokenizer") == "gemma"
    out.mkdir(parents=True, exist_ok=True)
    if gemma:
        spm_path = out / "tokenizer.model"  # SigLIP 2 checkpoints ship it next to tokenizer.json
        spm_path.write_bytes(train_gemma_spm(seed))
        tokenizer = gemma_tokenizer(spm_path)
        pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id  # 0, 1 (Gemma)
    else:
        spiece = out / "spiece.model"
        spiece.write_bytes(train_spiece(seed, byte_fallback=spec.get("byte_fallback", True)))
        tokenizer = SiglipTokenizer(str(spiece), model_max_length=64)
        pad_id, eos_id = 1, 1  # SigLIP pads with "</s>"

    naflex = spec.get("naflex", False)
    common = dict(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, attention_dropout=0.0)
    config = (Siglip2Config if naflex else SiglipConfig)(
        text_config=dict(vocab_size=len(tokenizer) if gemma else tokenizer.vocab_size, max_position_embeddings=64,
                         pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=None, **common, **spec["text"]),
        vision_config=dict(num_channels=3, **common, **spec["vision"]),
    )
    torch.manual_seed(seed)
    # SiglipTextConfig defaults to CLIP's bos/eos ids (49406/49407); SigLIP's eos is "</s>" = 1,
    # SigLIP 2's "<eos>" = 1 (no bos is added in either).
    config.text_config.bos_token_id = None
    config.text_config.eos_token_id = eos_id
    model = (Siglip2Model if naflex else SiglipModel)(config).eval()
    if naflex:
        # NaFlex: bilinear, mean and std 0.5, at most 256 patches of 16 pixels (the processor's
        # defaults, as the published checkpoints have them).
        image_processor = Siglip2ImageProcessorPil(patch_size=spec["vision"]["patch_size"], max_num_patches=256)
    else:
        size = spec["vision"]["image_size"]
        # SigLIP 2's fixed-resolution processors resize bilinearly (transformers' conversion
        # script sets resample=2 for them); SigLIP's use the default, bicubic.
        resample = {"resample": 2} if gemma else {}
        image_processor = SiglipImageProcessorPil(size={"height": size, "width": size}, **resample)
    scale, bias = calibrate(model, tokenizer, image_processor)
    with torch.no_grad():
        model.logit_scale.fill_(scale)
        model.logit_bias.fill_(bias)
    model.save_pretrained(out)
    processor = Siglip2Processor if naflex else SiglipProcessor
    processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    image_processor.save_pretrained(out)  # preprocessor_config.json, as hub checkpoints have it
    if gemma:
        _pin_gemma_tokenizer_config(out)
    log.info("random %s checkpoint at %s (logit_scale=%.4f, logit_bias=%.4f)", shape, out, scale, bias)
    return out


@torch.no_grad()
def calibrate(model: Any, tokenizer: Any, image_processor: Any, lo: float = -3.0, hi: float = 3.0) -> tuple[float, float]:
    """Pick logit_scale (log-multiplier) and bias mapping the cosine range of the calibration
    images x texts onto [lo, hi]: random init leaves both at 0 (every probability 0.5)."""
    # NaFlex processors also return the patch mask and each image's patch grid: the tower takes all.
    inputs = dict(image_processor(calibration_images(), return_tensors="pt"))
    ids = tokenizer(CALIBRATION_TEXTS, padding="max_length", max_length=64, truncation=True, return_tensors="pt")["input_ids"]
    img = torch.nn.functional.normalize(model.vision_model(**inputs).pooler_output, dim=-1)
    txt = torch.nn.functional.normalize(model.text_model(input_ids=ids).pooler_output, dim=-1)
    cosines = img @ txt.T
    cos_min, cos_max = float(cosines.min()), float(cosines.max())
    multiplier = (hi - lo) / max(cos_max - cos_min, 1e-6)
    return float(np.log(multiplier)), float(lo - multiplier * cos_min)
