"""What ONNX Runtime's INT8 defaults give, for benchmarks only (not part of the package).

- :func:`quantize_dynamic_baseline`: dynamic INT8 as ``optimum-cli onnxruntime quantize`` makes it;
- :func:`quantize_static_baseline`: static Q/DQ INT8 with ``quantize_static``'s defaults.

Both keep the source's edgeseg metadata (stamped int8, with how they were made), so the
benchmark tools open them like edgeseg's own INT8 models. edgeseg's INT8 targets are in
``edgeseg.quantize`` (``edgeseg quantize``); these exist to compare against.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.errors import ModelError
from edgeseg.quantize.graph import edgeseg_meta, image_input, load_onnx, mark_int8, save_model
from edgeseg.quantize.static import CalibrationReader


def _restamp(out: Path, meta: dict | None, quant: dict) -> Path:
    import onnx

    m = onnx.load(str(out))
    mark_int8(m, meta, quant)
    return save_model(m, out)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else repr(exc)


def quantize_dynamic_baseline(fp32: str | Path, out: str | Path) -> Path:
    """Dynamic INT8 as ``optimum-cli onnxruntime quantize --avx512`` makes it.

    That is ORT's ``quantize_dynamic`` with int8 symmetric per-tensor weights, no reduced range,
    on MatMul only (optimum's default operator list is MatMul and Add, and Add has no dynamic
    kernel); activations are quantized at run time, Convs stay float.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    meta = edgeseg_meta(load_onnx(fp32))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        quantize_dynamic(Path(fp32), out, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         per_channel=False, reduce_range=False)
    except Exception as exc:
        raise ModelError(f"dynamic quantization failed: {_first_line(exc)}") from exc
    return _restamp(out, meta, {"baseline": "onnxruntime quantize_dynamic", "weights": "QInt8", "per_channel": False,
                                "op_types": ["MatMul"]})


def quantize_static_baseline(fp32: str | Path, out: str | Path, calib: np.ndarray) -> Path:
    """Static QDQ INT8 with ONNX Runtime's defaults: ``quantize_static`` with MinMax calibration,
    int8 asymmetric activations, int8 per-tensor weights, every op type it can quantize
    (LayerNormalization, Softmax, Resize, Transpose, ... included), no pre-processing."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    src = load_onnx(fp32)
    meta = edgeseg_meta(src)
    name, _ = image_input(src)
    reader = CalibrationReader(np.asarray(calib), 1, name)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        quantize_static(Path(fp32), out, reader, quant_format=QuantFormat.QDQ,
                        calibrate_method=CalibrationMethod.MinMax)
    except Exception as exc:
        raise ModelError(f"static quantization failed: {_first_line(exc)}") from exc
    return _restamp(out, meta, {"baseline": "onnxruntime quantize_static", "calibration": {"method": "minmax"},
                                "activations": "QInt8", "weights": "QInt8", "per_channel": False,
                                "calibration_images": int(reader.data.shape[0])})
