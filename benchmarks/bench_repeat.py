"""Does `edgeseg bench` agree with itself? Runs the same bench twice and compares each row's
model-only p50 with the spread the tool itself reports (and Dice, which must be identical).

    python benchmarks/bench_repeat.py MODEL... --data DIR --split test [--max-images 30]

Writes benchmarks/results/bench_repeat.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--max-images", type=int, default=30)
    a = ap.parse_args()

    from edgeseg.measure.bench import BenchConfig, bench

    cfg = BenchConfig(runs=a.runs, warmup=5, threads=a.threads, max_images=a.max_images, keep_times=False)
    r1 = bench(a.models, a.data, a.split, config=cfg)
    r2 = bench(a.models, a.data, a.split, config=cfg)
    rows = []
    for x, y in zip(r1["rows"], r2["rows"]):
        spread = max(x["spread_ms"], y["spread_ms"])
        diff = abs(x["p50_ms"] - y["p50_ms"])
        rows.append({"name": x["name"], "backend": x["backend"], "p50_run1_ms": x["p50_ms"], "p50_run2_ms": y["p50_ms"],
                     "abs_diff_ms": diff, "reported_spread_ms": spread, "within_spread": diff <= spread,
                     "within_3x_spread": diff <= 3 * spread, "dice_run1": x["dice"], "dice_run2": y["dice"],
                     "dice_identical": x["dice"] == y["dice"]})
    res = {"models": a.models, "data": a.data, "split": a.split, "threads": a.threads, "runs": a.runs,
           "max_images": a.max_images, "rows": rows,
           "spread_definition": "1.4826 x median absolute deviation of the timed runs (robust std), larger of the two runs",
           "command": "python benchmarks/bench_repeat.py " + " ".join(sys.argv[1:])}
    print(save("bench_repeat", res))
    for r in rows:
        print(f"{r['name']:>24} {r['backend']:>16}  p50 {r['p50_run1_ms']:.2f} vs {r['p50_run2_ms']:.2f} ms "
              f"(diff {r['abs_diff_ms']:.2f}, spread {r['reported_spread_ms']:.2f}) within spread: {r['within_spread']}"
              f"  Dice identical: {r['dice_identical']}")


if __name__ == "__main__":
    main()
