"""SigLIP 2 NaFlex checkpoints (transformers' `Siglip2Model`): what differs from fixed resolution.

A NaFlex vision tower takes each image at its own aspect ratio: the processor
(`Siglip2ImageProcessorPil`) resizes it to at most M patches of P×P pixels, flattens the patches
(`pixel_values` [B, M, 3·P²]), pads them to exactly M, and says which are real
(`pixel_attention_mask` [B, M]) and on what grid (`spatial_shapes` [B, 2], rows and columns of
patches). The tower resizes its learned square grid of position embeddings to each image's grid
inside its forward pass (transformers 5.24 computes the bilinear, antialiased weights as tensors,
with no per-image Python loop), so one trace serves every M, every grid and every batch: the export
checks that on images from 1:20 to 20:1 at each M the manifest allows. Traced as transformers
writes it, though, that resize makes its index tensors on the CPU by name (`device=` of a tensor
becomes a constant in a trace): `device_free` traces the same arithmetic with the tensors made on
their inputs' device, and the export checks it equals transformers' own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The patch budgets a NaFlex model directory allows by default: the processor's default (256) and
# the two other common ones.
MAX_NUM_PATCHES = (256, 576, 1024)
# The tower's inputs, in the order the traced module takes them.
INPUTS = ("pixel_values", "pixel_attention_mask", "spatial_shapes")
# Aspect ratios (width:height) the export checks the traced tower on, beside the photographs.
CHECKED_SIZES = ((20, 400), (400, 20), (3, 500), (1, 1), (640, 360))


class NaflexVisionEmbed(nn.Module):
    """(pixel_values, pixel_attention_mask, spatial_shapes) -> L2-normalised image embeddings (B, D),
    as Siglip2Model.get_image_features.

    `Siglip2VisionTransformer.forward`, with its two attention masks made here: transformers'
    `create_bidirectional_mask` makes its ranges with `device=` (a constant once traced) and drops
    the mask when the traced sample happens to have no padding (a Python decision, frozen into
    the trace). Here the encoder gets the boolean padding mask SDPA broadcasts over heads and
    queries, and the pooling head the additive mask its `nn.MultiheadAttention` takes, both made
    from `pixel_attention_mask` on its own device, always."""

    def __init__(self, vision_model: nn.Module) -> None:
        super().__init__()
        self.vision_model = vision_model

    def forward(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor,
                spatial_shapes: torch.Tensor) -> torch.Tensor:
        model = self.vision_model
        hidden = model.embeddings(pixel_values, spatial_shapes)
        keep = pixel_attention_mask.bool()
        hidden = model.encoder(inputs_embeds=hidden, attention_mask=keep[:, None, None, :]).last_hidden_state
        hidden = model.post_layernorm(hidden)
        emb = self._pool(model.head, hidden, keep)
        return emb / emb.norm(p=2, dim=-1, keepdim=True)

    @staticmethod
    def _pool(head: nn.Module, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """`Siglip2MultiheadAttentionPoolingHead.forward`: the probe attends to the real patches."""
        batch = hidden.shape[0]
        probe = head.probe.repeat(batch, 1, 1)
        # [B·heads, 1, M]: 0 where a patch is real, the dtype's lowest value where it is padding.
        blocked = torch.zeros_like(keep, dtype=probe.dtype).masked_fill(~keep, torch.finfo(probe.dtype).min)
        mask = blocked[:, None, :].repeat_interleave(head.num_heads, dim=0)
        hidden_state = head.attention(probe, hidden, hidden, attn_mask=mask)[0]
        residual = hidden_state
        hidden_state = head.layernorm(hidden_state)
        hidden_state = residual + head.mlp(hidden_state)
        return hidden_state[:, 0]


def _resize_positional_embeddings(positional_embeddings: torch.Tensor, spatial_shapes: torch.Tensor,
                                  max_length: int) -> torch.Tensor:
    """`Siglip2VisionEmbeddings.resize_positional_embeddings` of transformers 5.24, operation for
    operation, but for how its two ranges are made: counted up from ones made like their inputs
    (`new_ones`, which a trace keeps on the input's device) instead of `torch.arange(device=...)`
    (which a trace pins to the tracing device). Both give the same integers exactly (float32
    counts to 2^24). Its input checks are left out: traced, they would be constants; the server
    makes the grids and checks them."""
    grid_size = positional_embeddings.shape[0]
    sizes = spatial_shapes.float()[:, None]
    positions = (spatial_shapes.new_ones(max_length, dtype=torch.float32).cumsum(0) - 1)[None, :, None]
    rows = torch.div(positions, sizes[..., 1:], rounding_mode="floor")
    output_index = torch.cat([rows, positions - rows * sizes[..., 1:]], dim=-1)
    output_index = output_index * (positions < sizes.prod(-1, keepdim=True))
    scale = grid_size / sizes
    support = scale.clamp(min=1)
    center = (output_index + 0.5) * scale - 0.5
    source = spatial_shapes.new_ones(grid_size, dtype=torch.float32).cumsum(0) - 1
    weights = (1 - (source - center[..., None]).abs_().div_(support[..., None])).clamp_(min=0)
    weights = weights / weights.sum(-1, keepdim=True)
    weights = (weights[..., 0, :, None] * weights[..., 1, None, :]).flatten(-2)
    flat_embeddings = positional_embeddings.reshape(-1, positional_embeddings.shape[-1])
    resized_embeddings = weights @ flat_embeddings.float()
    return resized_embeddings.to(positional_embeddings.dtype)


@contextlib.contextmanager
def device_free(vision_model: nn.Module) -> Iterator[None]:
    """While tracing: the tower resizes its position embeddings with `_resize_positional_embeddings`."""
    embeddings = vision_model.embeddings
    embeddings.resize_positional_embeddings = _resize_positional_embeddings
    try:
        yield
    finally:
        del embeddings.resize_positional_embeddings


def is_naflex(config: Any) -> bool:
    return config.model_type == "siglip2"


def image_settings(path: Path, max_num_patches: tuple[int, ...], served_resample: tuple[str, ...],
                   resample_name: Any) -> dict[str, Any]:
    """The manifest's `image` section of a NaFlex checkpoint: the processor's resampling and
    normalisation, and `naflex` (patch size, the allowed budgets M, the default one)."""
    from transformers import Siglip2ImageProcessorPil

    processor = Siglip2ImageProcessorPil.from_pretrained(str(path))
    if not (processor.do_resize and processor.do_rescale and processor.do_normalize):
        raise ValueError("image processor with resize/rescale/normalize disabled is not supported")
    resample = resample_name(processor.resample)
    if resample not in served_resample:
        raise ValueError(f"resample {resample!r} is not supported (the server reproduces {' and '.join(served_resample)})")
    default = int(processor.max_num_patches)
    allowed = sorted({*max_num_patches, default})
    if any(m < 1 for m in allowed):
        raise ValueError(f"max_num_patches must be positive: {allowed}")
    return {
        "resample": resample,
        "rescale_factor": float(processor.rescale_factor),
        "mean": [float(x) for x in processor.image_mean],
        "std": [float(x) for x in processor.image_std],
        "naflex": {"patch_size": int(processor.patch_size), "max_num_patches": allowed,
                   "default_max_num_patches": default},
    }


def sample_inputs(checkpoint_dir: Path, max_num_patches: int) -> dict[str, torch.Tensor]:
    """The tower's inputs for the calibration photographs and the checked aspect ratios, through
    the checkpoint's PIL processor at budget `max_num_patches`."""
    from PIL import Image
    from transformers import Siglip2ImageProcessorPil

    from .random_models import calibration_images

    processor = Siglip2ImageProcessorPil.from_pretrained(str(checkpoint_dir))
    photos = calibration_images()[:3]
    # Stripes of a photograph at the extreme ratios, so that no image is uniform.
    extremes = [photos[1].resize(size, Image.BILINEAR) for size in CHECKED_SIZES]
    batch = processor(photos + extremes, max_num_patches=max_num_patches, return_tensors="pt")
    return {name: batch[name] for name in INPUTS}
