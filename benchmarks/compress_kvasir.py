"""Issue-4 benchmark: compress the reference teacher and compare it, on the Kvasir TEST split,
with the teacher as users run it today (transformers + PyTorch eager, FP32) and with ONNX
Runtime's own static INT8 quantization of the unmodified teacher (QDQ, min-max, defaults).

    python benchmarks/compress_kvasir.py [--out runs/kvasir_compressed] [--distill-epochs 8]

All latencies: batch 1, model-only p50 at the teacher's resolution, ``--threads`` threads, this
machine. Writes benchmarks/results/compress_kvasir.{json,md}; the compression report itself is
copied to benchmarks/results/compress_kvasir_report.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, SHARED, distribution, p50, per_image_dice, save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default=str(ROOT / "benchmarks/teachers/kvasir-b0"))
    ap.add_argument("--data", default=str(SHARED / "kvasir-seg"))
    ap.add_argument("--out", default=str(ROOT / "runs/kvasir_compressed"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--distill-epochs", type=int, default=8)
    ap.add_argument("--prune-ratio", type=float, default=0.5)
    ap.add_argument("--decoder-ratio", type=float, default=0.75)
    ap.add_argument("--max-dice-drop", type=float, default=0.01)
    ap.add_argument("--depths", default="1,1,1,1", help="blocks kept per stage ('' = no depth pruning)")
    ap.add_argument("--skip-compress", action="store_true", help="reuse an existing --out")
    ap.add_argument("--target", default="cpu", help="INT8 target: cpu, tensorrt or cpu-weights")
    ap.add_argument("--name", default="compress_kvasir", help="results file name")
    ap.add_argument("--reuse-from", default=None,
                    help="copy the teacher..export stages of an earlier --out made with the same recipe except "
                         "the INT8 target (those stages do not depend on it), then redo only quantize")
    a = ap.parse_args()

    import torch

    from edgeseg.data import folders as D
    from edgeseg.compress.pipeline import Compressor, Recipe
    from edgeseg.export.onnx import ExportConfig
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.model.checkpoint import load_checkpoint
    from edgeseg.quantize import load_calibration
    from ort_baselines import quantize_static_baseline
    from edgeseg.runners import open_model, torch_segmenter
    from edgeseg.runtime.bundle import read_bundle, write_bundle

    torch.set_num_threads(a.threads)
    recipe = Recipe(calib=a.data, calib_split="calibration", calib_count=64, val=a.data, val_split="val",
                    train=a.data, train_split="train", prune_ratio=a.prune_ratio, decoder_ratio=a.decoder_ratio,
                    distill_epochs=a.distill_epochs, max_dice_drop=a.max_dice_drop, threads=a.threads,
                    depths=tuple(int(v) for v in a.depths.split(",")) if a.depths else None, target=a.target)
    if a.reuse_from and not Path(a.out).exists():
        import json

        shutil.copytree(a.reuse_from, a.out, ignore=shutil.ignore_patterns("bundle", "quantize", "report.*",
                                                                           "dice_vs_latency.png"))
        st = json.loads((Path(a.out) / "state.json").read_text())
        st["stages"].pop("quantize", None)
        for k, v in st["stages"].items():
            v["path"] = v["path"].replace(str(Path(a.reuse_from).resolve()), str(Path(a.out).resolve()))
        old = dict(st["recipe"])
        st["recipe"] = recipe.to_dict()
        diff = {k for k in old if old[k] != st["recipe"].get(k)}
        if diff - {"target"}:
            raise SystemExit(f"--reuse-from: recipes differ in more than the target: {sorted(diff)}")
        (Path(a.out) / "state.json").write_text(json.dumps(st, indent=2))
    if not a.skip_compress:
        Compressor(a.teacher, a.out, recipe).run()
    bundle = Path(a.out) / "bundle"

    model, meta = load_checkpoint(a.teacher)
    test = D.discover(a.data, "test")
    timing_images = [D.read_image(s.image) for s in test[:16]]
    rows = {}
    with tempfile.TemporaryDirectory() as td:
        # what users run today: PyTorch eager
        seg_t = torch_segmenter(model, meta)
        rows["pytorch_eager_fp32"] = {"dice": per_image_dice(seg_t, test), "latency": p50(seg_t, timing_images,
                                                                                         a.threads, runs=a.runs)}
        # plain FP32 export (no folding) and ONNX Runtime's default static INT8 of it
        plain = Path(td) / "plain"
        export_bundle(a.teacher, plain, ExportConfig(fold=False), data=a.data, split="val", limit=8)
        calib, info = load_calibration(a.data, meta.preprocess, count=64, split="calibration")
        q = quantize_static_baseline(plain / "model.onnx", Path(td) / "ort_int8.onnx", calib)
        b = read_bundle(plain)
        write_bundle(Path(td) / "ort_int8", {"model.onnx": q}, b.manifest.derive(precision="int8"))
        for name, path in (("onnxruntime_fp32_plain", plain), ("onnxruntime_static_int8_default", Path(td) / "ort_int8"),
                           ("edgeseg_bundle", bundle)):
            seg = open_model(path, threads=a.threads)
            rows[name] = {"dice": per_image_dice(seg, test),
                          "latency": p50(seg, timing_images, a.threads, runs=a.runs),
                          "size_mb": (path / "model.onnx").stat().st_size / 1e6,  # MB = 10^6 bytes
                          "precision": read_bundle(path).precision}
    ref = rows["pytorch_eager_fp32"]["dice"]
    summary = {}
    for name, r in rows.items():
        d = r["dice"]
        drops = {k: ref[k] - d[k] for k in d}
        worst = max(drops, key=drops.get)
        summary[name] = {"mean_dice": sum(d.values()) / len(d), "p50_ms": r["latency"]["model"]["p50_ms"],
                         "spread_ms": r["latency"]["model"]["spread_ms"], "size_mb": r.get("size_mb"),
                         "drop_vs_teacher": distribution(drops.values()), "worst_image": worst,
                         "worst_drop": drops[worst]}
    e, o, f, bnd = (summary[k] for k in ("pytorch_eager_fp32", "onnxruntime_static_int8_default",
                                          "onnxruntime_fp32_plain", "edgeseg_bundle"))
    targets = {
        "speedup_vs_pytorch_eager": e["p50_ms"] / bnd["p50_ms"], "target_speedup_vs_pytorch_eager": 10.0,
        "speedup_vs_ort_int8_default": o["p50_ms"] / bnd["p50_ms"], "target_speedup_vs_ort_int8_default": 3.0,
        "size_ratio_vs_fp32_onnx": f["size_mb"] / bnd["size_mb"], "target_size_ratio": 8.0,
        "dice_drop_vs_teacher": e["mean_dice"] - bnd["mean_dice"], "target_max_dice_drop": 0.010,
    }
    targets["met"] = {"speed_vs_eager": targets["speedup_vs_pytorch_eager"] >= 10,
                      "speed_vs_ort_int8": targets["speedup_vs_ort_int8_default"] >= 3,
                      "size": targets["size_ratio_vs_fp32_onnx"] >= 8,
                      "dice": targets["dice_drop_vs_teacher"] <= 0.010}
    res = {"teacher": a.teacher, "bundle": str(bundle), "test_images": len(test), "threads": a.threads,
           "batch": 1, "input": [meta.preprocess.height, meta.preprocess.width], "calibration": info,
           "recipe": read_bundle(bundle).manifest.get("recipe"), "summary": summary, "targets": targets,
           "per_image_dice": {k: r["dice"] for k, r in rows.items()},
           "command": "python benchmarks/compress_kvasir.py " + " ".join(sys.argv[1:])}
    save(a.name, res)
    md = [f"# {a.name}", "", f"Kvasir test split ({len(test)} images), batch 1, {a.threads} threads, "
          f"input {meta.preprocess.height}x{meta.preprocess.width}, model-only p50.", "",
          "| model | precision | size MB | p50 ms (spread) | mean Dice | Dice drop mean / median / max | worst image |",
          "|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        d = s["drop_vs_teacher"]
        size = "" if s["size_mb"] is None else f"{s['size_mb']:.2f}"
        md.append(f"| {name} | {rows[name].get('precision', 'fp32')} | {size} | {s['p50_ms']:.1f} ({s['spread_ms']:.1f}) | "
                  f"{s['mean_dice']:.4f} | {d['mean']:+.4f} / {d['median']:+.4f} / {d['max']:+.4f} | "
                  f"{s['worst_image']} ({s['worst_drop']:+.3f}) |")
    t = targets
    md += ["", f"- speed-up vs PyTorch eager: {t['speedup_vs_pytorch_eager']:.2f}x (target 10x)",
           f"- speed-up vs ORT static INT8 (defaults): {t['speedup_vs_ort_int8_default']:.2f}x (target 3x)",
           f"- size vs FP32 ONNX: {t['size_ratio_vs_fp32_onnx']:.2f}x smaller (target 8x)",
           f"- Dice drop vs teacher: {t['dice_drop_vs_teacher']:+.4f} (target <= 0.010)", "",
           f"Command: `{res['command']}`"]
    (RESULTS / f"{a.name}.md").write_text("\n".join(md) + "\n")
    shutil.copy(Path(a.out) / "report.md", RESULTS / f"{a.name}_report.md")
    print("\n".join(md))


if __name__ == "__main__":
    main()
