"""The one small interface every backend implements (the Polygraphy pattern: one class per
backend, no if/elif "auto backend"). ``bench`` and export validation take any runner, so torch,
ONNX Runtime and TensorRT are compared by one function.

Runners here: ``onnxrt.OnnxRuntimeRunner`` (CPU, CUDA, OpenVINO or TensorRT execution
providers), ``openvino.OpenVINORunner`` (OpenVINO's own CPU plugin) and
``tensorrt.TensorRTRunner`` (serialized engines); ``edgeseg.runtime.runners.RUNTIMES`` maps a
runtime name to its runner. The torch runner lives in the
toolkit half (``edgeseg.runners.TorchRunner``). Which runner opens which file is the format
table in ``edgeseg.runtime.formats``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from edgeseg.runtime.errors import InputError


@runtime_checkable
class Runner(Protocol):
    name: str  # e.g. "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt", "torch-cpu"

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """NCHW float32 in; every graph output by name out."""
        ...

    def close(self) -> None:
        ...


def check_batch(batch, input_shape, half: bool = False) -> np.ndarray:
    """An NCHW batch as a runner receives it, checked against the graph's input shape and made
    contiguous float32 (float16 when ``half``). Shared by the ONNX Runtime and OpenVINO runners."""
    if not isinstance(batch, np.ndarray) or batch.ndim != 4:
        raise InputError(f"expected an NCHW array, got {getattr(batch, 'shape', type(batch).__name__)}")
    if batch.dtype.kind not in "fiu" or batch.dtype.kind == "f" and batch.dtype.itemsize > 8:
        raise InputError(f"expected a float32 NCHW array, got dtype {batch.dtype}")
    if batch.shape[0] == 0:
        raise InputError("empty batch: the NCHW array holds no image")
    batch = batch.astype(np.float16) if half else np.ascontiguousarray(batch, dtype=np.float32)
    for i, (want, got) in enumerate(zip(input_shape, batch.shape)):
        if isinstance(want, int) and want != got and not (i == 0 and want == 1):  # batch 1: see per_image
            raise InputError(f"model input dimension {i} is fixed at {want}, got {got}")
    return batch


def per_image(run, batch: np.ndarray, fixed_batch) -> dict[str, np.ndarray]:
    """``run(batch)``, or for a graph exported with a static batch of 1 (``edgeseg export
    --static-batch``) and a larger batch, ``run`` image by image with the outputs concatenated."""
    if fixed_batch != 1 or batch.shape[0] == 1:
        return run(batch)
    outs = [run(batch[i:i + 1]) for i in range(batch.shape[0])]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
