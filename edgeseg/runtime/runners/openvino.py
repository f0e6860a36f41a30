"""OpenVINO runner: run a bundle's ONNX file with OpenVINO's own CPU plugin (no conversion step).

The same model the ONNX Runtime runner runs: the ONNX bytes the bundle verified are read from
memory (``Core.read_model``), compiled for the CPU and run; the bundle's pre- and
post-processing and the manifest's graph checks stay the Segmenter's. ``openvino`` is an
optional extra (``pip install "edgeseg[openvino]"``), imported inside the constructor, so
importing this module never needs it; when it is missing the constructor raises one
``MissingDependency`` line naming the extra.

Compile settings: ``PERFORMANCE_HINT=LATENCY`` (one stream: batch-1 latency, what edgeseg
times), ``INFERENCE_NUM_THREADS`` when ``threads`` is given, and
``INFERENCE_PRECISION_HINT=f32``: on CPUs with AMX or AVX-512 BF16 OpenVINO would otherwise run
FP32 layers in bfloat16, and the masks would no longer be the FP32 model's. An INT8 Q/DQ graph
would run its quantized layers in INT8, but such graphs are refused (:data:`INT8_REFUSAL`:
measured masks far from the FP32 model's); a weight-only graph (DequantizeLinear on constant
weights only) runs, its masks matching ONNX Runtime's.

Thread safety: each thread gets its own infer request on the one compiled model, so one runner
may be shared by several threads (as the Segmenter promises).
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edgeseg.runtime.errors import BundleError, MissingDependency
from edgeseg.runtime.runners.base import check_batch
from edgeseg.runtime.runners.onnxrt import _check_input

INSTALL_HINT = 'pip install "edgeseg[openvino]"'
DEVICE = "CPU"
# Measured (benchmarks/runtimes.py): OpenVINO 2026.4 runs the Q/DQ graphs of edgeseg's INT8 targets
# with masks far from the FP32 model's (the attention's sequence-reduction convolutions come out
# wrong), where ONNX Runtime reproduces them. Activation-quantized graphs are refused, not run.
INT8_REFUSAL = ("OpenVINO does not reproduce this INT8 Q/DQ model (quantized activations): measured on the Kvasir "
                "teacher its masks drift far from the FP32 model's while ONNX Runtime's match "
                "(benchmarks/results/runtimes_kvasir.md); run it with --runtime onnxruntime, or give OpenVINO the "
                "FP32 or weight-only (--target cpu-weights) bundle")


def import_openvino():
    """``import openvino`` or raise MissingDependency naming the extra to install."""
    try:
        import openvino
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but a shared library is not
        detail = "" if isinstance(exc, ModuleNotFoundError) else f" ({str(exc).splitlines()[0][:200]})"
        raise MissingDependency(f"OpenVINO is not installed{detail}: {INSTALL_HINT}") from None
    return openvino


def compile_properties(threads: int | None) -> dict:
    """The CPU plugin settings this runner compiles with (see the module doc)."""
    props = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        props["INFERENCE_NUM_THREADS"] = int(threads)
    return props


def _dims(port) -> list:
    """A port's shape as the ONNX Runtime runner reports it: ints where static, None where not."""
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic:
        return None
    return [d.get_length() if d.is_static else None for d in shape]


def _dtype(port) -> str:
    return str(np.dtype(port.get_element_type().to_dtype()))


class OpenVINORunner:
    """Runs an ONNX file on OpenVINO's CPU plugin; NCHW float32 in, every output by name out."""

    def __init__(self, path: str | Path, threads: int | None = None, model_bytes: bytes | None = None,
                 properties: dict | None = None, allow_int8_activations: bool = False) -> None:
        """``model_bytes``: the model as already read (and verified) by the caller; loaded from
        memory. ``properties``: extra CPU plugin settings, applied over the defaults.
        ``allow_int8_activations``: run a graph with quantized activations anyway (benchmarks
        that measure how far its masks drift); refused by default, see :data:`INT8_REFUSAL`."""
        ov = import_openvino()
        path = Path(path)
        if model_bytes is None and not path.is_file():
            raise BundleError(f"ONNX model not found: {path}")
        self.path = path
        self.properties = {**compile_properties(threads), **dict(properties or {})}
        core = ov.Core()
        try:
            data = model_bytes if model_bytes is not None else path.read_bytes()
            self.model = core.read_model(data)
            self.compiled = core.compile_model(self.model, DEVICE, self.properties)
        except Exception as exc:  # OpenVINO raises RuntimeError / its own types with long messages
            msg = str(exc).strip().splitlines()
            text = next((ln for ln in msg if ln.strip()), type(exc).__name__)
            if "external" in " ".join(msg).lower():
                raise BundleError(f"{path.name} reads weights from a file outside its bundle (ONNX external "
                                  "data); a bundle's model must be self-contained") from None
            raise BundleError(f"OpenVINO cannot load {path.name}: {text[:300]}") from None
        fq = sum(op.get_type_name() == "FakeQuantize" for op in self.model.get_ops())
        if fq and not allow_int8_activations:
            raise BundleError(f"{path.name}: {INT8_REFUSAL}")
        self.int8_activations = fq
        self.name = "openvino-cpu"
        self.version = ov.__version__
        inputs = [SimpleNamespace(name=p.get_any_name(), shape=_dims(p), type=_dtype(p)) for p in self.model.inputs]
        _check_input(inputs, path.name)
        self.input_name = inputs[0].name
        self.input_shape = inputs[0].shape
        self.input_type = inputs[0].type
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        # name -> (element type, rank or None): what Segmenter checks against the manifest at load
        self.output_types = {o.get_any_name(): (_dtype(o), None if _dims(o) is None else len(_dims(o)))
                             for o in self.compiled.outputs}
        self._local = threading.local()

    def _request(self):
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        return req

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.compiled is None:
            raise BundleError(f"{self.path.name}: this OpenVINO runner is closed")
        batch = check_batch(batch, self.input_shape, half=self.input_type == "float16")
        res = self._request().infer({0: batch})  # copies the outputs (share_outputs=False)
        return {name: np.asarray(res[port]) for name, port in zip(self.output_names, self.compiled.outputs)}

    def metadata(self) -> dict[str, str]:
        """The ONNX file's metadata_props (OpenVINO keeps them under rt_info "framework")."""
        if self.model is None or not self.model.has_rt_info(["framework"]):
            return {}
        keys = self.model.get_rt_info(["framework"]).astype(dict)
        return {str(k): self.model.get_rt_info(["framework", k]).astype(str) for k in keys}

    def close(self) -> None:
        self.compiled = None
        self.model = None
        self._local = threading.local()
