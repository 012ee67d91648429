"""The benchmark table: the server per dtype against the model alone and the Python way.

Reads what bench/run.sh measured in one run (bench/python_way.py's JSON line and
`siglip-serve bench --json` per dtype) and prints one row per dtype, then the summary line for
the fastest dtype:
    bench: server_img_s=… model_only_img_s=… python_img_s=… vs_python=…x overhead=…% \
           own_cpu_ms_per_img=… model_slowdown=…% client_cpu=…% oip_cost=…% trace_cost=…% \
           naflex_overhead=…% naflex_model_slowdown=…% naflex_preprocess_ratio=…x
(one line; wrapped here)
overhead = 1 − server / model alone (same dtype, batch size and threads): on a machine the load
generator shares, it mixes what the server costs with what the client takes from it. So beside it:
the server's own CPU per image outside the model (own_cpu_ms_per_img, by stage in the lines above
it), the model's pass in the server against the tower alone at the same batch (model_slowdown),
and the load generator's share of the machine's CPU (client_cpu). oip_cost is how much less
throughput ModelInfer (the Open Inference Protocol) got than Classify, same photos, labels and
concurrency, in the same run (target ≤ 5%). trace_cost is how much less throughput a server
exporting every call's spans (ratio 1.0) got than one with tracing off, alternating in the same
run (--tracing; target ≤ 3%). The naflex_ fields are the worst over the NaFlex runs (--naflex: a SigLIP
2 NaFlex model at each patch budget): overhead and model_slowdown as above, and host preprocessing at
M patches over the fixed-resolution path at the same pixel count (target ≤ 1.3x). With --gflops-per-image and
--peak-tflops (bench/flops.py, bench/peak.py) it adds MFU = FLOPs/image × images/s ÷ peak.
"""

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", type=Path, required=True, help="bench/python_way.py output")
    ap.add_argument("--gflops-per-image", type=float, help="vision tower GFLOPs per image (bench/flops.py)")
    ap.add_argument("--peak-tflops", type=float, help="measured dense matmul peak (bench/peak.py)")
    ap.add_argument("--models", type=Path, help="siglip-serve bench --models --json output (two models, one server)")
    ap.add_argument("--tracing", type=Path, help="siglip-serve bench --traced-addr --json output (tracing on against off)")
    ap.add_argument("--naflex", type=Path, action="append", default=[],
                    help="siglip-serve bench --max-num-patches --json output (a NaFlex model at one budget; repeated)")
    ap.add_argument("runs", type=Path, nargs="+", help="siglip-serve bench --json files")
    a = ap.parse_args()

    python = json.loads(a.python.read_text())
    # A failed Python run still leaves the server's figures readable.
    py_img_s = python.get("img_s") or float("nan")
    runs = [json.loads(p.read_text()) for p in a.runs]
    mfu = a.gflops_per_image and a.peak_tflops

    print()
    header = (f"{'variant':<29} {'device':<7} {'img/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'½load p99':>9} "
              f"{'model img/s':>11} {'overhead':>8} {'vs python':>9} {'video res/s':>11} {'dropped':>8} "
              f"{'age p95 1st→2nd ms':>18} {'fair worst':>10} {'RSS MiB':>8}" + (f" {'MFU':>6}" if mfu else ""))
    print(header)
    for r in runs:
        closed, half = r["closed_loop"], r["half_load"]
        model = r.get("model_only_img_s") or float("nan")
        video = r.get("video") or {}
        ages = f"{video.get('age_ms_first_half', {}).get('p95', 0):.0f} → {video.get('age_ms_second_half', {}).get('p95', 0):.0f}"
        fair = r.get("fair")
        # The stream furthest from its share of what all the fair-share streams got.
        worst = f"{fair['max_deviation_pct']:.1f}%" if fair else "-"
        row = (f"{variant(r):<29} {r['device']:<7} {closed['img_s']:>8.2f} {closed['latency_ms']['p50']:>7.1f} "
               f"{closed['latency_ms']['p99']:>7.1f} {half['latency_ms']['p99']:>9.1f} {model:>11.2f} "
               f"{100 * (1 - closed['img_s'] / model):>7.1f}% {closed['img_s'] / py_img_s:>8.1f}x "
               f"{video.get('results_per_s', 0):>11.2f} {video.get('frames_dropped', 0):>8} {ages:>18} "
               f"{worst:>10} {r.get('server_peak_rss_mib') or 0:>8.0f}")
        if mfu:
            row += f" {100 * a.gflops_per_image * 1e9 * closed['img_s'] / (a.peak_tflops * 1e12):>5.1f}%"
        print(row)
    print(f"python way ({python.get('dtype')}, {python.get('device')}, {python.get('threads')} threads): {py_img_s:.2f} img/s")
    for r in runs:
        for name in ("closed_loop", "half_load"):
            phase = r[name]
            parts = "  ".join(f"{part} {phase[part + '_ms']['p50']:.1f}/{phase[part + '_ms']['p99']:.1f}"
                              for part in ("queue", "preprocess", "inference"))
            print(f"{variant(r)} {name}: server p50/p99 ms {parts}; batch sizes {phase['batch_sizes']}")
        if cpu := r.get("cpu"):
            stages = ", ".join(f"{k} {v:.2f}" for k, v in cpu["own_by_stage_ms"].items()) or "no stage figures"
            print(f"{variant(r)} closed loop CPU per image: server {ms(cpu['server_ms_per_image'])} ms = "
                  f"model {ms(cpu['model_ms_per_image'])} + own {ms(cpu['own_ms_per_image'])} ({stages}); "
                  f"of {cpu['cores']} cores: server {pct(cpu['server_share_pct'])}, "
                  f"load generator {pct(cpu['client_share_pct'])}")
        if r.get("model_in_server_ms"):
            print(f"{variant(r)} a pass of {r['model_only_batch']}: {r['model_in_server_ms']:.1f} ms in the server, "
                  f"{r['model_only_ms']:.1f} ms alone ({pct(slowdown(r), sign=True)})")
        if fair := r.get("fair"):
            rates = ", ".join(f"{x:.2f}" for x in fair["results_per_s"])
            print(f"{variant(r)} fair share, {fair['streams']} {fair['mode']} streams: results/s [{rates}] "
                  f"capacity {fair['capacity']:.2f}  worst |r_i - C/N| {fair['max_deviation_pct']:.1f}% of C/N  "
                  f"Jain {fair['jain']:.4f}")
        if oip := r.get("oip"):
            print(f"{variant(r)} Open Inference Protocol: ModelInfer ({oip['model']}) {oip['model_infer_img_s']:.2f} img/s "
                  f"vs Classify {oip['classify_img_s']:.2f} img/s, alternating in the same run: cost "
                  f"{oip['cost_pct']:+.1f}% (target ≤ 5%), errors {oip['errors']}")

    if a.models:
        two_models(json.loads(a.models.read_text())["models"])
    tracing = json.loads(a.tracing.read_text())["tracing"] if a.tracing else {}
    if tracing:
        print(f"tracing ({tracing['dtype']}): every call's spans exported (ratio 1.0) {tracing['on_img_s']:.2f} img/s "
              f"vs tracing off {tracing['off_img_s']:.2f} img/s, alternating in the same run: cost "
              f"{tracing['cost_pct']:+.1f}% (target ≤ 3%), {tracing['spans_per_call']:.1f} spans per call, "
              f"errors {tracing['errors']}")

    naflex = [json.loads(p.read_text()) for p in a.naflex]
    worst = naflex_rows(naflex)

    best = max(runs, key=lambda r: r["closed_loop"]["img_s"])
    server = best["closed_loop"]["img_s"]
    model = best.get("model_only_img_s") or float("nan")
    cpu = best.get("cpu") or {}
    print(f"bench: server_img_s={server:.2f} model_only_img_s={model:.2f} "
          f"python_img_s={py_img_s:.2f} vs_python={server / py_img_s:.2f}x "
          f"overhead={100 * (1 - server / model):.1f}% own_cpu_ms_per_img={ms(cpu.get('own_ms_per_image'))} "
          f"model_slowdown={pct(slowdown(best), sign=True)} client_cpu={pct(cpu.get('client_share_pct'))} "
          f"oip_cost={pct((best.get('oip') or {}).get('cost_pct'), sign=True)} "
          f"trace_cost={pct(tracing.get('cost_pct'), sign=True)} "
          f"naflex_overhead={pct(worst['overhead'])} naflex_model_slowdown={pct(worst['slowdown'], sign=True)} "
          f"naflex_preprocess_ratio={ratio(worst['ratio'])}")


