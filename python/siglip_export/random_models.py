"""Random-weight checkpoints with the real transformers SigLIP architecture (no downloads).

The checkpoint is a normal HF directory (model, SiglipTokenizer with a locally trained
sentencepiece vocabulary, image processor config), so exporting it runs the real-checkpoint path.
"""

from __future__ import annotations

import io
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
    "base-224": {
        "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=224, patch_size=16),
    },
    "so400m-384": {
        "text": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16),
        "vision": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                       image_size=384, patch_size=14),
    },
}

# Captions used to calibrate logit_scale/bias (also written to labels.json by make_test_assets).
CALIBRATION_TEXTS = [
    "a photo of a cat", "a photo of an astronaut", "a photo of a cup of coffee", "a photo of a rocket",
    "a photo of a man with a camera", "a photo of a dog", "a photo of a horse", "a photo of a city at night",
]


def train_spiece(seed: int = 0) -> bytes:
    """A small Unigram vocabulary laid out like SigLIP's (pad 0, eos 1, unk 2, no bos, nmt_nfkc,
    byte fallback) so normalisation, byte fallback and special-token paths all get exercised."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_corpus(seed)), model_writer=buf, vocab_size=VOCAB_SIZE,
        model_type="unigram", byte_fallback=True, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", normalization_rule_name="nmt_nfkc",
        character_coverage=0.9995, num_threads=1, minloglevel=2, hard_vocab_limit=False, seed_sentencepiece_size=100000,
    )
    return buf.getvalue()


def calibration_images() -> list[Any]:
    """Real photographs bundled with scikit-image, as PIL images."""
    from PIL import Image
    from skimage import data

    arrays = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.camera()]
    return [Image.fromarray(np.asarray(a)).convert("RGB") for a in arrays]


def make_random_checkpoint(shape: str, out: Path, seed: int = 0) -> Path:
    """Create and save a random SigLIP checkpoint; returns `out`."""
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor, SiglipTokenizer

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {sorted(SHAPES)}")
    out.mkdir(parents=True, exist_ok=True)
    spiece = out / "spiece.model"
    spiece.write_bytes(train_spiece(seed))
    tokenizer = SiglipTokenizer(str(spiece), model_max_length=64)

    s = SHAPES[shape]
    common = dict(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, attention_dropout=0.0)
    config = SiglipConfig(
        text_config=dict(vocab_size=tokenizer.vocab_size, max_position_embeddings=64, pad_token_id=1,
                         eos_token_id=1, bos_token_id=None, **common, **s["text"]),
        vision_config=dict(num_channels=3, **common, **s["vision"]),
    )
    torch.manual_seed(seed)
    # SiglipTextConfig defaults to CLIP's bos/eos ids (49406/49407); SigLIP's eos is "</s>" = 1.
    config.text_config.bos_token_id = None
    config.text_config.eos_token_id = 1
    model = SiglipModel(config).eval()
    size = s["vision"]["image_size"]
    image_processor = SiglipImageProcessorPil(size={"height": size, "width": size})
    scale, bias = calibrate(model, tokenizer, image_processor)
    with torch.no_grad():
        model.logit_scale.fill_(scale)
        model.logit_bias.fill_(bias)
    model.save_pretrained(out)
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    image_processor.save_pretrained(out)  # preprocessor_config.json, as hub checkpoints have it
    log.info("random %s checkpoint at %s (logit_scale=%.4f, logit_bias=%.4f)", shape, out, scale, bias)
    return out


@torch.no_grad()
def calibrate(model: Any, tokenizer: Any, image_processor: Any, lo: float = -3.0, hi: float = 3.0) -> tuple[float, float]:
    """Pick logit_scale (log-multiplier) and bias mapping the cosine range of the calibration
    images x texts onto [lo, hi]: random init leaves both at 0 (every probability 0.5)."""
    pixels = image_processor(calibration_images(), return_tensors="pt")["pixel_values"]
    ids = tokenizer(CALIBRATION_TEXTS, padding="max_length", max_length=64, truncation=True, return_tensors="pt")["input_ids"]
    img = torch.nn.functional.normalize(model.vision_model(pixel_values=pixels).pooler_output, dim=-1)
    txt = torch.nn.functional.normalize(model.text_model(input_ids=ids).pooler_output, dim=-1)
    cos = img @ txt.T
    cmin, cmax = float(cos.min()), float(cos.max())
    mult = (hi - lo) / max(cmax - cmin, 1e-6)
    return float(np.log(mult)), float(lo - mult * cmin)
