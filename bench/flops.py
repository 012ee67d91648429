"""Analytic forward FLOPs per image of the SigLIP vision tower.

Computed from a checkpoint's ``config.json`` (``vision_config``); a model directory
holding a ``manifest.json`` is resolved to its ``source.checkpoint``. A multiply-add
counts as 2 FLOPs. Counted: the patch-embedding conv; per encoder layer the Q/K/V
and output projections, the attention scores (QK^T) and weighted sum (AV), and the
MLP; the multihead-attention pooling head (a single probe query: Q projection of the
probe, K/V projections of all patches, scores, AV, output projection, MLP).
Layernorms, GELU, softmax, residual adds and position embeddings are element-wise
and ignored (<1%).

``--check`` also counts the FLOPs of ``SiglipVisionModel`` (random weights, eager
attention so every matmul is an aten op the counter knows) on one image with
``torch.utils.flop_counter.FlopCounterMode``. Prints one JSON line:
{"gflops_per_image"} plus {"counter_gflops_per_image", "rel_diff"} with --check.
"""

import argparse
import json
import os


def vision_flops(config: dict) -> float:
    """Forward FLOPs for one image; ``config`` is a SiglipConfig or SiglipVisionConfig dict."""
    v = config.get("vision_config", config)
    d, inter, layers = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]
    p, c = v["patch_size"], v.get("num_channels", 3)
    n = (v["image_size"] // p) ** 2  # patches (no class token)

    patch_embed = 2 * n * (c * p * p) * d
    attention = 2 * n * d * 3 * d + 2 * n * n * d + 2 * n * n * d + 2 * n * d * d
    mlp = 2 * 2 * n * d * inter
    encoder = layers * (attention + mlp)

    head = 0
    if v.get("vision_use_head", True):
        head = (2 * d * d                # Q projection of the probe
                + 2 * n * d * 2 * d      # K, V projections of the patches
                + 2 * n * d + 2 * n * d  # scores, AV for one query
                + 2 * d * d              # output projection
                + 2 * 2 * d * inter)     # MLP on one token
    return float(patch_embed + encoder + head)


def load_config(path: str) -> dict:
    manifest = os.path.join(path, "manifest.json")
    if os.path.exists(manifest):
        with open(manifest) as f:
            path = json.load(f)["source"]["checkpoint"]
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


def counter_flops(config: dict) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import SiglipVisionConfig, SiglipVisionModel

    v = SiglipVisionConfig(**config.get("vision_config", config))
    v._attn_implementation = "eager"
    with torch.device("meta"):
        model = SiglipVisionModel(v).eval()
        pixels = torch.zeros(1, v.num_channels, v.image_size, v.image_size)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(pixel_values=pixels)
    return float(counter.get_total_flops())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True,
                    help="HF checkpoint dir (config.json) or model dir (manifest.json)")
    ap.add_argument("--check", action="store_true", help="cross-check with FlopCounterMode")
    args = ap.parse_args()

    config = load_config(args.checkpoint)
    analytic = vision_flops(config)
    out = {"gflops_per_image": analytic / 1e9}
    if args.check:
        counted = counter_flops(config)
        out["counter_gflops_per_image"] = counted / 1e9
        out["rel_diff"] = (analytic - counted) / counted
    print(json.dumps(out))


if __name__ == "__main__":
    main()
