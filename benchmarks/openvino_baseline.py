"""OpenVINO FP32 and OpenVINO + NNCF INT8 (post-training, defaults) of the unmodified teacher:
the comparison row the bench issue asks for "if it installs here". OpenVINO is not an edgeseg
dependency, so this runs in three steps across two environments:

    python benchmarks/openvino_baseline.py prepare            # edgeseg venv: inputs -> runs/ov/inputs.npz
    OV_PY run                                                 # a venv with only `pip install openvino nncf`
    python benchmarks/openvino_baseline.py score              # edgeseg venv: Dice on the Kvasir test split

where OV_PY is e.g. `/tmp/ovenv/bin/python benchmarks/openvino_baseline.py`. Latency: model-only,
batch 1, 2 inference threads, p50 of 100 runs after 10 warm-up. Writes
benchmarks/results/openvino_kvasir.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "ov"
ONNX = ROOT / "runs" / "compare" / "kvasir" / "ort_fp32_plain" / "model.onnx"
DATA = ROOT.parent / "shared" / "data" / "kvasir-seg"


def prepare() -> None:
    from edgeseg.data import folders as D
    from edgeseg.model.checkpoint import read_meta
    from edgeseg.quantize import load_calibration
    from edgeseg.runtime.preprocess import preprocess

    meta = read_meta(ROOT / "benchmarks/teachers/kvasir-b0")
    calib, info = load_calibration(DATA, meta.preprocess, count=64, split="calibration")
    test = D.discover(DATA, "test")
    x = np.stack([preprocess(D.read_image(s.image), meta.preprocess) for s in test])
    WORK.mkdir(parents=True, exist_ok=True)
    np.savez(WORK / "inputs.npz", calib=calib, test=x, names=np.array([s.name for s in test]))
    print(WORK / "inputs.npz", calib.shape, x.shape)


def run() -> None:
    import nncf
    import openvino as ov

    d = np.load(WORK / "inputs.npz")
    core = ov.Core()
    fp32 = ov.convert_model(str(ONNX))
    int8 = nncf.quantize(fp32, nncf.Dataset(list(d["calib"][:, None])))  # NNCF defaults
    res = {"openvino": ov.__version__, "nncf": nncf.__version__, "threads": 2}
    outs = {}
    for name, model in (("openvino_fp32", fp32), ("openvino_nncf_int8", int8)):
        cm = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY"})
        req = cm.create_infer_request()
        x0 = d["test"][:1]
        for _ in range(10):
            req.infer({0: x0})
        ts = []
        for _ in range(100):
            t0 = time.perf_counter_ns()
            req.infer({0: x0})
            ts.append(time.perf_counter_ns() - t0)
        t = np.asarray(ts) / 1e6
        p50 = float(np.median(t))
        res[name] = {"p50_ms": p50, "p90_ms": float(np.percentile(t, 90)), "p99_ms": float(np.percentile(t, 99)),
                     "spread_ms": float(1.4826 * np.median(np.abs(t - p50)))}
        outs[name] = np.concatenate([req.infer({0: x[None]})[cm.output(0)] for x in d["test"]])
        if name == "openvino_nncf_int8":
            path = WORK / "int8.xml"
            ov.save_model(model, str(path))
            res[name]["size_mb"] = (path.with_suffix(".bin").stat().st_size + path.stat().st_size) / 1e6
        else:
            path = WORK / "fp32.xml"
            ov.save_model(model, str(path), compress_to_fp16=False)
            res[name]["size_mb"] = (path.with_suffix(".bin").stat().st_size + path.stat().st_size) / 1e6
    np.savez(WORK / "outputs.npz", **outs)
    (WORK / "timing.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


def score() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import distribution, save

    from edgeseg.data import folders as D
    from edgeseg.runtime.metrics import dice_score
    from edgeseg.runtime.preprocess import postprocess

    names = list(np.load(WORK / "inputs.npz")["names"])
    outs = np.load(WORK / "outputs.npz")
    timing = json.loads((WORK / "timing.json").read_text())
    ref = json.loads((ROOT / "benchmarks/results/compress_kvasir.json").read_text())["per_image_dice"]["pytorch_eager_fp32"]
    samples = {s.name: s for s in D.discover(DATA, "test")}
    res = {"data": str(DATA), "split": "test", "onnx": str(ONNX), "timing": timing, "models": {}}
    for name in outs.files:
        dice = {}
        for n, logits in zip(names, outs[name]):
            img, gt = D.load_pair(samples[n])
            dice[n] = dice_score(postprocess(logits, *gt.shape) == 1, gt == 1)
        drops = {k: ref[k] - v for k, v in dice.items()}
        res["models"][name] = {"mean_dice": float(np.mean(list(dice.values()))), **timing[name],
                               "drop_vs_teacher": distribution(drops.values())}
    res["command"] = "prepare / run (openvino venv) / score: python benchmarks/openvino_baseline.py"
    print(save("openvino_kvasir", res))
    print(json.dumps(res["models"], indent=2))


if __name__ == "__main__":
    {"prepare": prepare, "run": run, "score": score}[sys.argv[1]]()