def naflex_rows(runs: list[dict]) -> dict:
    """One line per NaFlex budget; returns the worst overhead, model slowdown and preprocessing ratio."""
    worst = {"overhead": None, "slowdown": None, "ratio": None}
    for r in runs:
        pre = r.get("naflex_preprocess") or {}
        closed, model = r["closed_loop"], r.get("model_only_img_s")
        overhead = 100 * (1 - closed["img_s"] / model) if model else None
        print(f"NaFlex {r['dtype']} at {pre.get('max_num_patches', '?')} patches: {closed['img_s']:.2f} img/s "
              f"(p50 {closed['latency_ms']['p50']:.1f} ms), model alone {model or float('nan'):.2f} img/s, overhead "
              f"{pct(overhead)}; a pass of {r.get('model_only_batch')}: {ms(r.get('model_in_server_ms'))} ms in the "
              f"server, {ms(r.get('model_only_ms'))} ms alone ({pct(slowdown(r), sign=True)}); preprocessing "
              f"{ms(pre.get('naflex_ms'))} ms/img against {ms(pre.get('square_ms'))} ms at "
              f"{pre.get('square_size', '?')}px square ({ratio(pre.get('ratio'))}, target ≤ 1.3x)")
        for key, value in (("overhead", overhead), ("slowdown", slowdown(r)), ("ratio", pre.get("ratio"))):
            if value is not None and (worst[key] is None or value > worst[key]):
                worst[key] = value
    return worst


def ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def two_models(m: dict) -> None:
    """Both models' throughput in one server, and how long a caller of B waited while A was flooded,
    against the bound the server keeps: 2 × B's idle latency + one batch of A."""
    (a, b), (a_img_s, b_img_s) = m["names"], m["img_s"]
    print(f"two models, one server: {a} alone {a_img_s:.2f} img/s, {b} alone {b_img_s:.2f} img/s; "
          f"{b} under {a}'s flood ({m['a_flooded_img_s']:.2f} img/s): p50 {m['b_flooded_ms']['p50']:.1f} "
          f"max {m['b_flooded_max_ms']:.1f} ms (idle p50 {m['b_idle_ms']['p50']:.1f} ms); bound 2 × idle + "
          f"one {a} batch ({m['a_batch_ms']:.1f} ms) = {m['bound_ms']:.1f} ms; fairness {m['fairness']:.2f} (≤ 1: fair)")


def ms(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def pct(value, sign: bool = False) -> str:
    return "-" if value is None else (f"{value:+.1f}%" if sign else f"{value:.1f}%")


def slowdown(run: dict):
    """How much slower a pass ran in the server than the tower alone at the same batch, in percent."""
    inside, alone = run.get("model_in_server_ms"), run.get("model_only_ms")
    return 100 * (inside / alone - 1) if inside and alone else None


def variant(run: dict) -> str:
    """The dtype, what ran the vision tower, and the TorchScript executor where it is not the default."""
    return f"{run['dtype']} {run['backend']}" + ("" if run["jit_optimize"] else " jit-off")

if __name__ == "__main__":
    main()
