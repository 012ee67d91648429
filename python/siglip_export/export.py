"""HF SigLIP checkpoint -> model directory (manifest.json, the tokenizer files, vision.<dtype>.pt and
text.<dtype>.pt for each exported dtype).

Every export validates itself: the reloaded TorchScript modules are compared with eager
transformers, and a tokenizer.json with the checkpoint's transformers tokenizer. The tokenizer's
start-up check (tokenizer_check.json) holds transformers' ids for a sample of texts, which the
server reproduces before it serves. Any failure raises.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import manifest, tokenizer
from .checkpoint import load_tokenizer, resolve_checkpoint
from .texts import tokenizer_check_texts
from .towers import ATTN_IMPLEMENTATION, DTYPES, TextEmbed, VisionEmbed, max_diff, parse_dtypes, sample_inputs

log = logging.getLogger(__name__)

_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# The filters the server reproduces (SigLIP: bicubic; SigLIP 2 fixed-resolution: bilinear).
_SERVED_RESAMPLE = ("bilinear", "bicubic")


class ExportError(RuntimeError):
    """Raised when an exported artefact does not reproduce transformers, or the input is unusable
    (every subcommand raises it; the CLI prints it as one line, `error: ...`)."""


def image_settings(path: Path) -> dict[str, Any]:
    from transformers import SiglipImageProcessorPil

    processor = SiglipImageProcessorPil.from_pretrained(str(path))
    size = processor.size
    height, width = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
    if height != width:
        raise ExportError(f"non-square image size {size} is not supported")
    if not (processor.do_resize and processor.do_rescale and processor.do_normalize):
        raise ExportError("image processor with resize/rescale/normalize disabled is not supported")
    resample = _RESAMPLE.get(int(getattr(processor.resample, "value", processor.resample)), str(processor.resample))
    if resample not in _SERVED_RESAMPLE:
        raise ExportError(f"resample {resample!r} is not supported (the server reproduces {' and '.join(_SERVED_RESAMPLE)})")
    return {
        "size": int(height),
        "resample": resample,
        "rescale_factor": float(processor.rescale_factor),
        "mean": [float(x) for x in processor.image_mean],
        "std": [float(x) for x in processor.image_std],
    }


def _device_constants(module: torch.jit.ScriptModule) -> list[str]:
    """Graph lines that pin a device: a traced constant like device="cpu" would break on CUDA."""
    graph = str(module.inlined_graph)
    return [line.strip() for line in graph.splitlines() if re.search(r'prim::Constant\[value="(cpu|cuda)', line)]


def _remove_stale_towers(out: Path, keep: list[str]) -> None:
    """Tower files of dtypes not in this export (and the pre-"towers" vision.pt/text.pt), and every
    compiled package, would sit in the directory unreferenced: remove them."""
    keep_names = {name for dtype in keep for name in manifest.tower_files(dtype).values()}
    stale = [out / "vision.pt", out / "text.pt"]
    stale += [out / name for dtype in manifest.TOWER_DTYPES for name in manifest.tower_files(dtype).values()]
    # Compiled packages hold the old weights: `compile` again after a re-export.
    stale += sorted(out.glob("vision.*.pt2"))
    for path in stale:
        if path.name not in keep_names and path.exists():
            log.info("removing stale %s", path)
            path.unlink()


def export(
    checkpoint: str, out: Path, *, revision: str | None = None, dtype: str | list[str] = "float32", device: str = "cpu",
    model_id: str | None = None, random_shape: str | None = None,
) -> dict[str, Any]:
    """Export the towers once per dtype in `dtype` ("float32,bfloat16" or a list). Each dtype is
    traced separately (the cast of pixel_values to the weights' dtype is part of the trace) and
    validated on its own; manifest.json is written last, only when every dtype passed.
    Returns {"manifest", "validation": {dtype: figures}, "tokenizer", "seconds"}."""
    from transformers import AutoConfig, SiglipModel

    if device != "cpu":
        raise ExportError("tracing runs on CPU (the traced modules are device-agnostic and load on CUDA)")
    dtypes = parse_dtypes(dtype)
    t0 = time.time()
    ckpt = resolve_checkpoint(checkpoint, revision)
    config = AutoConfig.from_pretrained(str(ckpt.path))
    if config.model_type != "siglip":
        # SigLIP 2 NaFlex (model_type siglip2) needs patch masks/spatial shapes: not this format.
        raise ExportError(f"model_type {config.model_type!r} not supported (need 'siglip', incl. SigLIP 2 fixed-res)")
    out.mkdir(parents=True, exist_ok=True)
    # No manifest until this export has passed: a failed run must not leave an old manifest
    # next to half-rewritten towers.
    (out / "manifest.json").unlink(missing_ok=True)

    hf_tokenizer = load_tokenizer(ckpt.path)
    try:
        text_settings, tokenizer_files = tokenizer.write(hf_tokenizer, out, tokenizer_check_texts())
    except ValueError as e:
        raise ExportError(str(e)) from e
    log.info("tokenizer (%s): %s", text_settings.kind, ", ".join(sorted(tokenizer_files.values())))

    image = image_settings(ckpt.path)
    ref_model = SiglipModel.from_pretrained(str(ckpt.path), attn_implementation=ATTN_IMPLEMENTATION, dtype=torch.float32).eval()
    if ref_model.config.vision_config.image_size != image["size"]:
        raise ExportError(f"processor size {image['size']} != model image_size {ref_model.config.vision_config.image_size}")
    pixels, ids = sample_inputs(ckpt.path, hf_tokenizer)

    reports: dict[str, dict[str, Any]] = {}
    for name in dtypes:
        torch_dtype = DTYPES[name]
        files = manifest.tower_files(name)
        # A fresh fp32 load cast with .to(dtype), as before: ref_model itself stays fp32.
        model = ref_model if torch_dtype == torch.float32 else SiglipModel.from_pretrained(
            str(ckpt.path), attn_implementation=ATTN_IMPLEMENTATION, dtype=torch.float32).to(torch_dtype).eval()
        eager_vision, eager_text = VisionEmbed(model.vision_model).eval(), TextEmbed(model.text_model).eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation / tracer warnings
            t1 = time.time()
            torch.jit.save(torch.jit.trace(eager_vision, (pixels[:2].to(torch_dtype),), check_trace=False),
                           str(out / files["vision"]))
            torch.jit.save(torch.jit.trace(eager_text, (ids[:2],), check_trace=False), str(out / files["text"]))
            log.info("%s: traced in %.1fs", name, time.time() - t1)
            try:
                reports[name] = _validate(out, files, eager_vision, eager_text, ref_model, pixels, ids, torch_dtype)
            except ExportError as e:
                raise ExportError(f"{name}: {e}") from e
        log.info("%s: validated %s", name, reports[name])
        del model, eager_vision, eager_text

    _remove_stale_towers(out, dtypes)
    dims = {report["embedding_dim"] for report in reports.values()}
    if len(dims) != 1:
        raise ExportError(f"embedding_dim differs between dtypes: {dims}")
    scale, bias = float(ref_model.logit_scale.item()), float(ref_model.logit_bias.item())
    model_manifest = manifest.build(
        model_id=model_id or (f"random/{random_shape}" if random_shape else ckpt.source),
        architecture="siglip2" if text_settings.kind == "gemma" else "siglip",
        source={"checkpoint": ckpt.source, "revision": ckpt.revision, "random_weights": random_shape is not None,
                "shape": random_shape},
        image=image,
        text={"max_length": text_settings.max_length, "pad_id": text_settings.pad_id, "eos_id": text_settings.eos_id,
              "lowercase": text_settings.lowercase, "tokenizer": text_settings.kind},
        embedding_dim=int(dims.pop()),
        files=tokenizer_files,
        dtypes=dtypes,
        logit_scale=scale,
        logit_bias=bias,
    )
    manifest.write(model_manifest, out)
    log.info("exported %s -> %s [%s] in %.1fs", ckpt.source, out, ",".join(dtypes), time.time() - t0)
    return {"manifest": model_manifest, "validation": reports, "tokenizer": text_settings.kind,
            "seconds": round(time.time() - t0, 1)}


def _validate(
    out: Path, files: dict[str, str], eager_vision: nn.Module, eager_text: nn.Module, ref_model: Any, pixels: torch.Tensor,
    ids: torch.Tensor, dtype: torch.dtype,
) -> dict[str, Any]:
    """Reload one dtype's .pt files; compare with eager (same dtype) at batch 1 and 3 and, via
    the logits, with SiglipModel in fp32."""
    traced_vision = torch.jit.load(str(out / files["vision"]), map_location="cpu")
    traced_text = torch.jit.load(str(out / files["text"]), map_location="cpu")
    for name, module in ((files["vision"], traced_vision), (files["text"], traced_text)):
        pinned = _device_constants(module)
        if pinned:
            raise ExportError(f"{name} pins a device, would not run on CUDA: {pinned[:3]}")
    same_dtype_tol = 1e-5 if dtype == torch.float32 else 2e-2
    report: dict[str, Any] = {}
    for n in (1, 3):
        batch_pixels = pixels[:n].to(dtype)
        traced_img, eager_img = traced_vision(batch_pixels), eager_vision(batch_pixels)
        traced_txt, eager_txt = traced_text(ids[:n]), eager_text(ids[:n])
        if traced_img.shape[0] != n or traced_txt.shape[0] != n:
            raise ExportError(f"batch {n}: traced output shapes {tuple(traced_img.shape)}, {tuple(traced_txt.shape)}")
        diff = max(max_diff(traced_img, eager_img), max_diff(traced_txt, eager_txt))
        report[f"traced_vs_eager_b{n}"] = diff
        if diff > same_dtype_tol:
            raise ExportError(f"batch {n}: traced vs eager max diff {diff:g} > {same_dtype_tol:g}")
    reference = ref_model(input_ids=ids, pixel_values=pixels)
    img, txt = traced_vision(pixels.to(dtype)).float(), traced_text(ids).float()
    logits = img @ txt.T * ref_model.logit_scale.exp() + ref_model.logit_bias
    logits_diff = max_diff(logits, reference.logits_per_image)
    # Low precision: compare embedding directions (logit error scales with exp(logit_scale)).
    min_cosine = min(float((img * reference.image_embeds).sum(-1).min()), float((txt * reference.text_embeds).sum(-1).min()))
    report.update(logits_vs_transformers_fp32=logits_diff, min_cosine_vs_fp32=min_cosine, embedding_dim=img.shape[-1])
    if dtype == torch.float32 and logits_diff > 1e-3:
        raise ExportError(f"logits differ from SiglipModel by {logits_diff:g}")
    if min_cosine < (0.9999 if dtype == torch.float32 else 0.99):
        raise ExportError(f"embeddings diverge from fp32 SiglipModel (min cosine {min_cosine:.5f})")
    return report
