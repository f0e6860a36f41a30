"""OpenVINO runner: run a bundle's ONNX file with OpenVINO's own CPU plugin (no conversion step).

The same model the ONNX Runtime runner runs: the ONNX bytes the bundle verified are read from
memory (``Core.read_model``), compiled for the CPU and run; the bundle's pre- and
post-processing and the manifest's graph checks stay the Segmenter's. ``openvino`` is an
optional extra (``pip install "edgeseg[openvino]"``), imported inside the constructor, so
importing this module never needs it; when it is missing the constructor raises one
``MissingDependency`` line naming the extra.

Compile settings: the input's batch fixed at 1 for batch-1 calls (static shapes: measured about
2x faster than the dynamic batch here; other batch sizes compile the graph as exported on first
use), ``PERFORMANCE_HINT=LATENCY`` (one stream: batch-1 latency, what edgeseg times),
``INFERENCE_NUM_THREADS`` when ``threads`` is given, and
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
from edgeseg.runtime.runners.base import check_batch, per_image
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


def _batch_of_one(ov, model):
    """A copy of ``model`` with its input's batch fixed at 1, or ``model`` itself when the batch
    is fixed already or the graph cannot be reshaped. Measured (benchmarks/runtimes.py): OpenVINO
    runs the Kvasir teacher about 2x faster with static shapes than with a dynamic batch."""
    shape = model.inputs[0].get_partial_shape()
    if shape.rank.is_dynamic or shape[0].is_static:
        return model
    one = model.clone()
    try:
        one.reshape({one.inputs[0].get_any_name(): ov.PartialShape([ov.Dimension(1), *list(shape)[1:]])})
    except Exception:  # noqa: BLE001 - a graph with a batch baked into a Reshape: keep it dynamic
        return model
    return one


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
            one = _batch_of_one(ov, self.model)
            self.compiled = core.compile_model(one, DEVICE, self.properties)  # what batch-1 calls run
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError / its own types
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
        self.batch_of_one = one is not self.model  # batch-1 calls run a graph compiled for exactly 1
        self._core, self._any_batch, self._lock = core, None if self.batch_of_one else self.compiled, threading.Lock()
        self._local = threading.local()

    def _compiled_for(self, n: int):
        """Batch 1: the graph compiled for batch 1; other sizes: the graph as exported (batch
        dynamic), compiled on first use."""
        if n == 1 or self._any_batch is not None:
            return self.compiled if n == 1 else self._any_batch
        with self._lock:
            if self._any_batch is None:
                self._any_batch = self._core.compile_model(self.model, DEVICE, self.properties)
        return self._any_batch

    def _request(self, compiled):
        reqs = self._local.__dict__.setdefault("requests", {})
        if id(compiled) not in reqs:
            reqs[id(compiled)] = compiled.create_infer_request()
        return reqs[id(compiled)]

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.compiled is None:
            raise BundleError(f"{self.path.name}: this OpenVINO runner is closed")
        batch = check_batch(batch, self.input_shape, half=self.input_type == "float16")
        return per_image(self._run, batch, self.input_shape[0])

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        compiled = self._compiled_for(batch.shape[0])
        res = self._request(compiled).infer({0: batch})  # copies the outputs (share_outputs=False)
        return {name: np.asarray(res[port]) for name, port in zip(self.output_names, compiled.outputs)}

    def metadata(self) -> dict[str, str]:
        """The ONNX file's metadata_props (OpenVINO keeps them under rt_info "framework")."""
        if self.model is None or not self.model.has_rt_info(["framework"]):
            return {}
        keys = self.model.get_rt_info(["framework"]).astype(dict)
        return {str(k): self.model.get_rt_info(["framework", k]).astype(str) for k in keys}

    def close(self) -> None:
        self.compiled = self._any_batch = None
        self.model = None
        self._local = threading.local()
