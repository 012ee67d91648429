"""Computes every reference value the parity suite needs, with transformers, and writes suite.json.

Run by `make parity` / `make test` after the test assets and the random-weight models exist:
    python python/make_parity_suite.py --build build --out build/parity
The Rust side (`siglip-serve parity --suite build/parity/suite.json`, `tests/parity.rs`) reads
suite.json; nothing in it is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# The functions behind `python -m siglip_export reference*`, called in-process (one import of
# torch and transformers instead of one per reference file).
from siglip_export import reference as ref

# Photos used end to end (one per decoder family keeps the suite fast on 2 cores).
E2E_FORMATS = ("jpeg", "png", "webp", "gif")
E2E_IMAGES = 6
# Models compared end to end and the tower dtypes each directory must hold, exported with e.g.
#   python -m siglip_export random --shape tiny --dtype float32,bfloat16,float16 --out build/models/tiny
MODEL_DTYPES = {
    "tiny": ("float32", "bfloat16", "float16"),
    "tiny-siglip2": ("float32",),
    "base-224": ("float32", "bfloat16"),
}
# Copies of a model directory with an AOTInductor-compiled vision tower (python -m siglip_export
# compile; for the CPU here, for CUDA in gpu/parity.sh), checked against their original's
# reference: name -> (original, dtype).
COMPILED = {"tiny-aoti": ("tiny", "float32")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", type=Path, required=True, help="folder with assets/ and models/ (random models and their checkpoints)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    build = a.build.resolve()
    assets = build / "assets"
    images = json.loads((assets / "images.json").read_text())
    files = [str(assets / entry["file"]) for entry in images]

    suite: dict[str, list] = {"pixels": [], "tokens": [], "tokens_known_hard": [], "models": []}
    # Bicubic (SigLIP's processor) and bilinear (SigLIP 2's) resizing of every test image.
    for shape, prefix in (("tiny", "bicubic"), ("tiny-siglip2", "bilinear")):
        for size in (224, 384):
            path = out / f"{prefix}-{size}.safetensors"
            ref.reference_pixels(str(build / "models" / f"{shape}-checkpoint"), files, path, size)
            suite["pixels"].append({"name": f"{prefix}-{size}", "reference": path.name,
                                    "model_dir": str(build / "models" / shape)})

    # SigLIP (sentencepiece, slow SiglipTokenizer) and SigLIP 2 (Gemma tokenizer) text paths.
    for shape in ("tiny", "tiny-siglip2"):
        for kind, texts in (("tokens", "texts.json"), ("tokens_known_hard", "texts_known_hard.json")):
            name = shape + ("-known-hard" if kind == "tokens_known_hard" else "")
            path = out / f"tokens-{name}.safetensors"
            ref.reference_tokens(str(build / "models" / f"{shape}-checkpoint"), ref.read_texts(assets / texts), path)
            suite[kind].append({"name": name, "reference": path.name, "model_dir": str(build / "models" / shape)})

    e2e = [str(assets / e["file"]) for e in images if e["format"].lower() in E2E_FORMATS][:E2E_IMAGES]
    # The reference is always fp32 transformers; each exported dtype is compared with it. One
    # model directory holds all of a model's dtypes (manifest "towers"); one entry per dtype.
    for shape, dtypes in MODEL_DTYPES.items():
        model_dir = build / "models" / shape
        towers = json.loads((model_dir / "manifest.json").read_text())["towers"]
        missing = [d for d in dtypes if d not in towers]
        if missing:
            raise SystemExit(f"{model_dir} lacks towers {missing} (has {sorted(towers)}); re-export with "
                             f"--dtype {','.join(dtypes)}")
        path = out / f"model-{shape}.safetensors"
        ref.reference(str(build / "models" / f"{shape}-checkpoint"), e2e, ref.read_texts(assets / "labels.json"), path)
        for dtype in dtypes:
            suite["models"].append({"name": shape, "dtype": dtype, "reference": path.name, "model_dir": str(model_dir)})
    for name, (original, dtype) in COMPILED.items():
        model_dir = build / "models" / name
        compiled = json.loads((model_dir / "manifest.json").read_text())["towers"][dtype].get("compiled_vision", {})
        if not compiled:
            # Left out, not fatal: tests/parity.rs asserts the row where `make test` builds it.
            print(f"skipping {name}: {model_dir} has no compiled {dtype} vision tower (python -m siglip_export compile)")
            continue
        suite["models"].append({"name": name, "dtype": dtype, "reference": f"model-{original}.safetensors",
                                "model_dir": str(model_dir)})

    (out / "suite.json").write_text(json.dumps(suite, indent=2))
    print(f"wrote {out / 'suite.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
