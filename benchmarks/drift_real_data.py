"""Input-drift guard on real data: calibrate on Kvasir, score held-out Kvasir, BUSI and MoNuSeg.

    python benchmarks/drift_real_data.py [--data ../shared/data] [--percentile 95] [--margin 1.5]

The statistics come from the Kvasir-SEG ``calibration`` split (64 colonoscopy images), exactly
as ``edgeseg compress`` records them in a bundle. Then every image of

- Kvasir-SEG ``test`` and ``val`` (held out, same dataset: should mostly pass),
- BUSI (all 149 breast-ultrasound images: another modality, gray),
- MoNuSeg (all 30 H&E histopathology tiles: another modality, stain colours)

is scored. No model is needed. Writes ``benchmarks/results/drift_real_data.json`` (flag
rates, score distributions, every image's score and its most different feature, the threshold
rule, machine and versions) and ``drift_real_data.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, SHARED, save  # noqa: E402

SETS = [  # (label, dataset folder, split or None for all images, expected)
    ("kvasir-seg test (held out)", "kvasir-seg", "test", "pass"),
    ("kvasir-seg val (held out)", "kvasir-seg", "val", "pass"),
    ("busi-subset (ultrasound)", "busi-subset", None, "flag"),
    ("monuseg-train (H&E)", "monuseg-train", None, "flag"),
]


def _dist(scores: np.ndarray) -> dict:
    q = np.percentile(scores, [0, 5, 25, 50, 75, 95, 100])
    return {k: round(float(v), 4) for k, v in zip(("min", "p5", "p25", "p50", "p75", "p95", "max"), q)} | {
        "mean": round(float(scores.mean()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(SHARED))
    ap.add_argument("--percentile", type=float, default=95.0)
    ap.add_argument("--margin", type=float, default=1.5)
    a = ap.parse_args()

    from edgeseg.data import folders as D
    from edgeseg.runtime.drift import DriftGuard, image_stats

    root = Path(a.data)
    if not (root / "kvasir-seg").is_dir():
        sys.exit(f"error: real data not found at {root} (expected kvasir-seg/, busi-subset/, monuseg-train/)")

    t0 = time.perf_counter()
    calib = D.discover(root / "kvasir-seg", "calibration", require_masks=False)
    stats = image_stats([D.read_image(s.image) for s in calib], percentile=a.percentile, margin=a.margin)
    t_stats = time.perf_counter() - t0
    guard = DriftGuard(stats)
    print(f"statistics of {len(calib)} kvasir calibration images in {t_stats:.1f} s; "
          f"threshold {guard.threshold:.3f} (LOO p50 {stats['calibration_scores']['p50']}, "
          f"p95 {stats['calibration_scores']['p95']}, max {stats['calibration_scores']['max']})", file=sys.stderr)

    results, check_ms = [], []
    for label, folder, split, expected in SETS:
        samples = D.discover(root / folder, split, require_masks=False)
        rows = []
        for s in samples:
            img = D.read_image(s.image)
            t = time.perf_counter()
            r = guard.check(img)
            check_ms.append((time.perf_counter() - t) * 1e3)
            rows.append({"name": s.name, "size": [int(img.shape[1]), int(img.shape[0])],
                         "score": round(r["score"], 4), "drifted": r["drifted"],
                         "most_different": r["details"]["most_different"]})
        scores = np.array([r["score"] for r in rows])
        flagged = int(sum(r["drifted"] for r in rows))
        entry = {"set": label, "dataset": folder, "split": split, "expected": expected, "images": len(rows),
                 "flagged": flagged, "flag_rate": round(flagged / len(rows), 4), "scores": _dist(scores),
                 "most_different": dict(Counter(r["most_different"] for r in rows if r["drifted"]).most_common()),
                 "per_image": rows}
        if folder == "busi-subset":  # per class (benign / malignant / normal)
            entry["by_class"] = {c: round(float(np.mean([r["drifted"] for r in rows if r["name"].startswith(c)])), 4)
                                 for c in sorted({r["name"].split("/")[0] for r in rows})}
        wrong = [r for r in rows if r["drifted"] != (expected == "flag")]
        entry["misclassified"] = [{k: r[k] for k in ("name", "score", "most_different")} for r in wrong]
        results.append(entry)
        print(f"{label:<28} {len(rows):>4} images  flagged {flagged:>4} ({flagged / len(rows):6.1%})  "
              f"score p5 {entry['scores']['p5']:.2f} p50 {entry['scores']['p50']:.2f} "
              f"p95 {entry['scores']['p95']:.2f}", file=sys.stderr)

    out = save("drift_real_data", {
        "what": "input-drift guard: statistics of the kvasir-seg calibration split; flag rates of held-out "
                "kvasir images and of two other modalities",
        "command": "python benchmarks/drift_real_data.py " + " ".join(sys.argv[1:]),
        "reference": {"dataset": "kvasir-seg", "split": "calibration", "images": len(calib)},
        "threshold": guard.threshold,
        "threshold_rule": stats["threshold_rule"],
        "calibration_loo_scores": stats["calibration_scores"],
        "features": stats["features"],
        "check_ms": {"mean": round(float(np.mean(check_ms)), 3), "p50": round(float(np.median(check_ms)), 3),
                     "note": "one DriftGuard.check on an already decoded image, single thread, busy machine"},
        "sets": results,
        "input_stats": stats,
    })
    md = [
        "# Input-drift guard on real data",
        "",
        f"Reference: the {len(calib)} images of the Kvasir-SEG `calibration` split (what `edgeseg compress` "
        "records in a bundle). Threshold "
        f"{guard.threshold:.3f} = {a.margin} x the {a.percentile:g}th percentile of the calibration images' "
        f"leave-one-out scores (p50 {stats['calibration_scores']['p50']}, max {stats['calibration_scores']['max']}).",
        "",
        "| images | n | expected | flagged | flag rate | score p5 | p50 | p95 | max |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for e in results:
        s = e["scores"]
        md.append(f"| {e['set']} | {e['images']} | {e['expected']} | {e['flagged']} | {e['flag_rate']:.1%} | "
                  f"{s['p5']:.2f} | {s['p50']:.2f} | {s['p95']:.2f} | {s['max']:.2f} |")
    md += ["", "Misclassified images (a held-out Kvasir image flagged, or another modality passed):", ""]
    for e in results:
        for r in e["misclassified"]:
            md.append(f"- {e['dataset']} `{r['name']}`: score {r['score']:.2f} (most different: {r['most_different']})")
    if not any(e["misclassified"] for e in results):
        md.append("- none")
    md += ["", f"One check takes {np.median(check_ms):.1f} ms (p50) on a decoded image. Machine and versions: "
           "see `drift_real_data.json`.", ""]
    (RESULTS / "drift_real_data.md").write_text("\n".join(md))
    print(f"wrote {out} and {RESULTS / 'drift_real_data.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
