"""What TensorRT's explicit quantization accepts in a Q/DQ ONNX model: the one validator.

TensorRT quantizes symmetrically to signed types only, so every QuantizeLinear /
DequantizeLinear node (subgraphs included) must have:

- a constant zero point of a signed TensorRT type (INT8; FP8 and INT4 are also accepted, edgeseg
  makes none) whose values are all 0. No zero point at all means UINT8 for a QuantizeLinear (and
  for a DequantizeLinear of anything but an INT8 constant); an INT32 zero point is a quantized
  bias, which TensorRT cannot dequantize (keep biases float);
- a constant, float, finite scale > 0;
- one scale (per-tensor) for activations;
- per-channel weight scales along the output channels, one per channel: axis 0 for Conv weights
  (K, C/g, kh, kw), axis 1 for ConvTranspose and for MatMul's (K, N) weights, axis 0/1 for Gemm
  with/without transB. Per-tensor weight scales are allowed.

:func:`tensorrt_qdq_problems` returns one message per broken rule (an empty list: TensorRT can
build it). The quantizer checks its ``tensorrt`` target with it (``edgeseg.quantize``
re-exports it as ``check_tensorrt_qdq``) and the TensorRT builder refuses bundles it flags.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.errors import ModelError

__all__ = ["QDQ_OPS", "tensorrt_qdq_problems", "qdq_problems"]

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_DOMAINS = ("", "ai.onnx", "com.microsoft")
_WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
_SIGNED_NAMES = ("INT8", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "INT4")
_FLOAT_NAMES = ("FLOAT", "FLOAT16", "BFLOAT16")


def _types(names) -> set[int]:
    from onnx import TensorProto

    return {getattr(TensorProto, n) for n in names if hasattr(TensorProto, n)}


def _all_nodes(graph):
    """Every node of a graph and of its subgraphs (If/Loop/Scan bodies), depth first."""
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.g is not None and len(a.g.node):
                yield from _all_nodes(a.g)
            for g in a.graphs:
                yield from _all_nodes(g)


def _all_initializers(graph):
    yield from graph.initializer
    for n in graph.node:
        for a in n.attribute:
            if a.g is not None and len(a.g.node):
                yield from _all_initializers(a.g)
            for g in a.graphs:
                yield from _all_initializers(g)


def _constants(graph, nodes) -> dict:
    """Tensor name -> TensorProto for initializers and Constant outputs."""
    consts = {t.name: t for t in _all_initializers(graph)}
    for n in nodes:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = a.t
    return consts


def _model(model_or_path):
    if hasattr(model_or_path, "graph"):
        return model_or_path
    import onnx

    path = Path(model_or_path)
    if not path.is_file():
        raise ModelError(f"ONNX model not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise ModelError(f"{path} is not an ONNX model: {str(exc).splitlines()[0][:200] if str(exc) else exc!r}") \
            from None


class _Graph:
    """Lookups the rules need: constants, producers and consumers of every tensor."""

    def __init__(self, model) -> None:
        self.nodes = list(_all_nodes(model.graph))
        self.consts = _constants(model.graph, self.nodes)
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for i, name in enumerate(n.input):
                self.consumers.setdefault(name, []).append((n, i))

    def weight_of(self, n):
        """The constant a Q/DQ node carries (directly, or behind a QuantizeLinear); None for activations."""
        x = n.input[0]
        if x in self.consts:
            return self.consts[x]
        p = self.producer.get(x)
        if p is not None and p.op_type == "QuantizeLinear" and p.input[0] in self.consts:
            return self.consts[p.input[0]]
        return None

    def weight_users(self, n):
        """(consumer node, input index) of the float tensor a weight Q/DQ chain produces."""
        out = n.output[0]
        if n.op_type == "QuantizeLinear":
            nxt = [c for c, _ in self.consumers.get(out, []) if c.op_type == "DequantizeLinear"]
            return [u for d in nxt for u in self.consumers.get(d.output[0], [])]
        return self.consumers.get(out, [])


def _zero_point_problem(g: _Graph, n, label: str) -> str | None:
    from onnx import TensorProto, numpy_helper

    zp_name = n.input[2] if len(n.input) > 2 else ""
    if not zp_name:
        x = g.consts.get(n.input[0])
        if n.op_type == "QuantizeLinear" or x is None or x.data_type != TensorProto.INT8:
            return f"{label}: no zero point (defaults to UINT8); TensorRT needs an INT8 zero point of 0"
        return None
    zp = g.consts.get(zp_name)
    if zp is None:
        return f"{label}: zero point is not a constant"
    if zp.data_type not in _types(_SIGNED_NAMES):
        tname = TensorProto.DataType.Name(zp.data_type)
        hint = " (a quantized bias: keep biases float for TensorRT)" if zp.data_type == TensorProto.INT32 else ""
        return f"{label}: zero point is {tname}; TensorRT needs signed INT8 (symmetric){hint}"
    if zp.data_type == TensorProto.INT8 and np.any(numpy_helper.to_array(zp) != 0):
        return f"{label}: non-zero zero point; TensorRT supports symmetric quantization only"
    return None


def _wanted_axis(user) -> int:
    if user.op_type == "Conv":
        return 0
    if user.op_type == "Gemm":
        return 0 if any(a.name == "transB" and a.i for a in user.attribute) else 1
    return 1  # ConvTranspose (C, K/g, kh, kw) and MatMul (K, N): output channels on axis 1


def _scale_problems(g: _Graph, n, label: str) -> list[str]:
    from onnx import TensorProto, numpy_helper

    sc = g.consts.get(n.input[1] if len(n.input) > 1 else "")
    if sc is None:
        return [f"{label}: scale is not a constant"]
    if sc.data_type not in _types(_FLOAT_NAMES):
        return [f"{label}: scale has type {TensorProto.DataType.Name(sc.data_type)}, expected float"]
    s = numpy_helper.to_array(sc).astype(np.float64)
    problems = []
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        problems.append(f"{label}: scales must be finite and > 0 (min {np.nanmin(s) if s.size else 'none'})")
    if s.size <= 1:
        return problems
    w = g.weight_of(n)
    if w is None:
        return problems + [f"{label}: activation has {s.size} scales; TensorRT takes per-tensor activation scales"]
    axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
    norm = axis + len(w.dims) if axis < 0 else axis
    for user, idx in g.weight_users(n):
        if idx != 1 or user.op_type not in _WEIGHTED_OPS:
            continue
        want = _wanted_axis(user)
        if norm != want:
            problems.append(f"{label}: per-channel weight scales on axis {axis}; {user.op_type} "
                            f"{user.name} needs axis {want} (output channels)")
        elif want < len(w.dims) and w.dims[want] != s.size:
            problems.append(f"{label}: {s.size} scales for {w.dims[want]} output channels")
    return problems


def tensorrt_qdq_problems(model_or_path) -> list[str]:
    """What in a Q/DQ model TensorRT's explicit quantization would reject; [] when it is fine.

    ``model_or_path`` is an onnx ModelProto or a path to an ONNX file (ModelError when it is
    missing or unreadable). The rules are those of the module docstring; each broken rule of
    each Q/DQ node gives one message naming the node.
    """
    g = _Graph(_model(model_or_path))
    problems: list[str] = []
    for n in g.nodes:
        if n.op_type not in QDQ_OPS or n.domain not in _DOMAINS:
            continue
        label = f"{n.op_type} {n.name or n.output[0]}"
        zp = _zero_point_problem(g, n, label)
        if zp:
            problems.append(zp)
        problems += _scale_problems(g, n, label)
    return problems


# the name the TensorRT builder used for it
qdq_problems = tensorrt_qdq_problems
