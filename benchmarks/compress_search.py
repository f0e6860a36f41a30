"""Issue-10 benchmark: plain ``edgeseg compress`` (the search, default budgets) of the Kvasir teacher.

    python benchmarks/compress_search.py [--out runs/kvasir_search] [--time-budget 60]

Runs the search exactly as ``edgeseg compress benchmarks/teachers/kvasir-b0 --calib DATA
--calib-split calibration --val DATA --val-split val --train DATA --train-split train
--time-budget 60`` would (in-process, so its stage lines go to the log), with the default
budgets. It is resumable: run it again with the same options and every finished candidate is
reused. Then every point (each candidate's FP32 and INT8 model) is scored again on the held-out
TEST split with the same four budget figures against the teacher, so the validation choice can
be checked on images it never saw.

Another teacher and dataset: ``--teacher``, ``--data`` and the split options, e.g. the MoNuSeg
nuclei teacher on its 500 px crops (made by ``python benchmarks/slide_mosaic.py --make-data DIR``;
no test split, so the train split calibrates):

    python benchmarks/compress_search.py --teacher benchmarks/teachers/monuseg-b0 --data DIR
        --calib-split train --skip-test --out runs/monuseg_search --name compress_search_monuseg

Writes benchmarks/results/compress_search.json (the whole Pareto table on validation and test,
the decision, the search log, wall time, machine info and the load average before and after)
and compress_search.md, and copies the run's report.md and agreement_vs_latency.png beside
them (compress_search_report.md, compress_search_agreement_vs_latency.png). Latencies are the
stage timings of the run itself (model-only p50, batch 1, --threads threads, ONNX Runtime),
taken one after another on this shared machine: the load average says how busy it was.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, SHARED, save  # noqa: E402


def test_figures(points, out: Path, teacher, meta, data: str, threads: int, quantile: float, split: str = "test",
                 min_lesion_px: int = 9) -> dict:
    """Each point's budget figures on the test split (teacher masks predicted once)."""
    import numpy as np

    from edgeseg.data import folders as D
    from edgeseg.measure.budgets import fidelity
    from edgeseg.runners import open_model, torch_segmenter
    from edgeseg.runtime.metrics import MetricAccumulator

    test = D.discover(data, split)
    pairs = [(s.name, *D.load_pair(s, len(meta.classes))) for s in test]
    seg_t = torch_segmenter(teacher.eval(), meta)
    t_masks = [np.asarray(seg_t.predict(img)) for _, img, _ in pairs]
    acc = MetricAccumulator(num_classes=len(meta.classes))
    for (n, _, gt), m in zip(pairs, t_masks):
        acc.add(m, gt, name=n)
    t_dice = acc.summary()["mean_dice"]
    out_rows = {"images": len(pairs), "teacher_dice": t_dice, "points": {}}
    for p in points:
        seg = open_model(out / p["path"], threads=threads)
        acc = MetricAccumulator(num_classes=len(meta.classes))
        masks = []
        for n, img, gt in pairs:
            masks.append(np.asarray(seg.predict(img)))
            acc.add(masks[-1], gt, name=n)
        dice = acc.summary()["mean_dice"]
        fig = fidelity(masks, t_masks, [q[2] for q in pairs], [q[0] for q in pairs], len(meta.classes),
                       quantile=quantile, mean_drop=t_dice - dice, min_lesion_px=min_lesion_px,
                       grid=(meta.preprocess.height, meta.preprocess.width))
        out_rows["points"][p["point"]] = {"dice": dice, **{k: fig[k] for k in ("mean_drop", "image_drop", "agreement",
                                                                                "lesions", "lost_lesions")}}
    return out_rows


