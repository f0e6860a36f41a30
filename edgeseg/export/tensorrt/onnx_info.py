"""What an engine build needs to know about a bundle's ONNX before TensorRT sees it.

:func:`inspect_onnx` reads the single NCHW input, the outputs, the precision the ONNX carries
(FP32, FP16 or INT8 Q/DQ) and the Q/DQ nodes TensorRT could not build (asymmetric or unsigned
zero points: the CPU INT8 recipe). Needs the ``onnx`` package, imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeseg.errors import BundleError

# INT8 weights and activations, FP8 (TensorRT also takes FP8 Q/DQ; edgeseg does not make them)
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def detect_precision(model) -> str:
    """What an ONNX ModelProto carries: 'int8' (Q/DQ nodes), 'fp16' (FP16 weights or casts) or 'fp32'."""
    from onnx import TensorProto

    nodes = list(_all_nodes(model.graph))
    if any(n.op_type in _QDQ_OPS and n.domain in ("", "ai.onnx") for n in nodes):
        return "int8"
    if any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    for n in nodes:
        if n.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT16 for a in n.attribute):
            return "fp16"
        if n.op_type == "Constant" and any(a.name == "value" and a.t.data_type == TensorProto.FLOAT16
                                           for a in n.attribute):
            return "fp16"
    return "fp32"


def _all_nodes(graph):
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.g is not None and len(a.g.node):
                yield from _all_nodes(a.g)
            for g in a.graphs:
                yield from _all_nodes(g)


def qdq_problems(model) -> list[str]:
    """Q/DQ nodes TensorRT cannot take: it quantizes symmetrically to signed INT8, so every
    zero point must be int8 (or an FP8 type) and all zeros. Returns messages (empty: fine)."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    consts = {t.name: t for t in model.graph.initializer}
    for n in _all_nodes(model.graph):
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and n.output:
                    consts[n.output[0]] = a.t
    ok_types = {TensorProto.INT8}
    for name in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "INT4"):
        if hasattr(TensorProto, name):
            ok_types.add(getattr(TensorProto, name))
    problems = []
    for n in _all_nodes(model.graph):
        if n.op_type not in _QDQ_OPS or len(n.input) < 3 or not n.input[2]:
            continue
        zp = consts.get(n.input[2])
        if zp is None:
            continue
        label = n.name or n.output[0]
        if zp.data_type not in ok_types:
            tname = TensorProto.DataType.Name(zp.data_type)
            problems.append(f"{n.op_type} {label}: zero point is {tname}; TensorRT needs signed INT8 (symmetric)")
            continue
        if zp.data_type == TensorProto.INT8 and np.any(numpy_helper.to_array(zp) != 0):
            problems.append(f"{n.op_type} {label}: non-zero zero point; TensorRT supports symmetric quantization only")
    return problems


@dataclass(frozen=True)
class OnnxInfo:
    input_name: str
    input_shape: tuple  # ints for fixed dimensions, None for symbolic ones
    output_names: tuple[str, ...]
    precision: str
    qdq_problems: tuple[str, ...] = ()


def inspect_onnx(path: str | Path) -> OnnxInfo:
    """Read what the build needs from an ONNX file (its single input, outputs, precision)."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise BundleError(f"{path.name} is not a readable ONNX model: {str(exc).splitlines()[0][:200]}") from None
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise BundleError(f"{path.name} has {len(inputs)} graph inputs; edgeseg engines take one NCHW image batch")
    dims = []
    for d in inputs[0].type.tensor_type.shape.dim:
        dims.append(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None)
    if len(dims) != 4:
        raise BundleError(f"{path.name}: input {inputs[0].name!r} has rank {len(dims)}; expected NCHW (rank 4)")
    if dims[1] not in (None, 3):
        raise BundleError(f"{path.name}: input {inputs[0].name!r} has {dims[1]} channels; expected 3 (RGB)")
    precision = detect_precision(model)
    problems = tuple(qdq_problems(model)) if precision == "int8" else ()
    return OnnxInfo(inputs[0].name, tuple(dims), tuple(o.name for o in model.graph.output), precision, problems)
