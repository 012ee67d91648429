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
import torch
from safetensors.torch import save_file

from siglip_export import reference as ref

# Photos used end to end: one per decoder family, and the kinds on which the two image
# conventions disagree (alpha, a colour key, EXIF orientation).
E2E_IMAGES = (
    "astronaut_baseline.jpg", "chelsea_progressive.jpg", "camera_gray.jpg", "rocket_420.jpg", "coffee_rgb8.png",
    "chelsea_exif_orientation6.jpg", "astronaut_rgba.png", "camera_la.png", "chelsea_lossless_alpha.webp",
    "chelsea_transparent.gif", "rocket_palette_transparency.png",
)
CONVENTIONS = ref.CONVENTIONS
# Both backends of transformers' image processor, each through its explicit class (reference.py).
PROCESSORS = ref.PROCESSORS
# Stream regions: each box of each file, cropped by Pillow (a numpy slice for the raw frame), must
# give the server's crop of its own decode, for every mode a crop keeps (the mode, palette and
# transparency go with it, and the conversion to RGB runs on the crop).
REGION_CASES = (
    "rocket_420.jpg", "chelsea_cmyk.jpg", "chelsea_exif_orientation6.jpg", "astronaut_rgba.png", "camera_la.png",
    "rocket_palette_transparency.png", "coffee_rgb16.png", "chelsea_partial_transparent.gif",
    "chelsea_lossless_alpha.webp", "coffee_premultiplied.tiff", "astronaut_rgba_512x512.rgba", "astronaut_strip_37x500.png",
)
REGION_MODEL = "tiny"


def paths() -> list[tuple[str, str, str]]:
    """Every image path (convention x processor) with its file-name suffix: none for the PIL
    backend (the names the suite had before the torchvision backend joined)."""
    return [(convention, processor, f"{convention}" + ("" if processor == "pil" else f"-{processor}"))
            for processor in PROCESSORS for convention in CONVENTIONS]


