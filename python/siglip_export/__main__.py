"""CLI: python -m siglip_export {export,random,compile,faulty,reference,reference-tokens,reference-pixels}."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .export import ExportError
from .towers import DTYPES, parse_dtypes


def _dtypes(value: str) -> list[str]:
    try:
        return parse_dtypes(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _add_export_opts(command: argparse.ArgumentParser) -> None:
    command.add_argument("--out", type=Path, required=True, help="model directory to write")
    command.add_argument("--dtype", type=_dtypes, default=["float32"], metavar="DTYPE[,DTYPE...]",
                         help=f"tower dtypes to export, comma-separated, each traced and validated separately "
                              f"({', '.join(DTYPES)}; default float32)")
    command.add_argument("--device", default="cpu", choices=["cpu"], help="tracing device (CPU; the result runs on CUDA too)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="siglip_export", description=__doc__)
    commands = parser.add_subparsers(dest="cmd", required=True)

    command = commands.add_parser("export", help="HF checkpoint (hub id or local dir) -> model directory")
    command.add_argument("--checkpoint", required=True)
    command.add_argument("--revision")
    command.add_argument("--model-id", help="manifest model_id (default: the hub id / local path)")
    _add_export_opts(command)

    command = commands.add_parser("random", help="random-weight SigLIP checkpoint, then the same export")
    command.add_argument("--shape", required=True,
                         choices=["tiny", "tiny-siglip2", "tiny-naflex", "base-224", "base-naflex", "so400m-384"])
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--checkpoint-out", type=Path, help="HF checkpoint dir (default: <out>-checkpoint)")
    _add_export_opts(command)

    command = commands.add_parser("compile", help="AOTInductor package of the vision tower for this machine's device")
    command.add_argument("--model-dir", type=Path, required=True, help="directory written by export/random")
    command.add_argument("--device", required=True, choices=["cpu", "cuda"], help="the device that will serve it")
    command.add_argument("--dtype", default="float32", choices=list(DTYPES), help="which exported dtype's tower")
    command.add_argument("--max-batch", type=int, default=64,
                         help="largest batch the package accepts (the server's --max-batch-size)")
    command.add_argument("--max-autotune", action="store_true",
                         help="let Inductor time alternative matmul kernels (much longer compile)")

    command = commands.add_parser("faulty", help="copy of a model whose vision tower raises for chosen inputs (tests)")
    command.add_argument("--model-dir", type=Path, required=True, help="directory written by export/random (float32)")
    command.add_argument("--out", type=Path, required=True, help="model directory to write (replaced)")

    command = commands.add_parser("reference", help="transformers' own embeddings/logits for parity tests")
    command.add_argument("--checkpoint", required=True)
    command.add_argument("--revision")
    command.add_argument("--images", type=Path, nargs="+", required=True)
    command.add_argument("--texts-file", type=Path, required=True, help="JSON list of strings")
    command.add_argument("--out", type=Path, required=True, help="OUT.safetensors (+ OUT.json sidecar)")
    command.add_argument("--convention", choices=["processor", "pipeline"], default="processor",
                         help="how images reach the processor: Image.open (processor) or load_image (pipeline)")
    command.add_argument("--processor", choices=["pil", "torchvision"], default="pil",
                         help="the image processor backend: SiglipImageProcessorPil (pil) or SiglipImageProcessor "
                              "(torchvision, what AutoProcessor picks where torchvision is installed)")

    command = commands.add_parser("reference-tokens", help="transformers' input_ids only")
    command.add_argument("--checkpoint", required=True)
    command.add_argument("--revision")
    command.add_argument("--texts-file", type=Path, required=True, help='JSON list of strings or of {"class", "text"}')
    command.add_argument("--out", type=Path, required=True)

    command = commands.add_parser("reference-pixels", help="transformers' pixel_values only")
    command.add_argument("--checkpoint", required=True)
    command.add_argument("--revision")
    command.add_argument("--images", type=Path, nargs="+", required=True)
    command.add_argument("--size", type=int, help="override the processor's square size (e.g. 384)")
    command.add_argument("--out", type=Path, required=True)
    command.add_argument("--convention", choices=["processor", "pipeline"], default="processor",
                         help="how images reach the processor: Image.open (processor) or load_image (pipeline)")
    command.add_argument("--processor", choices=["pil", "torchvision"], default="pil",
                         help="the image processor backend: SiglipImageProcessorPil (pil) or SiglipImageProcessor "
                              "(torchvision, what AutoProcessor picks where torchvision is installed)")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    try:
        return _run(args)
    except ExportError as e:
        # A check failed or the input is unusable: the message says which; no traceback.
        print(f"error: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.cmd in ("export", "random"):
        from .export import export

        if args.cmd == "random":
            from .random_models import make_random_checkpoint

            checkpoint_dir = args.checkpoint_out or args.out.with_name(args.out.name + "-checkpoint")
            make_random_checkpoint(args.shape, checkpoint_dir, args.seed)
            result = export(str(checkpoint_dir), args.out, dtype=args.dtype, device=args.device, random_shape=args.shape)
        else:
            result = export(args.checkpoint, args.out, revision=args.revision, dtype=args.dtype, device=args.device,
                            model_id=args.model_id)
        print(json.dumps({k: result[k] for k in ("validation", "tokenizer", "seconds")}, indent=2))
        return 0

    if args.cmd == "compile":
        from .compile import compile_vision

        result = compile_vision(args.model_dir, device=args.device, dtype=args.dtype, max_batch=args.max_batch,
                                max_autotune=args.max_autotune)
        print(json.dumps(result, indent=2))
        return 0

    if args.cmd == "faulty":
        from .faulty import make_faulty

        print(json.dumps(make_faulty(args.model_dir, args.out), indent=2))
        return 0

    from . import reference as ref

    if args.cmd == "reference":
        ref.reference(args.checkpoint, args.images, ref.read_texts(args.texts_file), args.out, args.revision, args.convention,
                      processor=args.processor)
    elif args.cmd == "reference-tokens":
        texts, classes = ref.read_corpus(args.texts_file)
        ref.reference_tokens(args.checkpoint, texts, args.out, classes, revision=args.revision)
    else:
        ref.reference_pixels(args.checkpoint, args.images, args.out, args.size, args.revision, args.convention,
                             processor=args.processor)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
