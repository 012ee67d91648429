"""What transformers itself computes, saved for parity tests of the Rust server.

Images go to the image processor backend the server is told to reproduce (`--image-processor`),
always by its explicit class, never through `AutoImageProcessor` (which picks the torchvision one
whenever torchvision is importable, so installing it would silently change the references):
- "pil": `SiglipImageProcessorPil`;
- "torchvision": `SiglipImageProcessor` (needs torchvision).
They get the image by one of the two conventions the server offers (`--image-convention`):
- "processor": `Image.open(path)` as is (the processor's `convert_to_rgb` composites
  transparency onto white; EXIF orientation is not applied); a raw RGBA frame as a numpy array;
- "pipeline": `transformers.image_utils.load_image(path)` (EXIF transpose, then `convert("RGB")`),
  as the zero-shot pipeline does.
Raw frames are files named `*_<W>x<H>.rgba` (tightly packed RGBA8).
Regions (the server's stream regions): a box `(x, y, width, height)` per image, cut from the image
as opened above: Pillow's `crop((x, y, x + width, y + height))`, or for a raw frame the numpy slice
`a[y:y+h, x:x+w]`.
Texts: the checkpoint's transformers tokenizer (slow `SiglipTokenizer` for SigLIP v1), padded to
64, truncated.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .checkpoint import load_tokenizer, resolve_checkpoint
from .tokenizer import reference_ids

PROCESSORS = ("pil", "torchvision")


def _image_processor(checkpoint_dir: Path, size: int | None, processor: str) -> Any:
    import transformers

    classes = {"pil": "SiglipImageProcessorPil", "torchvision": "SiglipImageProcessor"}
    if processor not in classes:
        raise ValueError(f"unknown image processor {processor!r}; choose from {PROCESSORS}")
    cls = getattr(transformers, classes[processor])
    kwargs = {"size": {"height": size, "width": size}} if size else {}
    image_processor = cls.from_pretrained(str(checkpoint_dir), **kwargs)
    # transformers falls back to another backend where torchvision is missing; a reference must
    # come from the backend it is named after.
    backend = getattr(image_processor, "backend", None)
    if backend != processor:
        raise RuntimeError(f"{classes[processor]} runs the {backend!r} backend, not {processor!r}: "
                           f"is torchvision installed (python/requirements.txt)?")
    return image_processor


CONVENTIONS = ("processor", "pipeline")


Box = tuple[int, int, int, int]


def open_image(path: Path | str, convention: str, box: Box | None = None) -> Any:
    """The image as the reference code hands it to the processor; with a box `(x, y, width,
    height)`, only that region of it (which must lie inside: Pillow would pad it with zeros)."""
    import numpy as np
    from PIL import Image
    from transformers.image_utils import load_image

    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose from {CONVENTIONS}")
    file = Path(path)
    if file.suffix == ".rgba":
        width, height = (int(v) for v in file.stem.rsplit("_", 1)[1].split("x"))
        frame = np.frombuffer(file.read_bytes(), dtype=np.uint8).reshape(height, width, 4)
        if box is not None:
            x, y, w, h = _inside(box, width, height, file)
            frame = frame[y:y + h, x:x + w]
        return frame if convention == "processor" else load_image(Image.fromarray(frame, "RGBA"))
    image = Image.open(file) if convention == "processor" else load_image(str(file))
    if box is None:
        return image
    x, y, w, h = _inside(box, *image.size, file)
    return image.crop((x, y, x + w, y + h))


def image_size(path: Path | str, convention: str) -> tuple[int, int]:
    """Width and height of the image as `open_image` gives it (EXIF-transposed under "pipeline")."""
    image = open_image(path, convention)
    return (image.shape[1], image.shape[0]) if hasattr(image, "shape") else image.size


def _inside(box: Box, width: int, height: int, file: Path) -> Box:
    x, y, w, h = box
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"{file}: box {box} is empty or reaches outside the {width}x{height} image")
    return box


def pixel_values(checkpoint_dir: Path, images: Sequence[Path], size: int | None = None,
                 convention: str = "processor", boxes: Sequence[Box] | None = None,
                 processor: str = "pil") -> torch.Tensor:
    image_processor = _image_processor(checkpoint_dir, size, processor)
    opened = [open_image(path, convention, box) for path, box in zip(images, boxes or [None] * len(images), strict=True)]
    # Every input is height x width x channels: said outright, because transformers guesses the
    # layout of a numpy array from its shape and takes a crop 1 or 3 pixels high for channels-first.
    return image_processor(opened, return_tensors="pt", input_data_format="channels_last")["pixel_values"].float()


def naflex_inputs(checkpoint_dir: Path, images: Sequence[Path], max_num_patches: int,
                  convention: str = "processor") -> dict[str, torch.Tensor]:
    """A NaFlex checkpoint's processor (`Siglip2ImageProcessorPil`, by name) at patch budget
    `max_num_patches`: pixel_values [N, M, 3·P²], pixel_attention_mask [N, M], spatial_shapes
    [N, 2]."""
    from transformers import Siglip2ImageProcessorPil

    image_processor = Siglip2ImageProcessorPil.from_pretrained(str(checkpoint_dir))
    opened = [open_image(path, convention) for path in images]
    batch = image_processor(opened, max_num_patches=max_num_patches, return_tensors="pt",
                            input_data_format="channels_last")
    return {"pixel_values": batch["pixel_values"].float(), "pixel_attention_mask": batch["pixel_attention_mask"].long(),
            "spatial_shapes": batch["spatial_shapes"].long()}


def reference_naflex_pixels(checkpoint: str, images: Sequence[Path], out: Path, max_num_patches: int,
                            convention: str = "processor") -> None:
    ckpt = resolve_checkpoint(checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = naflex_inputs(ckpt.path, images, max_num_patches, convention)
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(out))
    _sidecar(out, images=[str(Path(path).resolve()) for path in images], checkpoint=ckpt.source,
             max_num_patches=max_num_patches, convention=convention, processor="pil")


@torch.no_grad()
def reference_naflex(checkpoint: str, images: Sequence[Path], texts: Sequence[str], out: Path, max_num_patches: int,
                     convention: str = "processor") -> None:
    """A NaFlex checkpoint end to end (`Siglip2Model`) at patch budget `max_num_patches`: the
    processor's inputs, both embeddings, logits and probabilities."""
    from transformers import Siglip2Model

    ckpt = resolve_checkpoint(checkpoint)
    model = Siglip2Model.from_pretrained(str(ckpt.path), dtype=torch.float32).eval()
    inputs = naflex_inputs(ckpt.path, images, max_num_patches, convention)
    ids = input_ids(ckpt.path, texts)
    outputs = model(input_ids=ids, **inputs)  # no text attention mask, as SigLIP is used
    tensors = {
        **inputs,
        "input_ids": ids,
        "image_embeds": outputs.image_embeds.float(),
        "text_embeds": outputs.text_embeds.float(),
        "logits": outputs.logits_per_image.float(),
        "probs": torch.sigmoid(outputs.logits_per_image).float(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(out))
    _sidecar(out, images=[str(Path(path).resolve()) for path in images], texts=list(texts), checkpoint=ckpt.source,
             max_num_patches=max_num_patches, convention=convention, processor="pil")


def input_ids(checkpoint_dir: Path, texts: Sequence[str]) -> torch.Tensor:
    return torch.tensor(reference_ids(load_tokenizer(checkpoint_dir), texts), dtype=torch.int64)


def read_texts(path: Path) -> list[str]:
    texts = json.loads(path.read_text())
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise ValueError(f"{path}: expected a JSON list of strings")
    return texts


def read_corpus(path: Path) -> tuple[list[str], list[str]]:
    """A tokenizer corpus as texts and their classes: a JSON list of {"class", "text"}, or of
    plain strings (class "")."""
    entries = json.loads(path.read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list")
    entries = [{"text": entry} if isinstance(entry, str) else entry for entry in entries]
    if not all(isinstance(entry, dict) and isinstance(entry.get("text"), str) for entry in entries):
        raise ValueError(f"{path}: expected strings or {{\"class\", \"text\"}} objects")
    return [entry["text"] for entry in entries], [str(entry.get("class", "")) for entry in entries]


def _sidecar(out: Path, **fields: Any) -> None:
    import transformers

    out.with_suffix(".json").write_text(
        json.dumps({**fields, "transformers": transformers.__version__}, indent=2, ensure_ascii=False) + "\n"
    )


@torch.no_grad()
def reference(checkpoint: str, images: Sequence[Path], texts: Sequence[str], out: Path, revision: str | None = None,
              convention: str = "processor", boxes: Sequence[Box] | None = None, processor: str = "pil") -> None:
    """End to end; with `boxes` (one per image), each row is that region of its image."""
    from transformers import SiglipModel

    ckpt = resolve_checkpoint(checkpoint, revision)
    model = SiglipModel.from_pretrained(str(ckpt.path), dtype=torch.float32).eval()
    pixels = pixel_values(ckpt.path, images, convention=convention, boxes=boxes, processor=processor)
    ids = input_ids(ckpt.path, texts)
    outputs = model(input_ids=ids, pixel_values=pixels)  # no attention mask, as SigLIP is used
    tensors = {
        "pixel_values": pixels.contiguous(),
        "input_ids": ids.contiguous(),
        "image_embeds": outputs.image_embeds.float().contiguous(),
        "text_embeds": outputs.text_embeds.float().contiguous(),
        "logits": outputs.logits_per_image.float().contiguous(),
        "probs": torch.sigmoid(outputs.logits_per_image).float().contiguous(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out))
    regions = {"regions": [dict(zip(("x", "y", "width", "height"), box, strict=True)) for box in boxes]} if boxes else {}
    _sidecar(out, images=[str(Path(path).resolve()) for path in images], texts=list(texts), checkpoint=ckpt.source,
             convention=convention, processor=processor, **regions)


def reference_tokens(checkpoint: str, texts: Sequence[str], out: Path, classes: Sequence[str] | None = None,
                     revision: str | None = None) -> None:
    ckpt = resolve_checkpoint(checkpoint, revision)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"input_ids": input_ids(ckpt.path, texts).contiguous()}, str(out))
    _sidecar(out, texts=list(texts), classes=list(classes or []), checkpoint=ckpt.source)


def reference_pixels(checkpoint: str, images: Sequence[Path], out: Path, size: int | None = None, revision: str | None = None,
                     convention: str = "processor", processor: str = "pil") -> None:
    ckpt = resolve_checkpoint(checkpoint, revision)
    out.parent.mkdir(parents=True, exist_ok=True)
    pixels = pixel_values(ckpt.path, images, size, convention, processor=processor)
    save_file({"pixel_values": pixels.contiguous()}, str(out))
    _sidecar(out, images=[str(Path(path).resolve()) for path in images], checkpoint=ckpt.source, size=size,
             convention=convention, processor=processor)
