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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import manifest, tokenizer as tokmod
from .texts import builtin_sample, tokenizer_check_texts

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# The filters the server reproduces (SigLIP: bicubic; SigLIP 2 fixed-resolution: bilinear).
_SERVED_RESAMPLE = ("bilinear", "bicubic")
# Attention kernel used for tracing. sdpa traces to one aten op, equals eager exactly (NOTES.md)
# and keeps the traced graph device-agnostic.
ATTN_IMPLEMENTATION = "sdpa"


class ExportError(RuntimeError):
    """Raised when an exported artefact does not reproduce transformers."""


class VisionEmbed(nn.Module):
    """pixel_values (B,3,S,S) -> L2-normalised image embeddings (B,D), as SiglipModel.forward."""

    def __init__(self, vision_model: nn.Module) -> None:
        super().__init__()
        self.vision_model = vision_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        emb = self.vision_model(pixel_values=pixel_values).pooler_output
        return emb / emb.norm(p=2, dim=-1, keepdim=True)


class TextEmbed(nn.Module):
    """input_ids (B,64) -> L2-normalised text embeddings (B,D). No attention mask: SigLIP was
    trained on fixed-length padded text and pools the last position."""

    def __init__(self, text_model: nn.Module) -> None:
        super().__init__()
        self.text_model = text_model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        emb = self.text_model(input_ids=input_ids).pooler_output
        return emb / emb.norm(p=2, dim=-1, keepdim=True)


@dataclass
class Checkpoint:
    path: Path  # local directory
    source: str  # hub id or absolute local path
    revision: str | None


