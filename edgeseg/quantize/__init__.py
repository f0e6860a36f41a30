"""INT8 quantization of an exported ONNX model or bundle (toolkit half).

One entry point, :func:`quantize` (file to file: FP32 bundle or ONNX in, INT8 out), over:

- ``targets``     the table of INT8 targets (``cpu``, ``tensorrt``, ``cpu-weights``): :data:`TARGETS`;
- ``static``      calibrated static Q/DQ INT8 (:class:`Int8Quantizer`: calibrate once, re-quantize fast);
- ``weight_only`` INT8 weight storage with float activations (:func:`weight_only_int8`);
- ``graph``       the ONNX helpers they share; ``stage`` the file-to-file stage and the INT8 manifest.

Calibration images are read by :mod:`edgeseg.data.calibration`; the TensorRT Q/DQ rules live in
:mod:`edgeseg.export.qdq_rules` (``check_tensorrt_qdq`` here is that validator).

The names below are this package's public API; compress, the CLI and the benchmarks import
them from here. They are loaded on first use, so reading the target table (as the CLI's help
does) does not import onnxruntime.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "quantize": "edgeseg.quantize.stage",
    "int8_manifest": "edgeseg.quantize.stage",
    "DEFAULT_METHOD": "edgeseg.quantize.stage",
    "DEFAULT_CALIB_COUNT": "edgeseg.quantize.stage",
    "TARGETS": "edgeseg.quantize.targets",
    "QuantRecipe": "edgeseg.quantize.targets",
    "target_names": "edgeseg.quantize.targets",
    "get_target": "edgeseg.quantize.targets",
    "Int8Quantizer": "edgeseg.quantize.static",
    "CALIBRATION_METHODS": "edgeseg.quantize.static",
    "CalibrationReader": "edgeseg.quantize.static",
    "weight_only_int8": "edgeseg.quantize.weight_only",
    "WEIGHT_ONLY_SESSION_CONFIG": "edgeseg.quantize.weight_only",
    "group_of": "edgeseg.quantize.graph",
    "load_calibration": "edgeseg.data.calibration",
    "check_tensorrt_qdq": "edgeseg.export.qdq_rules",
}
_RENAMED = {"check_tensorrt_qdq": "tensorrt_qdq_problems"}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeseg.quantize' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))
