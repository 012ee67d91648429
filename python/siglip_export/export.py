"""HF SigLIP checkpoint -> model directory (manifest.json, the tokenizer files, vision.<dtype>.pt and
text.<dtype>.pt for each exported dtype).

Every export validates itself: the reloaded TorchScript modules are compared with eager
transformers, and a tokenizer.json with the checkpoint's transformers tokenizer. The tokenizer's
start-up check (tokenizer_check.json) holds transformers' ids for a sample of texts, which the
server reproduces before it serves. Any failure raises.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import manifest, naflex, tokenizer
from .checkpoint import load_tokenizer, resolve_checkpoint
from .texts import tokenizer_check_texts
from .towers import (
    ATTN_IMPLEMENTATION,
    DTYPES,
    TextEmbed,
    VisionEmbed,
    max_diff,
    parse_dtypes,
    sample_ids,
    sample_inputs,
)

log = logging.getLogger(__name__)

_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# The filters the server reproduces (SigLIP: bicubic; SigLIP 2 fixed-resolution: bilinear).
_SERVED_RESAMPLE = ("bilinear", "bicubic")


class ExportError(RuntimeError):
    """Raised when an exported artefact does not reproduce transformers, or the input is unusable
    (every subcommand raises it; the CLI prints it as one line, `error: ...`)."""


def _resample_name(value: Any) -> str:
    return _RESAMPLE.get(int(getattr(value, "value", value)), str(value))


def image_settings(path: Path) -> dict[str, Any]:
    from transformers import SiglipImageProcessorPil

    processor = SiglipImageProcessorPil.from_pretrained(str(path))
    size = processor.size
    height, width = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
    if height != width:
        raise ExportError(f"non-square image size {size} is not supported")
    if not (processor.do_resize and processor.do_rescale and processor.do_normalize):
        raise ExportError("image processor with resize/rescale/normalize disabled is not supported")
    resample = _resample_name(processor.resample)
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
    max_num_patches: tuple[int, ...] = naflex.MAX_NUM_PATCHES,
) -> dict[str, Any]:
    """Export the towers once per dtype in `dtype` ("float32,bfloat16" or a list). Each dtype is
    traced separately (the cast of pixel_values to the weights' dtype is part of the trace) and
    validated on its own; manifest.json is written last, only when every dtype passed. A NaFlex
    checkpoint's tower is checked at every patch budget of `max_num_patches` (and the
    processor's default), which the manifest then allows.
    Returns {"manifest", "validation": {dtype: figures}, "tokenizer", "seconds"}."""
    from transformers import AutoConfig, Siglip2Model, SiglipModel

    if device != "cpu":
        raise ExportError("tracing runs on CPU (the traced modules are device-agnostic and load on CUDA)")
    dtypes = parse_dtypes(dtype)
    t0 = time.time()
    ckpt = resolve_checkpoint(checkpoint, revision)
    config = AutoConfig.from_pretrained(str(ckpt.path))
    if config.model_type not in ("siglip", "siglip2"):
        raise ExportError(f"model_type {config.model_type!r} not supported (need 'siglip', SigLIP and SigLIP 2 "
                          f"fixed-resolution, or 'siglip2', SigLIP 2 NaFlex)")
    is_naflex = naflex.is_naflex(config)
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

    model_class = Siglip2Model if is_naflex else SiglipModel
    ref_model = model_class.from_pretrained(str(ckpt.path), attn_implementation=ATTN_IMPLEMENTATION, dtype=torch.float32).eval()
    if is_naflex:
        try:
            image = naflex.image_settings(ckpt.path, max_num_patches, _SERVED_RESAMPLE, _resample_name)
        except ValueError as e:
            raise ExportError(str(e)) from e
        budgets = image["naflex"]["max_num_patches"]
        # Each budget's inputs; the default one's first three (the photographs) trace the tower.
        vision = {m: naflex.sample_inputs(ckpt.path, m) for m in budgets}
        default = vision[image["naflex"]["default_max_num_patches"]]
        ids = sample_ids(hf_tokenizer)
        vision_module, sample = naflex.NaflexVisionEmbed, {name: default[name][:3] for name in naflex.INPUTS}
    else:
        image = image_settings(ckpt.path)
        if ref_model.config.vision_config.image_size != image["size"]:
            raise ExportError(f"processor size {image['size']} != model image_size "
                              f"{ref_model.config.vision_config.image_size}")
        pixels, ids = sample_inputs(ckpt.path, hf_tokenizer)
        vision_module, sample, vision = VisionEmbed, {"pixel_values": pixels}, {}

    reports: dict[str, dict[str, Any]] = {}
    for name in dtypes:
        torch_dtype = DTYPES[name]
        files = manifest.tower_files(name)
        # A fresh fp32 load cast with .to(dtype), as before: ref_model itself stays fp32.
        model = ref_model if torch_dtype == torch.float32 else model_class.from_pretrained(
            str(ckpt.path), attn_implementation=ATTN_IMPLEMENTATION, dtype=torch.float32).to(torch_dtype).eval()
        eager_vision, eager_text = vision_module(model.vision_model).eval(), TextEmbed(model.text_model).eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation / tracer warnings
            t1 = time.time()
            with naflex.device_free(model.vision_model) if is_naflex else contextlib.nullcontext():
                traced = torch.jit.trace(eager_vision, _vision_args(sample, slice(0, 2), torch_dtype), check_trace=False)
            torch.jit.save(traced, str(out / files["vision"]))
            torch.jit.save(torch.jit.trace(eager_text, (ids[:2],), check_trace=False), str(out / files["text"]))
            log.info("%s: traced in %.1fs", name, time.time() - t1)
            try:
                reports[name] = _validate(out, files, eager_vision, eager_text, ref_model, sample, ids, torch_dtype)
                for m, inputs in vision.items():
                    reports[name].update(_validate_naflex(out / files["vision"], model, m, inputs, torch_dtype))
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
        architecture="siglip2-naflex" if is_naflex else "siglip2" if text_settings.kind == "gemma" else "siglip",
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


def _vision_args(inputs: dict[str, torch.Tensor], index: slice | list[int], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """The vision tower's arguments for some of the sample images, pixels in `dtype`."""
    return tuple(tensor[index].to(dtype) if tensor.is_floating_point() else tensor[index] for tensor in inputs.values())


def _validate(
    out: Path, files: dict[str, str], eager_vision: nn.Module, eager_text: nn.Module, ref_model: Any,
    vision: dict[str, torch.Tensor], ids: torch.Tensor, dtype: torch.dtype,
) -> dict[str, Any]:
    """Reload one dtype's .pt files; compare with eager (same dtype) at batch 1 and 3 and, via
    the logits, with the transformers model in fp32."""
    traced_vision = torch.jit.load(str(out / files["vision"]), map_location="cpu")
    traced_text = torch.jit.load(str(out / files["text"]), map_location="cpu")
    for name, module in ((files["vision"], traced_vision), (files["text"], traced_text)):
        pinned = _device_constants(module)
        if pinned:
            raise ExportError(f"{name} pins a device, would not run on CUDA: {pinned[:3]}")
    same_dtype_tol = _same_dtype_tolerance(dtype)
    report: dict[str, Any] = {}
    for n in (1, 3):
        args = _vision_args(vision, slice(0, n), dtype)
        traced_img, eager_img = traced_vision(*args), eager_vision(*args)
        traced_txt, eager_txt = traced_text(ids[:n]), eager_text(ids[:n])
        if traced_img.shape[0] != n or traced_txt.shape[0] != n:
            raise ExportError(f"batch {n}: traced output shapes {tuple(traced_img.shape)}, {tuple(traced_txt.shape)}")
        diff = max(max_diff(traced_img, eager_img), max_diff(traced_txt, eager_txt))
        report[f"traced_vs_eager_b{n}"] = diff
        if diff > same_dtype_tol:
            raise ExportError(f"batch {n}: traced vs eager max diff {diff:g} > {same_dtype_tol:g}")
    reference = ref_model(input_ids=ids, **vision)
    img, txt = traced_vision(*_vision_args(vision, slice(None), dtype)).float(), traced_text(ids).float()
    logits = img @ txt.T * ref_model.logit_scale.exp() + ref_model.logit_bias
    logits_diff = max_diff(logits, reference.logits_per_image)
    # Low precision: compare embedding directions (logit error scales with exp(logit_scale)).
    min_cosine = min(float((img * reference.image_embeds).sum(-1).min()), float((txt * reference.text_embeds).sum(-1).min()))
    report.update(logits_vs_transformers_fp32=logits_diff, min_cosine_vs_fp32=min_cosine, embedding_dim=img.shape[-1])
    if dtype == torch.float32 and logits_diff > 1e-3:
        raise ExportError(f"logits differ from the transformers model by {logits_diff:g}")
    if min_cosine < (0.9999 if dtype == torch.float32 else 0.99):
        raise ExportError(f"embeddings diverge from the fp32 transformers model (min cosine {min_cosine:.5f})")
    return report


def _same_dtype_tolerance(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 2e-2


def _validate_naflex(path: Path, model: Any, budget: int, inputs: dict[str, torch.Tensor],
                     dtype: torch.dtype) -> dict[str, float]:
    """The traced NaFlex tower at patch budget `budget`, on every sample image (photographs and
    extreme aspect ratios, each on its own patch grid) in one batch: against transformers' own
    vision model in the same dtype, and each image alone against the batch (padding to the budget
    makes an image's result its own)."""
    traced = torch.jit.load(str(path), map_location="cpu")
    every = slice(None)
    batch = traced(*_vision_args(inputs, every, dtype))
    args = dict(zip(inputs, _vision_args(inputs, every, dtype), strict=True))
    reference = model.vision_model(**args).pooler_output
    diff = max_diff(batch, reference / reference.norm(p=2, dim=-1, keepdim=True))
    if diff > _same_dtype_tolerance(dtype):
        raise ExportError(f"max_num_patches {budget}: traced vs transformers max diff {diff:g} on "
                          f"grids {inputs['spatial_shapes'].tolist()}")
    alone = max(max_diff(traced(*_vision_args(inputs, [i], dtype)), batch[i:i + 1]) for i in range(batch.shape[0]))
    if dtype == torch.float32 and alone > 1e-5:
        raise ExportError(f"max_num_patches {budget}: an image alone differs from itself in a batch by {alone:g}")
    return {f"traced_vs_transformers_m{budget}": diff, f"alone_vs_batch_m{budget}": alone}
