"""TensorRT engines from bundles, built on the device that will run them.

An engine is specific to the GPU model and the TensorRT version that built it, so it is built
on the target (a Jetson, say), never shipped; what the device needs besides the engine goes in
a sidecar JSON next to it. One concept per module:

- :mod:`.rules`: THE table of build rules (precisions, suffixes, TensorRT versions, DLA,
  profile shapes, ``plan_build``, trtexec flags); stdlib-only, also loaded by the scripts in
  ``export/``;
- :mod:`.sidecar`: what the sidecar holds (format, version, fields, drift statistics);
  stdlib-only, shared the same way. The one reader is the runtime's;
- :mod:`.onnx_info`: the ONNX's input, outputs, precision and Q/DQ problems (needs onnx);
- :mod:`.build`: :func:`build_engine` (imports tensorrt inside);
- ``__main__``: ``python3 -m edgeseg.export.tensorrt BUNDLE -o model.engine``.
"""

from edgeseg.export.tensorrt.build import build_engine, default_engine_path
from edgeseg.export.tensorrt.onnx_info import OnnxInfo, inspect_onnx
from edgeseg.export.tensorrt.rules import (ENGINE_SUFFIXES, MIN_TRT_MAJOR, PRECISIONS, BuildPlan, dla_availability,
                                           normalize_precision, parse_batch, plan_build, profile_shapes)
from edgeseg.export.tensorrt.sidecar import SIDECAR_FORMAT, SIDECAR_VERSION, sidecar_content

__all__ = ["build_engine", "default_engine_path", "OnnxInfo", "inspect_onnx", "ENGINE_SUFFIXES", "MIN_TRT_MAJOR",
           "PRECISIONS", "BuildPlan", "dla_availability", "normalize_precision", "parse_batch", "plan_build",
           "profile_shapes", "SIDECAR_FORMAT", "SIDECAR_VERSION", "sidecar_content"]
