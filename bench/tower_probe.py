"""Where the vision tower's time goes, outside the server: the numbers that decide how to run it.

For one exported model directory (``python -m siglip_export``) and one dtype it measures, each
after warm-up and timed with device synchronisation:

1. *new batch sizes*: the TorchScript tower's first and second call at each batch size, with the
   optimising executor on and off (``--jit-optimize``), and the AOTInductor package's when the
   directory has one for this device. A first call much slower than the second is compilation
   (or GEMM algorithm choice) inside libtorch, which the server pays when a batch of a new size
   first forms unless its warm-up covered that size;
2. *throughput* at ``--batch``: the TorchScript tower (executor on, off), the AOTInductor package
   when the directory has one for this device (``python -m siglip_export compile``), transformers'
   eager ``SiglipVisionModel`` from the same checkpoint, and with ``--compile`` the eager model
   through ``torch.compile`` — images/s, and MFU with ``--peak-tflops``;
3. *kernels*: with ``--profile``, one TorchScript forward at ``--batch`` under ``torch.profiler``,
   device time grouped into matmul, attention, normalisation, element-wise and other kernels.

Prints a short table; ``--json`` writes every figure. Used by bench/gpu.sh on a GPU machine; runs
on the CPU too (slowly, and with no fusion to see).
"""

import argparse
import functools
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import load_config, vision_flops  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NEW_SIZES = [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64]
# Kernel name patterns, matched against the name before its template arguments (attention
# kernels carry `cutlass::` types there), first match wins: SDPA's flash/efficient kernels, then
# cuBLAS/CUTLASS GEMMs, ...
KERNEL_GROUPS = [
    ("attention", r"flash|fmha|attention|efficient"),
    ("matmul", r"gemm|cutlass|cublas|nvjet|sm90_xmma|addmm|mm_"),
    ("normalisation", r"layer_norm|layernorm|norm"),
    ("fused (JIT)", r"fused|kernel_\d"),
    ("element-wise", r"elementwise|vectorized|gelu|tanh|add|mul|copy|cast"),
]


class Timer:
    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, fn) -> float:
        """Seconds one call of ``fn`` takes, the device's queued work included."""
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def pixels(batch: int, size: int, device: torch.device) -> torch.Tensor:
    # Random, not zeros: zeros can run faster than real data.
    return torch.randn(batch, 3, size, size, device=device)


