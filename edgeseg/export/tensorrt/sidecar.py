"""The sidecar JSON written next to a TensorRT engine (``model.engine`` -> ``model.engine.json``).

An engine holds no edgeseg metadata (nothing is ever prepended to its bytes), so everything a
device needs to use it goes here, copied from the bundle's manifest: pre-processing, classes,
colours, outputs and the drift statistics (``input_stats``, so that the runtime's input-drift
guard works on engines as on bundles), plus how the engine was built and from what.

Every builder writes its sidecar with :func:`sidecar_content` (``export/build_engine.py`` and
``export/jetson_build.sh`` load this file by path, so it imports only the standard library).
The one reader is the runtime's (``edgeseg.runtime.runners.tensorrt.read_sidecar``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

SIDECAR_FORMAT = "edgeseg-tensorrt-engine"
SIDECAR_VERSION = 1
SIDECAR_SUFFIX = ".json"  # appended to the engine's file name
# copied from the manifest as they are when present (the runtime reads them like a manifest's)
FROM_MANIFEST = ("colors", "input_stats", "intensity", "temperature", "uncertainty")
# every sidecar has these keys, whichever builder wrote it
FIELDS = ("format", "sidecar_version", "engine", "engine_sha256", "preprocess", "classes", "outputs", "precision",
          "tensorrt", "gpu", "dla_core", "gpu_fallback", "profile", "source", "built_at", "built_with")


def sidecar_name(engine_name: str) -> str:
    return engine_name + SIDECAR_SUFFIX


def sidecar_content(manifest: dict, bundle_path: str | Path, plan: Any, profile: dict, input_name: str,
                    engine_sha256: str, gpu: dict | None = None, built_at: float | None = None,
                    engine_name: str | None = None, gpu_fallback: bool = True,
                    built_with: str = "edgeseg") -> dict:
    """The sidecar of an engine built from the bundle at ``bundle_path`` whose manifest (the JSON
    of ``edgeseg.json``, as a dict) is ``manifest``. ``plan`` is a :class:`.rules.BuildPlan`;
    ``profile`` maps min/opt/max to NCHW shapes."""
    m = manifest
    t = time.gmtime(time.time() if built_at is None else built_at)
    side = {
        "format": SIDECAR_FORMAT,
        "sidecar_version": SIDECAR_VERSION,
        "engine": engine_name,
        "engine_sha256": engine_sha256,
        "preprocess": dict(m["preprocess"]),
        "classes": list(m["classes"]),
        "outputs": [dict(o) for o in m["outputs"]],
        "precision": plan.precision,
        "tensorrt": {
            "version": ".".join(map(str, plan.trt_version)),
            "strongly_typed": plan.strongly_typed,
            "network_flags": list(plan.network_flags),
            "builder_flags": list(plan.builder_flags),
        },
        "gpu": dict(gpu or {}),
        "dla_core": plan.dla_core,
        "gpu_fallback": bool(gpu_fallback) if plan.dla_core is not None else None,
        "profile": {"input": input_name, **{k: list(v) for k, v in profile.items()}},
        "source": {
            "bundle": str(Path(bundle_path).resolve()),
            "model": m["model"],
            "model_sha256": m["files"][m["model"]],
            "manifest_sha256": m.get("manifest_sha256"),
            "bundle_precision": m.get("precision"),
            "onnx_precision": plan.model_precision,
        },
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", t),
        "built_with": built_with,
    }
    for key in FROM_MANIFEST:
        if m.get(key) is not None:
            side[key] = m[key]
    return side


def jetson_model() -> str | None:
    """The board name from the device tree (a Jetson's GPU name when no CUDA library says it)."""
    model = Path("/proc/device-tree/model")
    try:
        if model.is_file():
            return model.read_bytes().split(b"\0", 1)[0].decode("utf-8", "replace").strip() or None
    except OSError:
        pass
    return None
