"""The table bench/ab.sh prints: two server binaries' closed-loop runs, medians and B against A.

Reads the `siglip-serve bench --json` files ab.sh wrote (ab-a-<round>.json, ab-b-<round>.json);
last line:
    ab: a_img_s=… b_img_s=… a_cpu_ms_per_img=… b_cpu_ms_per_img=… a_own_ms_per_img=… b_own_ms_per_img=…
"""

import json
import statistics
import sys
from pathlib import Path

FIGURES = [
    ("img_s", "images/s"),
    ("server_ms_per_image", "server CPU ms/img"),
    ("model_ms_per_image", "model CPU ms/img"),
    ("own_ms_per_image", "own CPU ms/img"),
    ("client_share_pct", "load generator CPU %"),
]


def figure(run: dict, key: str):
    return run["closed_loop"]["img_s"] if key == "img_s" else (run.get("cpu") or {}).get(key)


def main() -> None:
    out = Path(sys.argv[1])
    runs = {w: [json.loads(p.read_text()) for p in sorted(out.glob(f"ab-{w}-*.json"))] for w in "ab"}

    def median(which: str, key: str) -> float:
        values = [v for v in (figure(r, key) for r in runs[which]) if v is not None]
        return statistics.median(values) if values else float("nan")

    print(f"\n{'median of ' + str(len(runs['a'])) + ' rounds':<24} {'A':>10} {'B':>10} {'B/A':>8}")
    for key, name in FIGURES:
        a, b = median("a", key), median("b", key)
        print(f"{name:<24} {a:>10.2f} {b:>10.2f} {b / a if a else float('nan'):>8.3f}")
    print(f"ab: a_img_s={median('a', 'img_s'):.2f} b_img_s={median('b', 'img_s'):.2f} "
          f"a_cpu_ms_per_img={median('a', 'server_ms_per_image'):.2f} "
          f"b_cpu_ms_per_img={median('b', 'server_ms_per_image'):.2f} "
          f"a_own_ms_per_img={median('a', 'own_ms_per_image'):.2f} "
          f"b_own_ms_per_img={median('b', 'own_ms_per_image'):.2f}")


if __name__ == "__main__":
    main()
