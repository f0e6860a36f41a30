"""Export parity of the reference teacher (plain and folded) on Kvasir val, and what folding buys.

    python benchmarks/export_fold.py [--teacher benchmarks/teachers/kvasir-b0] [--threads 2]

Writes benchmarks/results/export_fold.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED, p50, save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default=str(ROOT / "benchmarks/teachers/kvasir-b0"))
    ap.add_argument("--data", default=str(SHARED / "kvasir-seg"))
    ap.add_argument("--split", default="val")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=100)
    a = ap.parse_args()

    import torch

    from edgeseg.data import folders as D
    from edgeseg.export.onnx import ExportConfig
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.fold import decode_head_macs, fold_decode_head
    from edgeseg.model.checkpoint import load_checkpoint
    from edgeseg.prune import count_macs_params
    from edgeseg.runners import open_model, torch_segmenter

    torch.set_num_threads(a.threads)
    model, meta = load_checkpoint(a.teacher)
    h, w = meta.preprocess.height, meta.preprocess.width
    samples = D.discover(a.data, a.split)
    images = [D.read_image(s.image) for s in samples[:16]]
    folded = fold_decode_head(copy.deepcopy(model))
    res = {"teacher": a.teacher, "data": a.data, "split": a.split, "images": len(samples), "input": [h, w],
           "macs": {"plain": count_macs_params(model, h, w)[0], "folded": count_macs_params(folded, h, w)[0]},
           "decode_head_macs": {"plain": decode_head_macs(model, h, w), "folded": decode_head_macs(folded, h, w)},
           "latency_ms": {"torch_eager_fp32": p50(torch_segmenter(model, meta), images, a.threads, runs=a.runs)}}
    with tempfile.TemporaryDirectory() as td:
        for name, fold in (("plain", False), ("folded", True)):
            out = Path(td) / name
            _, rep = export_bundle(a.teacher, out, ExportConfig(fold=fold), data=a.data, split=a.split, limit=0)
            res[f"parity_{name}"] = rep
            res["latency_ms"][f"onnxruntime_fp32_{name}"] = p50(open_model(out, threads=a.threads), images,
                                                                a.threads, runs=a.runs)
            res[f"onnx_size_mb_{name}"] = (out / "model.onnx").stat().st_size / 1e6
    lat = res["latency_ms"]
    res["fold_flops_ratio"] = res["macs"]["plain"] / res["macs"]["folded"]
    res["fold_latency_speedup"] = lat["onnxruntime_fp32_plain"]["model"]["p50_ms"] / lat["onnxruntime_fp32_folded"]["model"]["p50_ms"]
    res["command"] = "python benchmarks/export_fold.py " + " ".join(sys.argv[1:])
    print(save("export_fold", res))
    for k in ("parity_plain", "parity_folded"):
        r = res[k]
        print(k, f"mask agreement {r['mask_agreement']:.6f}  max|dlogit| {r['max_abs_logit_diff']:.2e}  "
                 f"Dice diff {r['dice_diff']:.5f}")
    print("GFLOPs plain/folded", 2 * res["macs"]["plain"] / 1e9, 2 * res["macs"]["folded"] / 1e9,
          "ORT p50 plain/folded", lat["onnxruntime_fp32_plain"]["model"]["p50_ms"],
          lat["onnxruntime_fp32_folded"]["model"]["p50_ms"])


if __name__ == "__main__":
    main()
