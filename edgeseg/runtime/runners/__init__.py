"""The one table of runtimes: a runtime name -> the runner that runs a model with it.

``RUNTIMES`` holds ``onnxruntime`` (the base dependency; CPU, or CUDA/TensorRT execution
providers), ``openvino`` (optional extra, CPU) and ``tensorrt`` (serialized engines built on
the device). :func:`choose_runtime` turns what the user asked for (a name, ``"auto"`` or
nothing) into one name; :func:`open_runner` builds that runner. Runner modules are imported
only when their runtime is opened, so this table never needs an optional package.

``"auto"`` takes the runtime a bundle recorded as fastest where it was made (the manifest's
``runtime.preferred``, written by ``edgeseg.measure.runtimes``) when that runtime is installed
here and runs this model (OpenVINO: not INT8 with quantized activations); otherwise the format's
own runtime (ONNX Runtime for ONNX models, TensorRT for engines).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from edgeseg.runtime.errors import EdgesegError

log = logging.getLogger(__name__)

AUTO = "auto"


@dataclass(frozen=True)
class Runtime:
    name: str
    module: str  # edgeseg.runtime.runners.<module>, imported when opened
    cls: str
    package: str  # the Python package it needs
    formats: tuple[str, ...]  # the model formats (edgeseg.runtime.formats) it opens
    install: str  # what to install when the package is missing

    def installed(self) -> bool:
        try:
            return importlib.util.find_spec(self.package) is not None
        except (ImportError, ValueError):
            return False


RUNTIMES: dict[str, Runtime] = {r.name: r for r in (
    Runtime("onnxruntime", "onnxrt", "OnnxRuntimeRunner", "onnxruntime", ("bundle", "onnx"),
            "pip install onnxruntime (or onnxruntime-gpu)"),
    Runtime("openvino", "openvino", "OpenVINORunner", "openvino", ("bundle", "onnx"),
            'pip install "edgeseg[openvino]"'),
    Runtime("tensorrt", "tensorrt", "TensorRTRunner", "tensorrt", ("engine",),
            "pip install edgeseg[tensorrt] (on Jetson: the TensorRT JetPack ships)"),
)}
CHOICES = (*RUNTIMES, AUTO)


def runtime_names(fmt: str | None = None) -> list[str]:
    """Runtimes that open models of format ``fmt`` (all when None)."""
    return [n for n, r in RUNTIMES.items() if fmt is None or fmt in r.formats]


def check_name(runtime: str) -> str:
    if runtime not in CHOICES:
        raise EdgesegError(f"unknown runtime {runtime!r}; choose one of {', '.join(CHOICES)}")
    return runtime


def recorded_runtime(info) -> str | None:
    """The runtime a manifest recorded as preferred (``runtime.preferred``), or None."""
    section = info.get("runtime") if hasattr(info, "get") else None
    pref = section.get("preferred") if isinstance(section, dict) else None
    return pref if isinstance(pref, str) else None


def int8_activations(info) -> bool:
    """The manifest describes an INT8 model with quantized activations (not weight-only), which
    the OpenVINO runner refuses (``openvino.INT8_REFUSAL``)."""
    q = info.get("quantization") if hasattr(info, "get") else None
    return bool(info.get("precision") == "int8" and not (isinstance(q, dict) and q.get("weight_only")))


def choose_runtime(requested: str | None, fmt: str, info=None) -> str:
    """The runtime that will run a model of format ``fmt``: ``requested`` (a name), or for
    None the format's default, or for ``"auto"`` the recorded preference when usable here."""
    default = runtime_names(fmt)[0]
    if requested is None:
        return default
    check_name(requested)
    if requested == AUTO:
        pref = recorded_runtime(info)
        r = RUNTIMES.get(pref) if pref else None
        usable = r is not None and fmt in r.formats and r.installed()
        if usable and not (r.name == "openvino" and int8_activations(info)):
            return r.name
        if pref:
            why = "cannot open it" if r is None or fmt not in r.formats else "is not installed or cannot run it"
            log.info("bundle prefers runtime %s, which %s here; using %s", pref, why, default)
        return default
    if fmt not in RUNTIMES[requested].formats:
        raise EdgesegError(f"runtime {requested} does not open a {fmt} model; for it use "
                           f"{' or '.join(runtime_names(fmt))}")
    return requested


def open_runner(runtime: str, model_file: str | Path, *, threads: int | None = None,
                providers: list[str] | None = None, session_config: dict | None = None,
                model_bytes: bytes | None = None):
    """Build the named runtime's runner for ``model_file`` (``model_bytes``: its verified bytes).
    ``providers`` and ``session_config`` are ONNX Runtime's; naming providers for another
    runtime is refused rather than ignored."""
    r = RUNTIMES[check_name(runtime)] if runtime != AUTO else None
    if r is None:
        raise EdgesegError("open_runner needs a runtime name; resolve 'auto' with choose_runtime first")
    cls = getattr(importlib.import_module(f"{__name__}.{r.module}"), r.cls)
    if r.name == "onnxruntime":
        return cls(model_file, providers=providers, threads=threads, session_config=session_config,
                   model_bytes=model_bytes)
    if providers and [p.lower() for p in providers] != ["cpu"]:
        raise EdgesegError(f"execution providers ({', '.join(providers)}) are ONNX Runtime's; runtime {r.name} "
                           "takes none")
    if r.name == "openvino":
        return cls(model_file, threads=threads, model_bytes=model_bytes)
    return cls(model_file)


__all__ = ["AUTO", "CHOICES", "RUNTIMES", "Runtime", "choose_runtime", "open_runner", "recorded_runtime",
           "runtime_names"]
