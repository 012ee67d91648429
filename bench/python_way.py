"""Baseline throughput of zero-shot classification the "notebook way", without a server.

For every image this does what a user following the transformers docs would write:
decode the file with ``transformers.image_utils.load_image``, run ``AutoProcessor``
(``SiglipProcessor``: image processor + the checkpoint's tokenizer, padded to
``max_length=64``) on (that image, the same K texts), call ``SiglipModel(**inputs)``
and take ``torch.sigmoid(outputs.logits_per_image)``. The K text embeddings are
recomputed for every image -- that redundant work is part of what is measured.

Images are processed one at a time, under ``torch.inference_mode()``. After two
warm-up images the loop runs for at least ``--seconds`` seconds and at least three
images; decode + preprocessing + model time all count. Prints one JSON line:
{"img_s", "images", "seconds", "device", "dtype", "threads", "image_processor"}.

The image processor is the PIL backend unless ``--backend`` says otherwise: the figures
before torchvision joined the venv were measured with it, and ``AutoProcessor`` now picks
the torchvision backend (``--backend auto``), as it does wherever torchvision is installed.
"""

import argparse
import itertools
import json
import time

import torch
from transformers import AutoProcessor, SiglipModel
from transformers.image_utils import load_image

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="local Hugging Face checkpoint dir")
    ap.add_argument("--images", nargs="+", required=True, help="image files, cycled")
    labels = ap.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels-file", help="JSON list of label texts")
    labels.add_argument("--labels", nargs="+", help="label texts")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    ap.add_argument("--seconds", type=float, default=20.0, help="minimum timed duration")
    ap.add_argument("--backend", choices=["pil", "torchvision", "auto"], default="pil",
                    help="the image processor backend (auto: what AutoProcessor picks)")
    return ap.parse_args()


def classify(path, texts, processor, model, device, dtype):
    image = load_image(path)
    inputs = processor(text=texts, images=image, padding="max_length", max_length=64,
                       return_tensors="pt").to(device)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    outputs = model(**inputs)
    return torch.sigmoid(outputs.logits_per_image).float().cpu()


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.labels_file:
        with open(args.labels_file) as f:
            texts = json.load(f)
    else:
        texts = args.labels
    dtype = DTYPES[args.dtype]

    backend = {} if args.backend == "auto" else {"backend": args.backend}
    processor = AutoProcessor.from_pretrained(args.checkpoint, **backend)
    model = SiglipModel.from_pretrained(args.checkpoint).to(args.device, dtype).eval()
    paths = itertools.cycle(args.images)

    with torch.inference_mode():
        for _ in range(2):
            classify(next(paths), texts, processor, model, args.device, dtype)
        n = 0
        start = time.perf_counter()
        while True:
            classify(next(paths), texts, processor, model, args.device, dtype)
            n += 1
            elapsed = time.perf_counter() - start
            if n >= 3 and elapsed >= args.seconds:
                break

    print(json.dumps({"img_s": n / elapsed, "images": n, "seconds": elapsed,
                      "device": args.device, "dtype": args.dtype, "threads": args.threads,
                      "image_processor": type(processor.image_processor).__name__}))


if __name__ == "__main__":
    main()