def load_tower(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    return torch.jit.load(str(path), map_location=device).eval()


def new_sizes(tower, device, size: int, sizes: list[int], dtype=torch.float32) -> list[dict]:
    """First and second call per batch size, on a freshly loaded tower."""
    timer, rows = Timer(device), []
    with torch.no_grad():
        for b in sizes:
            x = pixels(b, size, device).to(dtype)
            first, second = timer(functools.partial(tower, x)), timer(functools.partial(tower, x))
            rows.append({"batch": b, "first_ms": first * 1e3, "second_ms": second * 1e3})
    return rows


def throughput(fn, batch: int, device, seconds: float) -> float:
    """Images/s of ``fn`` (one batch per call): median over repeated timed calls after warm-up."""
    timer = Timer(device)
    for _ in range(3):
        timer(fn)
    times, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < 3:
        times.append(timer(fn))
    return batch / statistics.median(times)


def kernel_groups(fn, device) -> dict:
    """Device time of one call of ``fn`` by kernel group, in ms."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        Timer(device).sync()
    groups: dict[str, float] = {}
    for event in prof.key_averages():
        # On CUDA the kernels themselves; on the CPU, where there are none, the aten ops.
        if device.type == "cuda":
            if event.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = event.self_device_time_total
        else:
            if not event.key.startswith("aten::"):
                continue
            us = event.self_cpu_time_total
        kernel = event.key.split("<", 1)[0]
        name = next((g for g, pattern in KERNEL_GROUPS if re.search(pattern, kernel, re.I)), "other")
        groups[name] = groups.get(name, 0.0) + us / 1e3
    return groups


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="exported model directory")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5.0, help="timed seconds per throughput row")
    ap.add_argument("--sizes", type=int, nargs="+", default=NEW_SIZES, help="batch sizes for part 1")
    ap.add_argument("--peak-tflops", type=float, help="measured matmul peak (bench/peak.py), for MFU")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the eager model")
    ap.add_argument("--profile", action="store_true", help="group one forward's kernels")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    manifest = json.loads((a.model / "manifest.json").read_text())
    vision = a.model / manifest["towers"][a.dtype]["vision"]
    size = manifest["image"]["size"]
    device = torch.device(a.device)
    gflops = vision_flops(load_config(str(a.model))) / 1e9
    report = {"device": str(device), "dtype": a.dtype, "batch": a.batch, "gflops_per_image": gflops,
              "new_sizes": {}, "img_s": {}}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)

    for optimize in (True, False):
        key = "jit-optimize" if optimize else "jit-off"
        with torch.jit.optimized_execution(optimize):
            report["new_sizes"][key] = new_sizes(load_tower(vision, device), device, size, a.sizes)
    compiled = manifest["towers"][a.dtype].get("compiled_vision", {}).get(device.type)
    # Loaded once for both parts (so400m's package is about 0.8 GB to unpack).
    package = torch._inductor.aoti_load_package(str(a.model / compiled["file"])) if compiled else None
    if package is not None:
        report["new_sizes"]["aoti package"] = new_sizes(
            package, device, size, [b for b in a.sizes if b <= compiled["max_batch"]], DTYPES[a.dtype])

    x = pixels(a.batch, size, device)
    for optimize in (True, False):
        tower = load_tower(vision, device)
        with torch.no_grad(), torch.jit.optimized_execution(optimize):
            report["img_s"]["torchscript " + ("jit-optimize" if optimize else "jit-off")] = \
                throughput(functools.partial(tower, x), a.batch, device, a.seconds)
        del tower
    if package is not None and a.batch <= compiled["max_batch"]:
        xd = x.to(DTYPES[a.dtype])
        with torch.no_grad():
            report["img_s"]["aoti package"] = throughput(functools.partial(package, xd), a.batch, device, a.seconds)
    del package

    import transformers
    from transformers import SiglipVisionModel

    transformers.logging.set_verbosity_error()  # the text tower's weights are "unexpected" here
    eager = SiglipVisionModel.from_pretrained(
        manifest["source"]["checkpoint"], attn_implementation="sdpa", dtype=DTYPES[a.dtype]).to(device).eval()
    xd = x.to(DTYPES[a.dtype])
    with torch.no_grad():
        report["img_s"]["eager transformers"] = throughput(lambda: eager(pixel_values=xd), a.batch, device, a.seconds)
        if a.compile:
            compiled = torch.compile(eager)
            report["compile_s"] = Timer(device)(lambda: compiled(pixel_values=xd))
            report["img_s"]["torch.compile"] = throughput(lambda: compiled(pixel_values=xd), a.batch, device, a.seconds)
    if a.profile:
        tower = load_tower(vision, device)
        with torch.no_grad():
            for _ in range(3):
                tower(x)
            report["kernels_ms"] = kernel_groups(lambda: tower(x), device)

    print(f"vision tower, {a.dtype} on {report.get('gpu', device)}: {gflops:.4g} GFLOP/image")
    print("first / second call at each new batch size, ms:")
    for key, rows in report["new_sizes"].items():
        print(f"  {key:<13} " + "  ".join(f"b{r['batch']} {r['first_ms']:.0f}/{r['second_ms']:.0f}" for r in rows))
    if "kernels_ms" in report:
        total = sum(report["kernels_ms"].values())
        print(f"kernels of one forward at batch {a.batch} ({total:.1f} ms): " + "  ".join(
            f"{name} {ms / total:.0%}" for name, ms in sorted(report["kernels_ms"].items(), key=lambda kv: -kv[1])))
    if "compile_s" in report:
        print(f"torch.compile: first call {report['compile_s']:.0f} s")
    print(f"{'at batch ' + str(a.batch):<28} {'img/s':>9}" + (f" {'MFU':>6}" if a.peak_tflops else ""))
    for name, img_s in report["img_s"].items():
        mfu = f" {100 * gflops * img_s / (a.peak_tflops * 1e3):>5.1f}%" if a.peak_tflops else ""
        print(f"{name:<28} {img_s:>9.2f}{mfu}")
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
