"""The one small interface every backend implements (the Polygraphy pattern: one class per
backend, no if/elif "auto backend"). ``bench`` and export validation take any runner, so torch,
ONNX Runtime and TensorRT are compared by one function.

Runners here: ``onnxrt.OnnxRuntimeRunner`` (CPU, CUDA, OpenVINO or TensorRT execution
providers) and ``tensorrt.TensorRTRunner`` (serialized engines). The torch runner lives in the
toolkit half (``edgeseg.runners.TorchRunner``). Which runner opens which file is the format
table in ``edgeseg.runtime.formats``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Runner(Protocol):
    name: str  # e.g. "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt", "torch-cpu"

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """NCHW float32 in; every graph output by name out."""
        ...

    def close(self) -> None:
        ...
