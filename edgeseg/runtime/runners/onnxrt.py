"""ONNX Runtime runner (CPU by default; CUDA / TensorRT execution providers where installed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeseg.runtime.errors import BundleError, EdgesegError
from edgeseg.runtime.runners.base import check_batch, per_image

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise EdgesegError("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)") from None
    return onnxruntime


def resolve_providers(providers: list[str] | None) -> list[str]:
    ort = _ort()
    available = ort.get_available_providers()
    if not providers:
        return ["CPUExecutionProvider"]
    out = []
    for p in providers:
        name = PROVIDER_ALIASES.get(p.lower(), p)
        if name not in available:
            raise EdgesegError(f"execution provider {p!r} is not available here; available: {', '.join(available)}")
        out.append(name)
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")
    return out


class OnnxRuntimeRunner:
    """Runs an ONNX file. ``infer`` takes NCHW float32 and returns every graph output by name.

    One InferenceSession; ``run`` is safe to call from several threads at once (ORT's rule).
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None,
                 inter_op_threads: int | None = 1, session_config: dict | None = None,
                 model_bytes: bytes | None = None) -> None:
        """``model_bytes``: the model as already read (and verified) by the caller; loaded from
        memory, so a model that refers to external data files cannot reach them."""
        ort = _ort()
        path = Path(path)
        if model_bytes is None and not path.is_file():
            raise BundleError(f"ONNX model not found: {path}")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = int(threads)
        if inter_op_threads:
            so.inter_op_num_threads = int(inter_op_threads)
        so.log_severity_level = 3
        self.session_config = dict(session_config or {})
        for key, value in self.session_config.items():  # e.g. what a weight-only INT8 bundle asks for
            so.add_session_config_entry(str(key), str(value))
        self.providers = resolve_providers(providers)
        try:
            src = model_bytes if model_bytes is not None else str(path)
            self.session = ort.InferenceSession(src, sess_options=so, providers=self.providers)
        except Exception as exc:  # ORT raises its own Fail / InvalidGraph / InvalidProtobuf types
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if model_bytes is not None and "external" in msg.lower():
                raise BundleError(f"{path.name} reads weights from a file outside its bundle (ONNX external "
                                  "data); a bundle's model must be self-contained") from None
            raise BundleError(f"cannot load ONNX model {path.name}: {msg[:300]}") from None
        self.path = path
        self.name = "onnxruntime-" + self.session.get_providers()[0].replace("ExecutionProvider", "").lower()
        inputs = self.session.get_inputs()
        _check_input(inputs, path.name)
        inp = inputs[0]
        self.input_name = inp.name
        self.input_shape = inp.shape
        self.input_type = inp.type
        self.output_names = [o.name for o in self.session.get_outputs()]
        # name -> (element type, rank or None): what Segmenter checks against the manifest at load
        self.output_types = {o.name: (elem_type(o.type), len(o.shape) if o.shape is not None else None)
                             for o in self.session.get_outputs()}

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = check_batch(batch, self.input_shape, half=self.input_type == "tensor(float16)")
        return per_image(lambda b: dict(zip(self.output_names, self.session.run(None, {self.input_name: b}))),
                         batch, self.input_shape[0])

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def close(self) -> None:
        self.session = None


def elem_type(ort_type: str) -> str:
    """'tensor(float)' -> 'float32', 'tensor(uint8)' -> 'uint8' (numpy's names)."""
    t = ort_type.removeprefix("tensor(").removesuffix(")")
    return {"float": "float32", "double": "float64"}.get(t, t)


def _check_input(inputs, name: str) -> None:
    """An edgeseg model takes exactly one 4-D float (NCHW, 3 channels) tensor; anything else is
    refused when the model is opened, not at the first prediction."""
    if len(inputs) != 1:
        raise BundleError(f"{name} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); an edgeseg model "
                          "takes exactly one NCHW float image tensor")
    inp = inputs[0]
    rank = len(inp.shape) if inp.shape is not None else None
    if rank != 4:
        raise BundleError(f"{name}: input '{inp.name}' is {rank}-D; expected a 4-D NCHW float tensor")
    if elem_type(inp.type) not in ("float32", "float16"):
        raise BundleError(f"{name}: input '{inp.name}' is {elem_type(inp.type)}; expected a float32 (or float16) "
                          "NCHW tensor (edgeseg normalises images itself)")
    if isinstance(inp.shape[1], int) and inp.shape[1] != 3:
        raise BundleError(f"{name}: input '{inp.name}' takes {inp.shape[1]} channels; expected 3 channels (RGB)")


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
