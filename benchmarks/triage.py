"""Does the uncertainty score find the bad masks? Triage curves, rank correlation, ECE before/after T.

    python benchmarks/triage.py [--data ../shared/data] [--bundle runs/triage/kvasir-b0] [--val-images 100]

1. Exports the Kvasir teacher (``benchmarks/teachers/kvasir-b0``) to a bundle in a git-ignored
   folder (``runs/triage/``), exactly as ``edgeseg export TEACHER --data kvasir-seg --split val
   --parity-images 100`` does: the export fits the temperature and records the uncertainty
   distribution on those 100 validation images.
2. Opens the bundle with the torch-free ``Segmenter`` and, for every image of each case, takes
   ``predict(image, uncertainty=True)`` (temperature applied) and the per-image Dice:

   - ``kvasir val``: the 100 validation images (the export's own; used to choose the score);
   - ``kvasir test``: the 100 held-out Kvasir-SEG test images (same dataset as training);
   - ``busi (cross-dataset)``: all 149 BUSI breast-ultrasound images scored by the Kvasir
     (colonoscopy) model: a model meeting data it was never trained for (50 ``normal`` images
     have empty masks: an empty prediction there scores Dice 1);
   - ``mixed``: both sets together (what a device would see if such images reached it).

3. Ranks the images by the score (least confident first) and reports the share of the set's
   total Dice error (sum of 1 - Dice) held by the least-confident 5/10/20% of images, against
   random ranking (expected share = the fraction reviewed; 5-95% band of 2000 random
   orders) and the oracle (ranked by the error itself); Spearman's rho between the score and
   Dice (negative = less sure, worse mask); the rate of images flagged "less sure than 95% of
   validation images", and the pixel ECE (top-class confidence, 15 bins) with T = 1 and with the
   bundle's T.

Writes ``benchmarks/results/triage_kvasir_b0.{json,md,png}`` and the reliability diagrams of
the Kvasir test split before and after temperature scaling (``triage_kvasir_b0_reliability_*.png``).
The shipped score (mean entropy inside the predicted foreground) was chosen among the candidate
summaries on the Kvasir *val* split, which this script also scores and records
(``score_selection``); ``area_ratio`` had been declared first and its test figures seen before
the switch (see edgeseg.runtime.uncertainty). Every candidate's test figures are in the JSON/MD.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, SHARED, save  # noqa: E402

TEACHER = ROOT / "benchmarks" / "teachers" / "kvasir-b0"
NAME = "triage_kvasir_b0"
FRACTIONS = (0.05, 0.10, 0.20)
SUMMARIES = ("score", "area_ratio", "mean", "foreground", "boundary")


def export(bundle: Path, data: Path, val_images: int) -> dict:
    from edgeseg.export.pipeline import export_bundle

    if (bundle / "edgeseg.json").is_file():
        print(f"reusing {bundle}", file=sys.stderr)
        return {"reused": True}
    t = time.perf_counter()
    bundle.parent.mkdir(parents=True, exist_ok=True)
    export_bundle(TEACHER, bundle, data=data / "kvasir-seg", split="val", limit=val_images)
    return {"reused": False, "seconds": round(time.perf_counter() - t, 1)}


def score_set(seg, samples, label: str) -> tuple[list[dict], dict]:
    """Per-image rows (Dice, summaries at the bundle's T, score at T=1) and the pixel ECE both ways."""
    from edgeseg.data import folders as D
    from edgeseg.runtime.confidence import ReliabilityBins
    from edgeseg.runtime.metrics import dice_score
    from edgeseg.runtime.uncertainty import assess, summarize

    t_bundle = seg.temperature
    raw, scaled = ReliabilityBins(), ReliabilityBins()
    rows = []
    for i, s in enumerate(samples):
        image, gt = D.load_pair(s, 2)
        outs = seg.infer(seg.prepare([image]))
        seg.temperature = 1.0
        m1, p1 = seg.finish(outs, [image.shape[:2]], True)[0]
        seg.temperature = t_bundle
        m, p = seg.finish(outs, [image.shape[:2]], True)[0]
        if not np.array_equal(m, m1):
            raise SystemExit(f"error: the temperature changed a mask ({s.name}): it must not")
        raw.add(p1, gt)
        scaled.add(p, gt)
        res = assess(m, p, seg.uncertainty_profile)
        rows.append({"name": s.name, "set": label, "dice": dice_score(m == 1, gt == 1),
                     "gt_empty": bool(not (gt == 1).any()), "pred_empty": bool(not (m == 1).any()),
                     **{k: res.summary[k] for k in (*SUMMARIES, "foreground_fraction")},
                     "score_t1": summarize(m1, p1)["score"], "percentile": res.percentile, "flagged": res.flagged})
        if (i + 1) % 25 == 0:
            print(f"  {label}: {i + 1}/{len(samples)}", file=sys.stderr)
    return rows, {"ece_t1": raw.ece(), "ece_scaled": scaled.ece(), "reliability_t1": raw.to_dict(),
                  "reliability_scaled": scaled.to_dict()}


def spearman(x, y) -> dict:
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return {"rho": None, "p_value": None, "n": int(ok.sum())}
    r = spearmanr(x[ok], y[ok])
    return {"rho": float(r.statistic), "p_value": float(r.pvalue), "n": int(ok.sum())}


def triage(rows: list[dict], key: str = "score", seed: int = 0) -> dict:
    """Share of the total Dice error held by the least-confident fraction of images."""
    err = np.array([1.0 - r["dice"] for r in rows])
    unc = np.array([r[key] for r in rows], float)
    n, total = len(rows), float(err.sum())
    order = np.argsort(-unc, kind="stable")  # least confident first
    curve = np.concatenate([[0.0], np.cumsum(err[order]) / total]) if total > 0 else np.zeros(n + 1)
    oracle = np.concatenate([[0.0], np.cumsum(np.sort(err)[::-1]) / total]) if total > 0 else np.zeros(n + 1)
    rng = np.random.default_rng(seed)
    rand = np.array([np.concatenate([[0.0], np.cumsum(err[rng.permutation(n)])]) / max(total, 1e-12)
                     for _ in range(2000)])
    at = {}
    for f in FRACTIONS:
        k = max(1, int(round(f * n)))
        at[f"{int(f * 100)}%"] = {"images": k, "error_share": float(curve[k]), "random_expected": k / n,
                                  "random_p5": float(np.percentile(rand[:, k], 5)),
                                  "random_p95": float(np.percentile(rand[:, k], 95)),
                                  "oracle": float(oracle[k]), "mean_dice_of_these": float(1 - err[order[:k]].mean())}
    return {"n": n, "total_error": total, "mean_dice": float(1 - err.mean()), "at": at,
            "curve": [round(float(v), 5) for v in curve], "oracle_curve": [round(float(v), 5) for v in oracle],
            "random_band": {"p5": [round(float(v), 5) for v in np.percentile(rand, 5, axis=0)],
                            "p95": [round(float(v), 5) for v in np.percentile(rand, 95, axis=0)]}}


def case_report(rows: list[dict]) -> dict:
    dice = [r["dice"] for r in rows]
    flagged = [r for r in rows if r["flagged"]]
    rest = [r for r in rows if not r["flagged"]]
    return {"triage": triage(rows),
            "spearman_score_vs_dice": spearman([r["score"] for r in rows], dice),
            "spearman_score_t1_vs_dice": spearman([r["score_t1"] for r in rows], dice),
            "spearman_other_summaries_vs_dice": {
                k: spearman([np.nan if r[k] is None else r[k] for r in rows], dice) for k in SUMMARIES[1:]},
            "flagged": {"images": len(flagged), "share": len(flagged) / len(rows),
                        "mean_dice_flagged": float(np.mean([r["dice"] for r in flagged])) if flagged else None,
                        "mean_dice_not_flagged": float(np.mean([r["dice"] for r in rest])) if rest else None}}


def plot(cases: dict, path: Path) -> None:
    from edgeseg.measure.report import require_matplotlib

    Figure, Canvas = require_matplotlib()
    fig = Figure(figsize=(5 * len(cases), 4.6))
    Canvas(fig)
    for ax, (label, c) in zip(fig.subplots(1, len(cases)), cases.items()):
        t = c["triage"]
        x = np.arange(t["n"] + 1) / t["n"]
        ax.fill_between(x, t["random_band"]["p5"], t["random_band"]["p95"], color="grey", alpha=0.25,
                        label="random order (5-95%)")
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="random order (expected)")
        ax.plot(x, t["oracle_curve"], ":", color="black", lw=1, label="oracle (by the error itself)")
        ax.plot(x, t["curve"], color="#c44e52", lw=2, label="least confident first (score)")
        for f in FRACTIONS:
            ax.axvline(f, color="#999999", lw=0.5)
        rho = c["spearman_score_vs_dice"]["rho"]
        ax.set_title(f"{label}: {t['n']} images, mean Dice {t['mean_dice']:.3f}\nSpearman(score, Dice) = "
                     + ("n/a" if rho is None else f"{rho:+.3f}"), fontsize=9)
        ax.set_xlabel("share of images reviewed (least confident first)")
        ax.set_ylabel("share of the total Dice error (sum of 1 - Dice) caught")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def markdown(res: dict) -> str:
    lines = [f"# Triage by uncertainty: {res['model']}", "", f"Command: `{res['command']}`", "",
             f"Bundle temperature T = {res['temperature']['value']:.3f} (fitted at export on "
             f"{res['temperature']['fitted_on']['images']} Kvasir val images); uncertainty flag threshold "
             f"{res['uncertainty_profile']['threshold']:.4f} (95th percentile of "
             f"{res['uncertainty_profile']['images']} val images).", "",
             "| case | images | mean Dice | error held by least-confident 5% / 10% / 20% | random | oracle 20% "
             "| Spearman(score, Dice) | flagged | ECE T=1 -> T |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, c in res["cases"].items():
        t, sp = c["triage"], c["spearman_score_vs_dice"]
        held = " / ".join(f"{t['at'][k]['error_share']:.1%}" for k in ("5%", "10%", "20%"))
        rnd = " / ".join(f"{t['at'][k]['random_expected']:.1%}" for k in ("5%", "10%", "20%"))
        ece = c.get("calibration") or {}
        ece_s = f"{ece['ece_t1']:.4f} -> {ece['ece_scaled']:.4f}" if ece else "see parts"
        lines.append(f"| {label} | {t['n']} | {t['mean_dice']:.3f} | {held} | {rnd} | {t['at']['20%']['oracle']:.1%} "
                     f"| {sp['rho']:+.3f} (p={sp['p_value']:.2g}) | {c['flagged']['share']:.1%} | {ece_s} |")
    lines += ["", "Spearman(summary, Dice) of every candidate summary (score = the one shipped, chosen on val):", "",
              "| case | " + " | ".join(SUMMARIES) + " |", "|---|" + "---|" * len(SUMMARIES)]
    sel = res["score_selection"]["spearman_vs_dice"]
    rows = [("kvasir val (selection)", sel)] + [(k, {"score": c["spearman_score_vs_dice"],
                                                     **c["spearman_other_summaries_vs_dice"]})
                                                for k, c in res["cases"].items()]
    for label, sp in rows:
        lines.append(f"| {label} | " + " | ".join("n/a" if sp[k]["rho"] is None else f"{sp[k]['rho']:+.3f} (n={sp[k]['n']})"
                                                  for k in SUMMARIES) + " |")
    lines += ["", "Error = 1 - Dice per image; random = expected share for a random order (5-95% band in the "
              "JSON); oracle = ranked by the error itself. Negative Spearman = less sure, worse mask. "
              "ECE: pixels pooled, top-class confidence, 15 equal-width bins.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(SHARED))
    ap.add_argument("--bundle", default=str(ROOT / "runs" / "triage" / "kvasir-b0"))
    ap.add_argument("--val-images", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    from edgeseg.data import folders as D
    from edgeseg.measure.reliability import plot_reliability
    from edgeseg.runtime.segmenter import Segmenter

    data = Path(a.data)
    if not (data / "kvasir-seg").is_dir() or not (data / "busi-subset").is_dir():
        sys.exit(f"error: real data not found at {data} (expected kvasir-seg/ and busi-subset/)")
    t0 = time.perf_counter()
    exported = export(Path(a.bundle), data, a.val_images)
    seg = Segmenter(a.bundle, threads=a.threads)
    sets = {"kvasir val (selection split)": D.discover(data / "kvasir-seg", "val"),
            "kvasir test": D.discover(data / "kvasir-seg", "test"),
            "busi (cross-dataset)": D.discover(data / "busi-subset", None)}
    rows, calib = {}, {}
    for label, samples in sets.items():
        rows[label], calib[label] = score_set(seg, samples, label)
    cases = {label: {**case_report(r), "calibration": {k: calib[label][k] for k in ("ece_t1", "ece_scaled")}}
             for label, r in rows.items()}
    cases["mixed (kvasir test + busi)"] = case_report(rows["kvasir test"] + rows["busi (cross-dataset)"])
    selection = cases.pop("kvasir val (selection split)")
    m = seg.info
    res = {"model": "benchmarks/teachers/kvasir-b0 (bundle, onnxruntime)",
           "command": "python benchmarks/triage.py" + (f" --val-images {a.val_images}" if a.val_images != 100 else ""),
           "export": exported, "temperature": m["temperature"],
           "uncertainty_profile": {k: v for k, v in m["uncertainty"].items() if k != "values"},
           "score_definition": m["uncertainty"]["definition"] + " (edgeseg.runtime.uncertainty); ranked least "
                               "confident (highest) first",
           "score_selection": {"split": "kvasir val (the 100 images the export fitted T and the profile on)",
                               "spearman_vs_dice": {"score": selection["spearman_score_vs_dice"],
                                                    **selection["spearman_other_summaries_vs_dice"]},
                               "note": "score = foreground was chosen on these figures; area_ratio had been "
                                       "declared first and its test figures seen before the switch"},
           "cases": cases, "reliability_kvasir_test": {k: calib["kvasir test"][k]
                                                        for k in ("reliability_t1", "reliability_scaled")},
           "reliability_busi": {k: calib["busi (cross-dataset)"][k] for k in ("reliability_t1", "reliability_scaled")},
           "per_image": [r for rs in rows.values() for r in rs],
           "seconds": round(time.perf_counter() - t0, 1), "loadavg": list(os.getloadavg())}
    save(NAME, res)
    (RESULTS / f"{NAME}.md").write_text(markdown(res))
    plot({k: v for k, v in cases.items()}, RESULTS / f"{NAME}.png")
    t = m["temperature"]["value"]
    for key, tt in (("reliability_t1", 1.0), ("reliability_scaled", t)):
        plot_reliability(calib["kvasir test"][key], RESULTS / f"{NAME}_reliability_{'t1' if tt == 1.0 else 'scaled'}.png",
                         title=f"kvasir-b0 on Kvasir test, T = {tt:.3f}")
    print(markdown(res))


if __name__ == "__main__":
    main()
