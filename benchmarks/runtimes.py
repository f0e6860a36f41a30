"""ONNX Runtime vs OpenVINO, FP32 vs INT8, and ONNX Runtime's own settings, side by side on the
reference Kvasir teacher (benchmarks/teachers/kvasir-b0), on this machine.

    python benchmarks/runtimes.py [--runs 60] [--warmup 10] [--threads 2] [--images 100]

Models (exported into runs/runtimes/ when missing, with edgeseg's own commands):
  plain        unfolded FP32 export (`edgeseg export --no-fold`)
  fp32         folded FP32 bundle (`edgeseg export`, the default)
  fp32_static  folded FP32 with a static batch of 1 (ExportConfig(dynamic_batch=False))
  int8         INT8 Q/DQ, the `cpu` target (uint8 asymmetric activations), 64 calibration images
  int8_sym     INT8 Q/DQ, the `tensorrt` target (int8 symmetric activations), same images
  weights      weight-only INT8 (`--target cpu-weights`)
  compressed   runs/kvasir_compressed/bundle, when it exists (the compress pipeline's output)

Configurations: each model under ONNX Runtime (edgeseg's runner: ORT_ENABLE_ALL) and under
OpenVINO (edgeseg's runner; graphs with quantized activations opened with
allow_int8_activations=True, which the runtime refuses by default, to measure them), plus the
folded FP32 model under ONNX Runtime's other graph optimisation levels (disabled, basic,
extended). All configurations are timed model-only, batch 1, the same pre-processed val image,
``--threads`` intra-op threads, interleaved (each round calls every configuration once, the
order rotating), after warm-up. Accuracy on the val split (100 images): Dice against the
ground truth and mask agreement (pixel share and Dice between masks) with the FP32 model under
ONNX Runtime. CPU flags (AVX2/AVX-512/VNNI/AMX), load average and the cores other processes
kept busy are saved with the figures: benchmarks/results/runtimes_kvasir.{json,md}.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, SHARED, save  # noqa: E402

TEACHER = ROOT / "benchmarks" / "teachers" / "kvasir-b0"
DATA = SHARED / "kvasir-seg"
WORK = ROOT / "runs" / "runtimes"
COMPRESSED = ROOT / "runs" / "kvasir_compressed" / "bundle"
CLI = [sys.executable, "-m", "edgeseg"]


def _export() -> dict[str, Path]:
    """The bundles, made with edgeseg's commands where missing."""
    WORK.mkdir(parents=True, exist_ok=True)
    data = ["--data", str(DATA), "--split", "val"]
    calib = ["--calib", str(DATA), "--calib-split", "calibration"]
    steps = {
        "plain": CLI + ["export", str(TEACHER), "-o", str(WORK / "plain"), "--no-fold", *data],
        "fp32": CLI + ["export", str(TEACHER), "-o", str(WORK / "fp32"), *data],
        "int8": CLI + ["quantize", str(WORK / "fp32"), "-o", str(WORK / "int8"), "--target", "cpu", *calib],
        "int8_sym": CLI + ["quantize", str(WORK / "fp32"), "-o", str(WORK / "int8_sym"), "--target", "tensorrt",
                           *calib],
        "weights": CLI + ["quantize", str(WORK / "fp32"), "-o", str(WORK / "weights"), "--target", "cpu-weights"],
    }
    for name, cmd in steps.items():
        if not (WORK / name / "edgeseg.json").is_file():
            print("making", name, ":", " ".join(cmd[2:]), flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    if not (WORK / "fp32_static" / "edgeseg.json").is_file():
        from edgeseg.export.onnx import ExportConfig
        from edgeseg.export.pipeline import export_bundle

        print("making fp32_static (static batch 1)", flush=True)
        export_bundle(TEACHER, WORK / "fp32_static", ExportConfig(dynamic_batch=False), data=DATA, split="val")
    models = {n: WORK / n for n in ("plain", "fp32", "fp32_static", "int8", "int8_sym", "weights")}
    if (COMPRESSED / "edgeseg.json").is_file():
        models["compressed"] = COMPRESSED
    return models


class _OrtLevel:
    """The FP32 model in an ONNX Runtime session at another graph optimisation level."""

    def __init__(self, model_bytes: bytes, level: str, threads: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(model_bytes, sess_options=so, providers=["CPUExecutionProvider"])
        self.name = f"onnxruntime-{level}"

    def infer(self, x):
        return {"logits": self.session.run(None, {"pixel_values": x})[0]}


def _configs(models: dict[str, Path], threads: int) -> dict[str, tuple[str, object, object]]:
    """name -> (model name, Segmenter for pre/post-processing, runner)."""
    from edgeseg.runtime.runners.openvino import OpenVINORunner
    from edgeseg.runtime.segmenter import Segmenter

    out = {}
    for name, path in models.items():
        seg = Segmenter(path, threads=threads)
        b = seg.bundle
        out[f"ort/{name}"] = (name, seg, seg.runner)
        ov = OpenVINORunner(b.model_file, threads=threads, model_bytes=b.model_bytes, allow_int8_activations=True)
        out[f"ov/{name}"] = (name, seg, ov)
    fp32 = out["ort/fp32"][1]
    for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED"):
        out[f"ort-{level.split('_', 1)[1].lower()}/fp32"] = ("fp32", fp32, _OrtLevel(fp32.bundle.model_bytes, level,
                                                                                     threads))
    return out


def _accuracy(configs, samples) -> dict[str, dict]:
    """Dice vs ground truth, and agreement with the FP32 model under ONNX Runtime, per image."""
    from edgeseg.data import folders as D
    from edgeseg.runtime.metrics import dice_score

    ref_seg = configs["ort/fp32"][1]
    res = {k: {"dice": [], "agree_pixels": [], "agree_dice": []} for k in configs}
    for s in samples:
        img, gt = D.load_pair(s, 2)
        ref = ref_seg.predict(img)
        for k, (_, seg, runner) in configs.items():
            outs = runner.infer(seg.prepare([img]))
            m = seg.finish(outs, [img.shape[:2]])[0]
            res[k]["dice"].append(dice_score(m == 1, gt == 1))
            res[k]["agree_pixels"].append(float((m == ref).mean()))
            res[k]["agree_dice"].append(dice_score(m == 1, ref == 1))
    out = {}
    for k, r in res.items():
        a = {n: np.asarray(v, dtype=np.float64) for n, v in r.items()}
        out[k] = {"mean_dice": float(a["dice"].mean()), "agreement_pixels_mean": float(a["agree_pixels"].mean()),
                  "agreement_pixels_min": float(a["agree_pixels"].min()),
                  "agreement_dice_mean": float(a["agree_dice"].mean()),
                  "agreement_dice_min": float(a["agree_dice"].min()),
                  "images_agreement_dice_below_0.95": int((a["agree_dice"] < 0.95).sum())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=100, help="val images scored (all 100 by default; 0: none)")
    ap.add_argument("--configs", default=None, help="comma-separated configurations to run (default: all)")
    ap.add_argument("--name", default="runtimes_kvasir", help="result file name under benchmarks/results/")
    args = ap.parse_args()

    from edgeseg.data import folders as D
    from edgeseg.measure.machine import load_average
    from edgeseg.measure.runtimes import cpu_facts, interleave, noise_reasons
    from edgeseg.measure.timing import latency_stats
    from edgeseg.runtime.files import size_mb

    t_start = time.time()
    models = _export()
    configs = _configs(models, args.threads)
    if args.configs:
        keep = ["ort/fp32"] + [k for k in args.configs.split(",") if k != "ort/fp32"]  # the reference stays
        configs = {k: configs[k] for k in keep}  # a KeyError names an unknown configuration
    val = D.discover(DATA, "val")
    samples = val[: args.images]
    x = configs["ort/fp32"][1].prepare([D.read_image(val[0].image)])
    load0 = load_average()
    print(f"timing {len(configs)} configurations interleaved: {args.runs} rounds after {args.warmup} warm-up",
          flush=True)
    loop = interleave({k: (lambda r=r: r.infer(x)) for k, (_, _, r) in configs.items()}, args.warmup, args.runs)
    stats = {k: latency_stats(t) for k, t in loop.times.items()}
    print("scoring on", len(samples), "val images", flush=True)
    acc = _accuracy(configs, samples) if samples else {k: {} for k in configs}
    base = stats["ort/fp32"].p50_ms  # every selection keeps ort/fp32: the reference
    rows = {}
    for k, (model, seg, runner) in configs.items():
        st = stats[k]
        rows[k] = {"model": model, "runtime": runner.name, "precision": seg.bundle.precision,
                   "size_mb": size_mb(seg.bundle.model_file), "p50_ms": st.p50_ms, "p90_ms": st.p90_ms,
                   "spread_ms": st.spread_ms, "speed_vs_ort_fp32": base / st.p50_ms, **acc[k]}
    import onnxruntime
    import openvino

    res = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "command": "python benchmarks/runtimes.py " + " ".join(sys.argv[1:]),
           "teacher": str(TEACHER.relative_to(ROOT)), "data": str(DATA), "split": "val", "images": len(samples),
           "threads": args.threads, "batch": 1, "warmup": args.warmup, "runs": args.runs,
           "input": "the first val image, pre-processed by the bundle (256 x 256)",
           "versions": {"onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__},
           "cpu": cpu_facts(), "load_before": load0, "load_after": load_average(),
           "others_cores": loop.others_cores, "timed_wall_s": round(loop.wall_s, 1),
           "noisy_reason": "; ".join(noise_reasons(stats, loop.others_cores, args.threads)) or None,
           "models": {n: str(p.relative_to(ROOT)) for n, p in models.items()}, "rows": rows,
           "elapsed_s": round(time.time() - t_start, 1)}
    path = save(args.name, res)
    md = RESULTS / f"{args.name}.md"
    md.write_text(_markdown(res))
    print(path, md)
    print(md.read_text())


def _markdown(res: dict) -> str:
    f = res["cpu"]["flags"]
    lines = [f"# ONNX Runtime vs OpenVINO on the Kvasir teacher ({res['threads']} threads, batch 1)", "",
             f"`{res['command']}`, {res.get('created', '')}; CPU {res['cpu']['model']} (AVX2 {f['avx2']}, "
             f"AVX-512 {f['avx512']}, VNNI {f['vnni']}, AMX {f['amx']}); onnxruntime {res['versions']['onnxruntime']}, "
             f"openvino {res['versions']['openvino'].split('-')[0]}.",
             f"Load average {res['load_before']:.1f} before, {res['load_after']:.1f} after; other processes kept "
             f"{res['others_cores']} cores busy during the {res['timed_wall_s']} s of interleaved timing"
             + (f" (noisy: {res['noisy_reason']})." if res["noisy_reason"] else "."),
             "Latency: model-only p50 of " f"{res['runs']} interleaved rounds. Agreement: with the FP32 model's masks "
             f"under ONNX Runtime, on {res['images']} val images.", "",
             "| configuration | runtime | precision | MB | p50 ms | spread ms | speed vs ORT FP32 | Dice | "
             "agreement Dice (mean / min) | images < 0.95 |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for k, r in res["rows"].items():
        lines.append(f"| {k} | {r['runtime']} | {r['precision']} | {r['size_mb']:.1f} | {r['p50_ms']:.1f} | "
                     f"{r['spread_ms']:.1f} | {r['speed_vs_ort_fp32']:.2f}x | " + (
                         f"{r['mean_dice']:.4f} | {r['agreement_dice_mean']:.4f} / {r['agreement_dice_min']:.4f} | "
                         f"{r['images_agreement_dice_below_0.95']} |" if "mean_dice" in r else "not scored | | |"))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
