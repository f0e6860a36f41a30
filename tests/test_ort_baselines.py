import pytest
"""The benchmark-only ONNX Runtime baselines (benchmarks/ort_baselines.py): they run, keep the
edgeseg metadata, agree with FP32, and ORT's default static INT8 is not TensorRT-ready."""

import sys
from pathlib import Path

import onnx
import onnxruntime as ort

from edgeseg.data.calibration import load_calibration
from edgeseg.export.onnx import export_onnx, get_metadata
from edgeseg.model.variants import build_model
from edgeseg.quantize import check_tensorrt_qdq
from edgeseg.runtime.preprocess import Preprocess

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from ort_baselines import quantize_dynamic_baseline, quantize_static_baseline  # noqa: E402

SIZE = 64
PP = Preprocess(SIZE, SIZE)


def _agree(fp32, q, x) -> float:
    s0 = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    s1 = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
    return float((s0.run(None, {"pixel_values": x})[0].argmax(1) == s1.run(None, {"pixel_values": x})[0].argmax(1)).mean())


@pytest.mark.slow
def test_baselines(embedded, tmp_path):
    meta = {"preprocess": PP.to_dict(), "classes": ["background", "lesion"]}
    fp32 = export_onnx(build_model("tiny").eval(), tmp_path / "tiny.onnx", SIZE, SIZE, metadata=meta)
    x, _ = load_calibration(embedded, PP, count=16, split="calibration")
    test = load_calibration(embedded, PP, count=16, split="test", allow_few=True)[0]
    dyn = quantize_dynamic_baseline(fp32, tmp_path / "dyn.onnx")
    st = quantize_static_baseline(fp32, tmp_path / "st.onnx", x)
    for out in (dyn, st):
        meta = get_metadata(onnx.load(str(out)))
        assert meta["precision"] == "int8" and meta["quantization"]["baseline"].startswith("onnxruntime")
        assert _agree(fp32, out, test) > 0.80
    # ORT's default static INT8 uses asymmetric int8 activations: not TensorRT-ready
    assert any("non-zero zero point" in p for p in check_tensorrt_qdq(st))