def partial(a) -> None:
    """The points an unfinished search has measured (read from OUT/state.json), checked against
    the default budgets, saved as <name>_partial.{json,md} with the load average now."""
    import json

    from edgeseg.compress.recipe import Recipe
    from edgeseg.compress.search import choose
    from edgeseg.compress.report import pareto_table

    st = json.loads((Path(a.out) / "state.json").read_text())
    points = []
    for cand, h in (st.get("candidates") or {}).items():
        for name, res in (h.get("stages") or {}).items():
            if name in ("export", "quantize"):
                points.append({"point": f"{cand}/{res['precision']}", "candidate": cand, "stage": name,
                               "runner": res.get("runner"), "p50_ms": res.get("p50_ms"), "size_mb": res.get("size_mb"),
                               "noisy": bool(res.get("noisy_reason")), "dice": res.get("dice"),
                               "fidelity": res.get("fidelity") or {}})
    budgets = Recipe(**{k: v for k, v in st["recipe"].items() if k in Recipe.__dataclass_fields__}).budgets()
    d = choose(points, budgets)
    shared = {k: {x: v.get(x) for x in ("seconds", "dice", "p50_ms", "size_mb", "noisy_reason")}
              for k, v in st["stages"].items()}
    rep_ = {"points": points, "budgets": d}
    res = {"command": "python benchmarks/compress_search.py " + " ".join(sys.argv[1:]),
           "note": "the search had not finished: these are the points measured so far (state.json of --out)",
           "load_average_now": [round(v, 2) for v in os.getloadavg()], "shared_stages": shared,
           "candidates_started": {k: sorted((h.get("stages") or {})) for k, h in (st.get("candidates") or {}).items()},
           "budgets": {k: d.get(k) for k in ("limits", "met", "lines")},
           "chosen_so_far": (d.get("point") or {}).get("point"), "points": points}
    save(f"{a.name}_partial", res)
    md = [f"# {a.name} (partial: the search had not finished)", "",
          f"Load average now {res['load_average_now']}. Shared stages: " +
          ", ".join(f"{k} {v['seconds']} s (p50 {v['p50_ms']:.1f} ms{', noisy' if v['noisy_reason'] else ''})"
                    for k, v in shared.items()), "", *pareto_table(rep_), "", f"Command: `{res['command']}`"]
    (RESULTS / f"{a.name}_partial.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", default=str(ROOT / "benchmarks/teachers/kvasir-b0"))
    ap.add_argument("--data", default=str(SHARED / "kvasir-seg"))
    ap.add_argument("--out", default=str(ROOT / "runs/kvasir_search"))
    ap.add_argument("--time-budget", type=float, default=60.0, help="minutes (the compress default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="compress_search")
    ap.add_argument("--skip-test", action="store_true", help="do not score the points on the test split")
    ap.add_argument("--calib-split", default="calibration")
    ap.add_argument("--val-split", default="val")
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--test-split", default="test")
    ap.add_argument("--from-state", action="store_true",
                    help="run nothing: save what an unfinished --out has measured so far (its state.json) as "
                         "<name>_partial.{json,md}")
    a = ap.parse_args()
    if a.from_state:
        return partial(a)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("edgeseg.measure.timing",):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import torch

    from edgeseg.compress.pipeline import Compressor
    from edgeseg.compress.recipe import Recipe
    from edgeseg.compress.report import budget_lines, pareto_table

    torch.set_num_threads(a.threads)
    recipe = Recipe(calib=a.data, calib_split=a.calib_split, val=a.data, val_split=a.val_split, train=a.data,
                    train_split=a.train_split, time_budget=a.time_budget, threads=a.threads)
    load_before = os.getloadavg()
    t0 = time.time()
    c = Compressor(a.teacher, a.out, recipe, progress=False)
    rep = c.run()
    wall = time.time() - t0
    load_after = os.getloadavg()
    test = None if a.skip_test else test_figures(rep["points"], Path(a.out), c.teacher, c.meta, a.data, a.threads,
                                                 recipe.image_quantile, a.test_split, recipe.min_lesion_px)
    d = rep["budgets"]
    chosen = (d.get("point") or {}).get("point")
    teacher = rep["stages"][0]
    res = {"command": "python benchmarks/compress_search.py " + " ".join(sys.argv[1:]),
           "equivalent_cli": (f"edgeseg compress {a.teacher} --calib {a.data} --calib-split {a.calib_split} --val "
                              f"{a.data} --val-split {a.val_split} --train {a.data} --train-split {a.train_split} "
                              f"--time-budget {a.time_budget:g} --threads {a.threads} -o {a.out}"),
           "wall_s": round(wall, 1), "load_average_before": [round(v, 2) for v in load_before],
           "load_average_after": [round(v, 2) for v in load_after], "threads": a.threads,
           "teacher": {"p50_ms_pytorch_eager": teacher.get("p50_ms"), "dice": teacher.get("dice")},
           "budgets": {k: d.get(k) for k in ("limits", "met", "lines", "accepted_over_budget", "search")},
           "chosen": chosen, "points": rep["points"], "test": test}
    save(a.name, res)
    md = [f"# {a.name}", "", f"`{res['equivalent_cli']}`", "",
          f"Wall {wall / 60:.1f} min; load average {load_before[0]:.2f} -> {load_after[0]:.2f} on "
          f"{os.cpu_count()} cores; teacher (PyTorch eager FP32) p50 {teacher.get('p50_ms') or 0:.1f} ms, val Dice "
          f"{teacher.get('dice') or 0:.4f}.", "", *budget_lines(rep), "", "## Validation (chooses)", "",
          *pareto_table(rep)]
    if test:
        md += ["", f"## Test split ({test['images']} images; never used to choose)", "",
               "| point | speed-up vs eager (val run) | Dice | mean drop | p95 image drop | agreement | lost lesions |",
               "|---|---|---|---|---|---|---|"]
        for p in sorted(rep["points"], key=lambda p: p.get("p50_ms") or 1e9):
            t = test["points"][p["point"]]
            sp = (teacher.get("p50_ms") or 0) / p["p50_ms"] if p.get("p50_ms") else 0
            md.append(f"| {p['point']}{' (chosen)' if p['point'] == chosen else ''} | {sp:.1f}x | {t['dice']:.4f} | "
                      f"{t['mean_drop']:+.4f} | {t['image_drop']:+.4f} | {t['agreement']:.4f} | "
                      f"{t['lost_lesions']}/{t['lesions']} |")
    md += ["", f"Command: `{res['command']}`"]
    (RESULTS / f"{a.name}.md").write_text("\n".join(md) + "\n")
    shutil.copy(Path(a.out) / "report.md", RESULTS / f"{a.name}_report.md")
    png = Path(a.out) / "agreement_vs_latency.png"
    if png.is_file():
        shutil.copy(png, RESULTS / f"{a.name}_agreement_vs_latency.png")
    print("\n".join(md))


if __name__ == "__main__":
    main()