def region_boxes(width: int, height: int, size: int) -> list[tuple[int, int, int, int]]:
    """(x, y, width, height) boxes of a width x height image: inner (odd offsets and sizes, so
    that no edge falls on a JPEG block boundary), the full frame, 1x1, a one-pixel-wide strip of
    full height, exactly size x size (not resized, by either side) where the image is big enough,
    and one touching the bottom-right corner."""
    boxes = [(width // 3 + 1, height // 4 + 1, width // 2 - 1, height // 2 + 1), (0, 0, width, height),
             (width // 2, height // 2, 1, 1), (width // 3, 0, 1, height)]
    if width >= size and height >= size:
        boxes.append(((width - size) // 2, (height - size) // 3, size, size))
    corner = (width // 3 + 1, height // 3 + 1)
    boxes.append((width - corner[0], height - corner[1], *corner))
    return boxes
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


NAFLEX_MODEL = "tiny-naflex"
# Width x height of the shapes NaFlex is checked on beside the test images: 1:20 to 20:1, a pixel,
# a sliver, and one larger than any budget's grid.
NAFLEX_SHAPES = ((20, 400), (400, 20), (1, 1), (3, 500), (500, 3), (4000, 3000))


def naflex_shapes(assets: Path, folder: Path) -> list[Path]:
    """A photograph of the test assets resized by Pillow to each of NAFLEX_SHAPES, saved as PNG."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.open(assets / "images" / "chelsea_progressive.jpg").convert("RGB")
    paths = []
    for width, height in NAFLEX_SHAPES:
        path = folder / f"chelsea_{width}x{height}.png"
        photo.resize((width, height), Image.BICUBIC).save(path)
        paths.append(path)
    return paths


def added_tokens_check(build: Path, out: Path, texts: list[str], classes: list[str]) -> dict[str, str]:
    """tiny's tokenizer with added tokens of every flag (lstrip, rstrip, single_word, a special one,
    one with a space), which no SigLIP checkpoint has but a user's fine-tuned one may: its files
    in a tokenizer-only model directory, and transformers' ids for the corpus plus texts that use
    those tokens."""
    from transformers import AddedToken

    from siglip_export import tokenizer
    from siglip_export.checkpoint import load_tokenizer
    from siglip_export.texts import added_token_corpus, tokenizer_check_texts

    hf_tokenizer = load_tokenizer(build / "models" / "tiny-checkpoint")
    added = [AddedToken("qq", lstrip=True, single_word=True), AddedToken("zz", rstrip=True, single_word=True),
             AddedToken("x y", normalized=False)]
    hf_tokenizer.add_tokens(added)
    extra_special = AddedToken("<extra>", lstrip=True, rstrip=True, special=True)
    hf_tokenizer.add_special_tokens({"additional_special_tokens": [extra_special]})
    extra = added_token_corpus([token.content for token in added] + ["<extra>"])
    texts, classes = texts + [entry["text"] for entry in extra], classes + [entry["class"] for entry in extra]

    model_dir = out / "tiny-added-tokens"
    model_dir.mkdir(parents=True, exist_ok=True)
    _, files = tokenizer.write(hf_tokenizer, model_dir, tokenizer_check_texts() + [entry["text"] for entry in extra[:100]])
    manifest = json.loads((build / "models" / "tiny" / "manifest.json").read_text())
    (model_dir / "manifest.json").write_text(json.dumps({**manifest, "files": files}, indent=2))
    path = out / "tokens-tiny-added-tokens.safetensors"
    save_file({"input_ids": torch.tensor(tokenizer.reference_ids(hf_tokenizer, texts), dtype=torch.int64)}, str(path))
    path.with_suffix(".json").write_text(json.dumps({"texts": texts, "classes": classes}, ensure_ascii=False))
    return {"name": "tiny+added", "reference": path.name, "model_dir": str(model_dir)}


def regions_check(build: Path, out: Path) -> list[dict[str, str]]:
    """REGION_CASES x region_boxes through transformers end to end, by every image path (the
    boxes are in pixels of the image as each convention opens it: EXIF-transposed under
    "pipeline")."""
    checkpoint = build / "models" / f"{REGION_MODEL}-checkpoint"
    size = json.loads((build / "models" / REGION_MODEL / "manifest.json").read_text())["image"]["size"]
    labels = ref.read_texts(build / "assets" / "labels.json")
    checks = []
    for convention, processor, suffix in paths():
        files, boxes = [], []
        for name in REGION_CASES:
            path = build / "assets" / "images" / name
            for box in region_boxes(*ref.image_size(path, convention), size):
                files.append(path)
                boxes.append(box)
        path = out / f"regions-{REGION_MODEL}-{suffix}.safetensors"
        ref.reference(str(checkpoint), files, labels, path, convention=convention, boxes=boxes, processor=processor)
        checks.append({"name": REGION_MODEL, "convention": convention, "processor": processor, "reference": path.name,
                       "model_dir": str(build / "models" / REGION_MODEL)})
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, required=True,
                        help="folder with assets/ and models/ (random models and their checkpoints)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    build = args.build.resolve()
    assets = build / "assets"
    images = json.loads((assets / "images.json").read_text())
    files = [str(assets / entry["file"]) for entry in images]

    suite: dict[str, list] = {"pixels": [], "naflex_pixels": [], "tokens": [], "models": [], "regions": []}
    # Bicubic (SigLIP's processor) and bilinear (SigLIP 2's) resizing of every test image, by
    # every image path.
    for shape, prefix in (("tiny", "bicubic"), ("tiny-siglip2", "bilinear")):
        for size in (224, 384):
            for convention, processor, suffix in paths():
                path = out / f"{prefix}-{size}-{suffix}.safetensors"
                ref.reference_pixels(str(build / "models" / f"{shape}-checkpoint"), files, path, size, convention=convention,
                                     processor=processor)
                suite["pixels"].append({"name": f"{prefix}-{size}", "convention": convention, "processor": processor,
                                        "reference": path.name, "model_dir": str(build / "models" / shape)})

    # SigLIP 2 NaFlex: every test image and the extreme shapes, at every patch budget, by both
    # conventions (NaFlex has the PIL processor only). Its processor leaves do_convert_rgb unset,
    # so through Image.open ("processor") transformers refuses any image that is not RGB: those
    # are checked by the pipeline convention only.
    naflex_images = files + [str(path) for path in naflex_shapes(assets, out / "naflex-images")]
    naflex_rgb = [path for path in naflex_images if getattr(ref.open_image(path, "processor"), "mode", "") == "RGB"]
    naflex_model = build / "models" / NAFLEX_MODEL
    naflex_checkpoint = str(build / "models" / f"{NAFLEX_MODEL}-checkpoint")
    # End to end: the photos and the extreme shapes against the labels.
    naflex_e2e = [str(assets / "images" / name) for name in E2E_IMAGES] + naflex_images[len(files):]
    labels = ref.read_texts(assets / "labels.json")
    budgets = json.loads((naflex_model / "manifest.json").read_text())["image"]["naflex"]["max_num_patches"]
    for budget in budgets:
        for convention in CONVENTIONS:
            path = out / f"model-{NAFLEX_MODEL}-{budget}-{convention}.safetensors"
            images = naflex_e2e if convention == "pipeline" else [p for p in naflex_e2e if p in naflex_rgb]
            ref.reference_naflex(naflex_checkpoint, images, labels, path, budget, convention=convention)
            suite["models"].append({"name": NAFLEX_MODEL, "dtype": "float32", "convention": convention,
                                    "processor": "pil", "max_num_patches": budget, "reference": path.name,
                                    "model_dir": str(naflex_model)})
    for budget in budgets:
        for convention in CONVENTIONS:
            path = out / f"naflex-{budget}-{convention}.safetensors"
            images = naflex_rgb if convention == "processor" else naflex_images
            ref.reference_naflex_pixels(naflex_checkpoint, images, path, budget, convention=convention)
            suite["naflex_pixels"].append({"name": f"naflex-{budget}", "convention": convention, "processor": "pil",
                                           "max_num_patches": budget, "reference": path.name,
                                           "model_dir": str(naflex_model)})

    # SigLIP (slow SiglipTokenizer; tiny's vocabulary has byte fallback, base-224's has not) and
    # SigLIP 2 (Gemma tokenizer) text paths.
    texts, classes = ref.read_corpus(assets / "texts.json")
    for shape in ("tiny", "base-224", "tiny-siglip2"):
        path = out / f"tokens-{shape}.safetensors"
        ref.reference_tokens(str(build / "models" / f"{shape}-checkpoint"), texts, path, classes)
        suite["tokens"].append({"name": shape, "reference": path.name, "model_dir": str(build / "models" / shape)})
    suite["tokens"].append(added_tokens_check(build, out, texts, classes))

    e2e = [str(assets / "images" / name) for name in E2E_IMAGES]
    # The reference is always fp32 transformers; each exported dtype is compared with it by the
    # default image path (processor convention, PIL backend), and float32 by every other path too.
    # One model directory holds all of a model's dtypes (manifest "towers").
    for shape, dtypes in MODEL_DTYPES.items():
        model_dir = build / "models" / shape
        towers = json.loads((model_dir / "manifest.json").read_text())["towers"]
        missing = [dtype for dtype in dtypes if dtype not in towers]
        if missing:
            raise SystemExit(f"{model_dir} lacks towers {missing} (has {sorted(towers)}); re-export with "
                             f"--dtype {','.join(dtypes)}")
        for convention, processor, suffix in paths():
            path = out / f"model-{shape}-{suffix}.safetensors"
            ref.reference(str(build / "models" / f"{shape}-checkpoint"), e2e, ref.read_texts(assets / "labels.json"), path,
                          convention=convention, processor=processor)
            default = (convention, processor) == ("processor", "pil")
            for dtype in dtypes if default else ("float32",):
                suite["models"].append({"name": shape, "dtype": dtype, "convention": convention, "processor": processor,
                                        "reference": path.name, "model_dir": str(model_dir)})
    suite["regions"] = regions_check(build, out)
    for name, (original, dtype) in COMPILED.items():
        model_dir = build / "models" / name
        compiled = json.loads((model_dir / "manifest.json").read_text())["towers"][dtype].get("compiled_vision", {})
        if not compiled:
            # Left out, not fatal: tests/parity.rs asserts the row where `make test` builds it.
            print(f"skipping {name}: {model_dir} has no compiled {dtype} vision tower (python -m siglip_export compile)")
            continue
        suite["models"].append({"name": name, "dtype": dtype, "convention": "processor",
                                "reference": f"model-{original}-processor.safetensors", "model_dir": str(model_dir)})

    (out / "suite.json").write_text(json.dumps(suite, indent=2))
    print(f"wrote {out / 'suite.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
