"""CLI: python -m siglip_export {export,random,compile,reference,reference-tokens,reference-pixels}."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .export import DTYPES, ExportError, parse_dtypes


def _dtypes(value: str) -> list[str]:
    try:
        return parse_dtypes(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _add_export_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--dtype", type=_dtypes, default=["float32"], metavar="DTYPE[,DTYPE...]",
                   help=f"tower dtypes to export, comma-separated, each traced and validated separately "
                        f"({', '.join(DTYPES)}; default float32)")
    p.add_argument("--device", default="cpu", choices=["cpu"], help="tracing device (CPU; the result runs on CUDA too)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="siglip_export", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("export", help="HF checkpoint (hub id or local dir) -> model directory")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--revision")
    p.add_argument("--model-id", help="manifest model_id (default: the hub id / local path)")
    _add_export_opts(p)

    p = sub.add_parser("random", help="random-weight SigLIP checkpoint, then the same export")
    p.add_argument("--shape", required=True, choices=["tiny", "tiny-siglip2", "base-224", "so400m-384"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-out", type=Path, help="HF checkpoint dir (default: <out>-checkpoint)")
    _add_export_opts(p)

    p = sub.add_parser("compile", help="AOTInductor package of the vision tower for this machine's device")
    p.add_argument("--model-dir", type=Path, required=True, help="directory written by export/random")
    p.add_argument("--device", required=True, choices=["cpu", "cuda"], help="the device that will serve it")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="which exported dtype's tower")
    p.add_argument("--max-batch", type=int, default=64, help="largest batch the package accepts (the server's --max-batch-size)")
    p.add_argument("--max-autotune", action="store_true", help="let Inductor time alternative matmul kernels (much longer compile)")

    p = sub.add_parser("reference", help="transformers' own embeddings/logits for parity tests")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--revision")
    p.add_argument("--images", type=Path, nargs="+", required=True)
    p.add_argument("--texts-file", type=Path, required=True, help="JSON list of strings")
    p.add_argument("--out", type=Path, required=True, help="OUT.safetensors (+ OUT.json sidecar)")
    p.add_argument("--convention", choices=["processor", "pipeline"], default="processor",
                   help="how images reach the processor: Image.open (processor) or load_image (pipeline)")

    p = sub.add_parser("reference-tokens", help="transformers' input_ids only")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--revision")
    p.add_argument("--texts-file", type=Path, required=True, help='JSON list of strings or of {"class", "text"}')
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("reference-pixels", help="transformers' (PIL backend) pixel_values only")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--revision")
    p.add_argument("--images", type=Path, nargs="+", required=True)
    p.add_argument("--size", type=int, help="override the processor's square size (e.g. 384)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--convention", choices=["processor", "pipeline"], default="processor",
                   help="how images reach the processor: Image.open (processor) or load_image (pipeline)")

    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    try:
        return _run(a)
    except ExportError as e:
        # A check failed or the input is unusable: the message says which; no traceback.
        print(f"error: {e}", file=sys.stderr)
        return 1


def _run(a: argparse.Namespace) -> int:
    if a.cmd in ("export", "random"):
        from .export import export

        if a.cmd == "random":
            from .random_models import make_random_checkpoint

            ckpt = a.checkpoint_out or a.out.with_name(a.out.name + "-checkpoint")
            make_random_checkpoint(a.shape, ckpt, a.seed)
            result = export(str(ckpt), a.out, dtype=a.dtype, device=a.device, random_shape=a.shape)
        else:
            result = export(a.checkpoint, a.out, revision=a.revision, dtype=a.dtype, device=a.device,
                            model_id=a.model_id)
        print(json.dumps({k: result[k] for k in ("validation", "tokenizer", "seconds")}, indent=2))
        return 0

    if a.cmd == "compile":
        from .compile import compile_vision

        result = compile_vision(a.model_dir, device=a.device, dtype=a.dtype, max_batch=a.max_batch,
                                max_autotune=a.max_autotune)
        print(json.dumps(result, indent=2))
        return 0

    from . import reference as ref

    if a.cmd == "reference":
        ref.reference(a.checkpoint, a.images, ref.read_texts(a.texts_file), a.out, a.revision, a.convention)
    elif a.cmd == "reference-tokens":
        texts, classes = ref.read_corpus(a.texts_file)
        ref.reference_tokens(a.checkpoint, texts, a.out, classes, revision=a.revision)
    else:
        ref.reference_pixels(a.checkpoint, a.images, a.out, a.size, a.revision, a.convention)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
