"""Weight-only INT8 (the ``cpu-weights`` target): INT8 weight storage, float activations.

Each Conv/MatMul weight W becomes int8 W_q + a float scale per output channel + a
DequantizeLinear (symmetric: zero point 0). Loaded with :data:`WEIGHT_ONLY_SESSION_CONFIG`,
ONNX Runtime folds each DequantizeLinear once at load time, so the model runs at FP32 speed
from a file about 4x smaller, with no calibration and only the weights' rounding error. It is
for CPUs where INT8 activations are not faster (measured: see benchmarks/README.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.errors import ModelError
from edgeseg.quantize.graph import edgeseg_meta, load_onnx, mark_int8, save_model
from edgeseg.quantize.targets import TARGETS

__all__ = ["WEIGHT_ONLY_SESSION_CONFIG", "weight_only_int8"]

_RECIPE = TARGETS["cpu-weights"]
# ONNX Runtime session settings a weight-only model needs to run at float speed: with QDQ
# handling off, every DequantizeLinear of a constant weight is folded once at load time.
WEIGHT_ONLY_SESSION_CONFIG = _RECIPE.session_config


def _weight_users(m) -> dict[str, list[tuple[str, int]]]:
    users: dict[str, list] = {}
    for n in m.graph.node:
        for k, name in enumerate(n.input):
            users.setdefault(name, []).append((n.op_type, k))
    return users


def weight_only_int8(fp32: str | Path, out: str | Path, min_size: int = 256) -> Path:
    """Write ``fp32`` (an ONNX file) to ``out`` with its Conv/MatMul weights stored in INT8.

    Only float32 weights of at least ``min_size`` values, used solely as the weight input of
    ops of one type (Conv or MatMul), are converted; the scale runs along the output channels
    (Conv: axis 0; MatMul's (K, N): the last axis). Raises ModelError when nothing qualifies.
    Returns ``out``.
    """
    from onnx import helper, numpy_helper

    m = load_onnx(fp32)
    meta = edgeseg_meta(m)
    users = _weight_users(m)
    ops = set(_RECIPE.op_types)
    dq_nodes = []
    for t in list(m.graph.initializer):
        a = numpy_helper.to_array(t)
        us = users.get(t.name, [])
        if a.ndim < 2 or a.size < min_size or not us or a.dtype != np.float32:
            continue
        if not all(op in ops and k == 1 for op, k in us) or len({op for op, _ in us}) != 1:
            continue
        axis = 0 if us[0][0] == "Conv" else a.ndim - 1  # Conv: output channels; MatMul B (K, N): columns
        red = tuple(i for i in range(a.ndim) if i != axis)
        scale = (np.maximum(np.abs(a).max(axis=red), 1e-12) / 127.0).astype(np.float32)
        shape = [1] * a.ndim
        shape[axis] = -1
        q = np.clip(np.round(a / scale.reshape(shape)), -127, 127).astype(np.int8)
        m.graph.initializer.remove(t)
        m.graph.initializer.extend([numpy_helper.from_array(q, t.name + "_int8"),
                                    numpy_helper.from_array(scale, t.name + "_scale"),
                                    numpy_helper.from_array(np.zeros(scale.shape, np.int8), t.name + "_zero_point")])
        dq_nodes.append(helper.make_node("DequantizeLinear", [t.name + "_int8", t.name + "_scale", t.name + "_zero_point"],
                                         [t.name], axis=axis, name=t.name + "_DequantizeLinear"))
    if not dq_nodes:
        raise ModelError(f"{Path(fp32).name} has no Conv/MatMul weights to store in INT8")
    for n in reversed(dq_nodes):
        m.graph.node.insert(0, n)
    mark_int8(m, meta, {**_RECIPE.to_dict(), "weight_tensors": len(dq_nodes)})
    return save_model(m, Path(out))
