"""What counts as a lost lesion: the Kvasir search's points re-counted with and without a minimum size.

    python benchmarks/lesion_rule.py [--run runs/kvasir_search] [--split val]

The saved Kvasir search (``benchmarks/compress_search.py`` -> ``results/compress_search*``) was
scored before ``--min-lesion-px`` existed: every connected component of the teacher's mask
counted as a lesion, and folded INT8 "lost" 23 of 207 while keeping the mean Dice. This script
takes the bundles that run left in ``--run`` (the folded FP32 export, exact to the teacher, is
the reference), predicts the split once per bundle and counts lesions and lost lesions for
several minimum sizes (pixels at the model's input resolution, scaled to each image), with the
other budget figures beside them. Writes results/lesion_rule.{json,md} with machine info.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, SHARED, save  # noqa: E402

SIZES = (1, 4, 9, 25, 100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(ROOT / "runs" / "kvasir_search"))
    ap.add_argument("--data", default=str(SHARED / "kvasir-seg"))
    ap.add_argument("--split", default="val")
    args = ap.parse_args()

    from edgeseg.data import folders as D
    from edgeseg.measure.budgets import fidelity
    from edgeseg.measure.machine import machine_info
    from edgeseg.runtime.segmenter import Segmenter

    run = Path(args.run)
    ref_dir = run / "candidates" / "fold" / "export"
    points = {p: run / "candidates" / p for p in ("fold/quantize", "prune25/export", "prune25/quantize")}
    points = {k: v for k, v in points.items() if (v / "edgeseg.json").is_file()}
    if not (ref_dir / "edgeseg.json").is_file() or not points:
        raise SystemExit(f"{run} holds no search bundles: run benchmarks/compress_search.py first")
    load0, t0 = os.getloadavg(), time.time()
    samples = D.discover(args.data, args.split)
    pairs = [(s.name, *D.load_pair(s, 2)) for s in samples]
    ref = Segmenter(ref_dir, threads=2)
    grid = (ref.preprocess_spec.height, ref.preprocess_spec.width)
    teacher = [ref.predict(img) for _, img, _ in pairs]
    gts, names = [g for _, _, g in pairs], [n for n, _, _ in pairs]
    rows = []
    for name, path in points.items():
        seg = Segmenter(path, threads=2)
        masks = [seg.predict(img) for _, img, _ in pairs]
        for px in SIZES:
            f = fidelity(masks, teacher, gts, names, min_lesion_px=px, grid=grid)
            rows.append({"point": name, "min_lesion_px": px, "lesions": f["lesions"], "lost": f["lost_lesions"],
                         "mean_drop": f["mean_drop"], "image_drop_p95": f["image_drop"],
                         "agreement": f["agreement"]})
    result = {"command": "python benchmarks/lesion_rule.py " + " ".join(sys.argv[1:]), "split": args.split,
              "images": len(pairs), "grid": list(grid), "reference": "fold/export (folded FP32, exact to the teacher)",
              "rows": rows, "seconds": round(time.time() - t0, 1), "load_before": load0,
              "load_after": os.getloadavg(), "machine": machine_info()}
    save("lesion_rule", result)
    lines = [f"# Lost lesions by minimum lesion size (Kvasir {args.split}, {len(pairs)} images)", "",
             f"`{result['command']}`; reference {result['reference']}; sizes in pixels at the model's "
             f"{grid[0]}x{grid[1]} input, scaled to each image; load {load0[0]:.1f} -> {os.getloadavg()[0]:.1f}.",
             "", "| point | min lesion px | teacher lesions | lost | mean drop | p95 image drop | agreement |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['point']} | {r['min_lesion_px']} | {r['lesions']} | {r['lost']} | {r['mean_drop']:+.4f} "
                     f"| {r['image_drop_p95']:+.4f} | {r['agreement']:.4f} |")
    (RESULTS / "lesion_rule.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
