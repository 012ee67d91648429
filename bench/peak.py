"""Dense matmul throughput of the device, the denominator of MFU.

Times ``a @ b`` for random n x n matrices (default n=8192 on CUDA, 2048 on CPU) in
the given dtype (default bfloat16): a few warm-up runs, then the mean of ``--runs``
timed runs, with ``torch.cuda.synchronize()`` around the timed region on CUDA.
FLOPs per matmul = 2 n^3. Prints one JSON line: {"tflops", "device", "dtype", "n"}.

MFU = flops_per_image (bench/flops.py) x images/s / (tflops x 1e12).
"""

import argparse
import json
import time

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    ap.add_argument("--n", type=int, help="matrix size (default 8192 on cuda, 2048 on cpu)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (cpu)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.n or (8192 if args.device == "cuda" else 2048)
    dtype = DTYPES[args.dtype]
    a = torch.randn(n, n, device=args.device, dtype=dtype)
    b = torch.randn(n, n, device=args.device, dtype=dtype)

    with torch.inference_mode():
        for _ in range(args.warmup):
            a @ b
        sync(args.device)
        start = time.perf_counter()
        for _ in range(args.runs):
            a @ b
        sync(args.device)
        elapsed = time.perf_counter() - start

    tflops = 2 * n**3 * args.runs / elapsed / 1e12
    print(json.dumps({"tflops": tflops, "device": args.device, "dtype": args.dtype, "n": n}))


if __name__ == "__main__":
    main()
