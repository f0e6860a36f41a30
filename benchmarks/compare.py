"""Issue-5 comparison: edgeseg bundles against what users pick today, through `edgeseg bench`.

Models (all from the same teacher checkpoint):
  - transformers + PyTorch eager FP32 (the reference row)
  - ONNX Runtime FP32 of the plain export (no folding)
  - ONNX Runtime static INT8 with default options (quantize_static, QDQ, min-max)
  - ONNX Runtime dynamic INT8 (what `optimum-cli onnxruntime quantize` produces: MatMul only)
  - edgeseg bundles given with --bundle (e.g. the folded FP32 export and compressed bundles)

    python benchmarks/compare.py --name kvasir --teacher benchmarks/teachers/kvasir-b0 \
        --data ../shared/data/kvasir-seg --split test --bundle runs/kvasir_compressed/bundle \
        --bundle runs/kvasir_compressed/stages/export

Writes benchmarks/results/compare_NAME.{json,csv,md} and PNG plots. OpenVINO + NNCF are measured
separately by benchmarks/openvino_baseline.py (they are not edgeseg dependencies).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, SHARED  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="kvasir")
    ap.add_argument("--teacher", default=str(ROOT / "benchmarks/teachers/kvasir-b0"))
    ap.add_argument("--data", default=str(SHARED / "kvasir-seg"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--calib-split", default="calibration")
    ap.add_argument("--bundle", action="append", default=[])
    ap.add_argument("--work", default=str(ROOT / "runs/compare"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=50)
    a = ap.parse_args()

    import torch

    from edgeseg.measure.bench import BenchConfig, bench
    from edgeseg.export.onnx import ExportConfig
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.model.checkpoint import load_checkpoint
    from edgeseg.quantize import load_calibration
    from ort_baselines import quantize_dynamic_baseline, quantize_static_baseline
    from edgeseg.measure.report import write_report
    from edgeseg.runtime.bundle import read_bundle, write_bundle

    torch.set_num_threads(a.threads)
    work = Path(a.work) / a.name
    work.mkdir(parents=True, exist_ok=True)
    _, meta = load_checkpoint(a.teacher)
    plain = work / "ort_fp32_plain"
    if not plain.exists():
        export_bundle(a.teacher, plain, ExportConfig(fold=False), data=a.data, split="val" if a.split != "val" else None,
                      limit=8)
    calib_split = a.calib_split if (Path(a.data) / "splits" / f"{a.calib_split}.txt").is_file() else "train"
    calib, _ = load_calibration(a.data, meta.preprocess, count=64, split=calib_split)
    src = read_bundle(plain)
    for name, fn in (("ort_static_int8_default", lambda o: quantize_static_baseline(src.model_file, o, calib)),
                     ("ort_dynamic_int8", lambda o: quantize_dynamic_baseline(src.model_file, o))):
        d = work / name
        if not d.exists():
            q = fn(work / f"{name}.onnx")
            write_bundle(d, {"model.onnx": q}, src.manifest.derive(precision="int8", baseline=name))
    models = [a.teacher, plain, work / "ort_static_int8_default", work / "ort_dynamic_int8", *a.bundle]
    cfg = BenchConfig(runs=a.runs, warmup=5, threads=a.threads, batch_sizes=(1, 4))
    result = bench(models, a.data, a.split, reference=a.teacher, config=cfg, progress=True)
    result["command"] = "python benchmarks/compare.py " + " ".join(sys.argv[1:])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"compare_{a.name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    files = write_report(result, RESULTS / f"compare_{a.name}")
    print("\n".join(str(p) for p in files.values()))


if __name__ == "__main__":
    main()
