"""Issue 13: does compression change where the model looks? Grad-CAM (edgeseg.explain) of the Kvasir
teacher and of its compressed students on real test images.

    python benchmarks/explain_kvasir.py --student runs/kvasir_compressed/stages/prune \
        --student runs/kvasir_compressed/stages/distill --count 16

The students are the stage checkpoints that `benchmarks/compress_kvasir.py` leaves under
runs/kvasir_compressed/stages/ (prune: the pruned teacher before distillation; distill: after).
For each encoder stage asked (--stage, default 4 and 2), each method (--method, default gradcam and
hirescam) and each image, it records the
teacher's and each student's concentration (CAM density inside the model's predicted region over
the image as a whole, >1 = concentrated on it), the Pearson correlation of the student's map with
the teacher's, and the Dice between their predicted masks. Writes
benchmarks/results/explain_kvasir.{json,md} with the machine and load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, SHARED  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default=str(ROOT / "benchmarks/teachers/kvasir-b0"))
    ap.add_argument("--student", action="append", default=[])
    ap.add_argument("--data", default=str(SHARED / "kvasir-seg"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--stage", type=int, action="append", default=[])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--method", action="append", default=[])
    ap.add_argument("--name", default="explain_kvasir")
    a = ap.parse_args()
    import torch

    from edgeseg.data import folders as D
    from edgeseg.explain import correlation, grad_cam, mask_dice
    from edgeseg.measure.machine import machine_info
    from edgeseg.model.checkpoint import load_checkpoint

    torch.set_num_threads(a.threads)
    stages = a.stage or [4, 2]
    methods = a.method or ["gradcam", "hirescam"]
    samples = D.discover(a.data, a.split)[: a.count]
    teacher, tmeta = load_checkpoint(a.teacher)
    students = {Path(s).name: load_checkpoint(s) for s in a.student}
    load_before, t0 = os.getloadavg(), time.time()
    result = {"teacher": Path(a.teacher).name, "students": {Path(s).name: str(s) for s in a.student},
              "data": Path(a.data).name, "split": a.split, "images": len(samples), "stages": {}}
    for st, method in [(st, m) for st in stages for m in methods]:
        rows = []
        for s in samples:
            image = D.read_image(s.image)
            t = grad_cam(teacher, tmeta, image, st, method=method)
            row = {"name": s.name, "teacher_concentration": t.record()["concentration"]}
            for name, (m, meta) in students.items():
                x = grad_cam(m, meta, image, st, t.target, method=method)
                row[name] = {"concentration": x.record()["concentration"], "correlation": correlation(t.cam, x.cam),
                             "mask_dice": mask_dice(t.mask, x.mask, t.target)}
            rows.append(row)
            print(f"stage {st} {method} {s.name}: {json.dumps({k: v for k, v in row.items() if k != 'name'})}", file=sys.stderr)
        summary = {"teacher_concentration": _median_mean([r["teacher_concentration"] for r in rows]),
                   "teacher_blank_maps": sum(r["teacher_concentration"] is None for r in rows)}
        for name in students:
            summary[name] = {k: _median_mean([r[name][k] for r in rows])
                             for k in ("concentration", "correlation", "mask_dice")}
        result["stages"][f"{st} {method}"] = {"summary": summary, "rows": rows}
    result.update(seconds=round(time.time() - t0, 1), load_before=load_before, load_after=os.getloadavg(),
                  machine=machine_info(), command=" ".join(sys.argv))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{a.name}.json").write_text(json.dumps(result, indent=2, allow_nan=False))
    (RESULTS / f"{a.name}.md").write_text(_markdown(result))
    print(_markdown(result))


def _median_mean(values) -> dict:
    v = np.array([x for x in values if x is not None], dtype=float)
    return {"mean": round(float(v.mean()), 4) if v.size else None,
            "median": round(float(np.median(v)), 4) if v.size else None, "n": int(v.size)}


def _markdown(r: dict) -> str:
    lines = [f"# Grad-CAM: {r['teacher']} vs its compressed students", "",
             f"{r['images']} images of {r['data']} ({r['split']} split); `{r['command']}`; {r['seconds']} s, "
             f"load {r['load_before'][0]:.1f} -> {r['load_after'][0]:.1f}.", "",
             "Concentration: CAM density inside the model's own predicted region / over the whole image (>1: "
             "concentrated on it). Correlation: Pearson of the student's map with the teacher's. Mask Dice: "
             "student's predicted mask vs the teacher's. Mean (median) over images.", "",
             "Blank: maps that are zero everywhere (no concentration or correlation defined; left out of the means).",
             "", "| stage, method | model | concentration | correlation with teacher | mask Dice vs teacher | blank |",
             "|---|---|---|---|---|---|"]
    for st, d in r["stages"].items():
        s = d["summary"]
        tc = s["teacher_concentration"]
        lines.append(f"| {st} | {r['teacher']} (teacher) | {tc['mean']} ({tc['median']}) | | | "
                     f"{s['teacher_blank_maps']} of {r['images']} |")
        for name in r["students"]:
            m = s[name]
            lines.append(f"| {st} | {name} | {m['concentration']['mean']} ({m['concentration']['median']}) | "
                         f"{m['correlation']['mean']} ({m['correlation']['median']}) | "
                         f"{m['mask_dice']['mean']} ({m['mask_dice']['median']}) | "
                         f"{r['images'] - m['concentration']['n']} of {r['images']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