def resolve_checkpoint(checkpoint: str, revision: str | None = None) -> Checkpoint:
    """Local directory as is; otherwise a hub id resolved through the HF cache (offline works
    when cached), recording the snapshot's commit sha."""
    p = Path(checkpoint)
    if p.is_dir():
        return Checkpoint(p.resolve(), str(p.resolve()), revision)
    from huggingface_hub import snapshot_download

    local = Path(
        snapshot_download(checkpoint, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
    )
    sha = local.name if re.fullmatch(r"[0-9a-f]{40}", local.name) else revision
    return Checkpoint(local, checkpoint, sha)


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def image_settings(path: Path) -> dict[str, Any]:
    from transformers import SiglipImageProcessorPil

    ip = SiglipImageProcessorPil.from_pretrained(str(path))
    size = ip.size
    h, w = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
    if h != w:
        raise ExportError(f"non-square image size {size} is not supported")
    if not (ip.do_resize and ip.do_rescale and ip.do_normalize):
        raise ExportError("image processor with resize/rescale/normalize disabled is not supported")
    resample = _RESAMPLE.get(int(getattr(ip.resample, "value", ip.resample)), str(ip.resample))
    if resample not in _SERVED_RESAMPLE:
        raise ExportError(f"resample {resample!r} is not supported (the server reproduces {' and '.join(_SERVED_RESAMPLE)})")
    return {
        "size": int(h),
        "resample": resample,
        "rescale_factor": float(ip.rescale_factor),
        "mean": [float(x) for x in ip.image_mean],
        "std": [float(x) for x in ip.image_std],
    }


def _device_constants(module: torch.jit.ScriptModule) -> list[str]:
    """Graph lines that pin a device: a traced constant like device="cpu" would break on CUDA."""
    graph = str(module.inlined_graph)
    return [ln.strip() for ln in graph.splitlines() if re.search(r'prim::Constant\[value="(cpu|cuda)', ln)]


def _sample_inputs(ckpt: Path, hf_tok: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Real photographs through the PIL processor and a few texts through the HF tokenizer."""
    from transformers import SiglipImageProcessorPil

    from .random_models import CALIBRATION_TEXTS, calibration_images

    ip = SiglipImageProcessorPil.from_pretrained(str(ckpt))
    pixels = ip(calibration_images()[:3], return_tensors="pt")["pixel_values"]
    texts = [CALIBRATION_TEXTS[0], builtin_sample()[30], "a photo of 2 cats"]
    ids = torch.tensor(tokmod.reference_ids(hf_tok, texts), dtype=torch.int64)
    return pixels, ids


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def parse_dtypes(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """"float32,bfloat16" (or a list) -> ["float32", "bfloat16"]: known names, duplicates dropped,
    order kept."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for raw in items:
        d = raw.strip()
        if d not in DTYPES:
            raise ValueError(f"unknown dtype {d!r}; choose from {', '.join(DTYPES)} (comma-separated)")
        if d not in out:
            out.append(d)
    if not out:
        raise ValueError("no dtype given")
    return out


def _remove_stale_towers(out: Path, keep: list[str]) -> None:
    """Tower files of dtypes not in this export (and the pre-"towers" vision.pt/text.pt), and every
    compiled package, would sit in the directory unreferenced: remove them."""
    keep_names = {f for d in keep for f in manifest.tower_files(d).values()}
    stale = [out / "vision.pt", out / "text.pt"] + [out / f for d in manifest.TOWER_DTYPES for f in manifest.tower_files(d).values()]
    # Compiled packages hold the old weights: `compile` again after a re-export.
    stale += sorted(out.glob("vision.*.pt2"))
    for f in stale:
        if f.name not in keep_names and f.exists():
            log.info("removing stale %s", f)
            f.unlink()


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
    ck = resolve_checkpoint(checkpoint, revision)
    config = AutoConfig.from_pretrained(str(ck.path))
    if config.model_type != "siglip":
        # SigLIP 2 NaFlex (model_type siglip2) needs patch masks/spatial shapes: not this format.
        raise ExportError(f"model_type {config.model_type!r} not supported (need 'siglip', incl. SigLIP 2 fixed-res)")
    out.mkdir(parents=True, exist_ok=True)
    # No manifest until this export has passed: a failed run must not leave an old manifest
    # next to half-rewritten towers.
    (out / "manifest.json").unlink(missing_ok=True)

    hf_tok = load_tokenizer(ck.path)
    try:
        text, tokenizer_files = tokmod.write(hf_tok, out, tokenizer_check_texts())
    except ValueError as e:
        raise ExportError(str(e)) from e
    log.info("tokenizer (%s): %s", text.kind, ", ".join(sorted(tokenizer_files.values())))

    image = image_settings(ck.path)
    ref_model = SiglipModel.from_pretrained(str(ck.path), attn_implementation=ATTN_IMPLEMENTATION, dtype=torch.float32).eval()
    if ref_model.config.vision_config.image_size != image["size"]:
        raise ExportError(f"processor size {image['size']} != model image_size {ref_model.config.vision_config.image_size}")
    pixels, ids = _sample_inputs(ck.path, hf_tok)

    reports: dict[str, dict[str, Any]] = {}
    for name in dtypes:
        torch_dtype = DTYPES[name]
        files = manifest.tower_files(name)
        # A fresh fp32 load cast with .to(dtype), as before: ref_model itself stays fp32.
        model = ref_model if torch_dtype == torch.float32 else SiglipModel.from_pretrained(
            str(ck.path), attn_implementation=ATTN_IMPLEMENTATION, dtype=torch.float32).to(torch_dtype).eval()
        vision, textm = VisionEmbed(model.vision_model).eval(), TextEmbed(model.text_model).eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation / tracer warnings
            t1 = time.time()
            torch.jit.save(torch.jit.trace(vision, (pixels[:2].to(torch_dtype),), check_trace=False), str(out / files["vision"]))
            torch.jit.save(torch.jit.trace(textm, (ids[:2],), check_trace=False), str(out / files["text"]))
            log.info("%s: traced in %.1fs", name, time.time() - t1)
            try:
                reports[name] = _validate(out, files, vision, textm, ref_model, pixels, ids, torch_dtype)
            except ExportError as e:
                raise ExportError(f"{name}: {e}") from e
        log.info("%s: validated %s", name, reports[name])
        del model, vision, textm

    _remove_stale_towers(out, dtypes)
    dims = {r["embedding_dim"] for r in reports.values()}
    if len(dims) != 1:
        raise ExportError(f"embedding_dim differs between dtypes: {dims}")
    scale, bias = float(ref_model.logit_scale.item()), float(ref_model.logit_bias.item())
    m = manifest.build(
        model_id=model_id or (f"random/{random_shape}" if random_shape else ck.source),
        architecture="siglip2" if text.kind == "gemma" else "siglip",
        source={"checkpoint": ck.source, "revision": ck.revision, "random_weights": random_shape is not None, "shape": random_shape},
        image=image,
        text={"max_length": text.max_length, "pad_id": text.pad_id, "eos_id": text.eos_id, "lowercase": text.lowercase, "tokenizer": text.kind},
        embedding_dim=int(dims.pop()),
        files=tokenizer_files,
        dtypes=dtypes,
        logit_scale=scale,
        logit_bias=bias,
    )
    manifest.write(m, out)
    log.info("exported %s -> %s [%s] in %.1fs", ck.source, out, ",".join(dtypes), time.time() - t0)
    return {"manifest": m, "validation": reports, "tokenizer": text.kind, "seconds": round(time.time() - t0, 1)}


def _validate(
    out: Path, files: dict[str, str], vision: nn.Module, textm: nn.Module, ref_model: Any, pixels: torch.Tensor, ids: torch.Tensor, dtype: torch.dtype,
) -> dict[str, Any]:
    """Reload one dtype's .pt files; compare with eager (same dtype) at batch 1 and 3 and, via
    the logits, with SiglipModel in fp32."""
    tv = torch.jit.load(str(out / files["vision"]), map_location="cpu")
    tt = torch.jit.load(str(out / files["text"]), map_location="cpu")
    for name, mod in ((files["vision"], tv), (files["text"], tt)):
        pinned = _device_constants(mod)
        if pinned:
            raise ExportError(f"{name} pins a device, would not run on CUDA: {pinned[:3]}")
    same_dtype_tol = 1e-5 if dtype == torch.float32 else 2e-2
    report: dict[str, Any] = {}
    for n in (1, 3):
        px = pixels[:n].to(dtype)
        iv, ie = tv(px), vision(px)
        tv_, te = tt(ids[:n]), textm(ids[:n])
        if iv.shape[0] != n or tv_.shape[0] != n:
            raise ExportError(f"batch {n}: traced output shapes {tuple(iv.shape)}, {tuple(tv_.shape)}")
        d = max(_max_diff(iv, ie), _max_diff(tv_, te))
        report[f"traced_vs_eager_b{n}"] = d
        if d > same_dtype_tol:
            raise ExportError(f"batch {n}: traced vs eager max diff {d:g} > {same_dtype_tol:g}")
    ref = ref_model(input_ids=ids, pixel_values=pixels)
    img, txt = tv(pixels.to(dtype)).float(), tt(ids).float()
    logits = img @ txt.T * ref_model.logit_scale.exp() + ref_model.logit_bias
    d_logits = _max_diff(logits, ref.logits_per_image)
    # Low precision: compare embedding directions (logit error scales with exp(logit_scale)).
    cos = min(float((img * ref.image_embeds).sum(-1).min()), float((txt * ref.text_embeds).sum(-1).min()))
    report.update(logits_vs_transformers_fp32=d_logits, min_cosine_vs_fp32=cos, embedding_dim=img.shape[-1])
    if dtype == torch.float32 and d_logits > 1e-3:
        raise ExportError(f"logits differ from SiglipModel by {d_logits:g}")
    if cos < (0.9999 if dtype == torch.float32 else 0.99):
        raise ExportError(f"embeddings diverge from fp32 SiglipModel (min cosine {cos:.5f})")
    return report
