"""What an engine build needs to know about a bundle's ONNX before TensorRT sees it.

:func:`inspect_onnx` reads the single NCHW input, the outputs, the precision the ONNX carries
(FP32, FP16 or INT8 Q/DQ) and the Q/DQ nodes TensorRT could not build (the one validator,
:func:`edgeseg.export.qdq_rules.tensorrt_qdq_problems`: asymmetric or unsigned zero points of
the CPU INT8 recipe, bad scales or axes). Needs the ``onnx`` package, imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeseg.errors import BundleError
from edgeseg.export.qdq_rules import QDQ_OPS, tensorrt_qdq_problems
from edgeseg.export.qdq_rules import _all_nodes as all_nodes  # every node, subgraphs included


def detect_precision(model) -> str:
    """What an ONNX ModelProto carries: 'int8' (Q/DQ nodes), 'fp16' (FP16 weights or casts) or 'fp32'."""
    from onnx import TensorProto

    nodes = list(all_nodes(model.graph))
    if any(n.op_type in QDQ_OPS and n.domain in ("", "ai.onnx") for n in nodes):
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
    problems = tuple(tensorrt_qdq_problems(model)) if precision == "int8" else ()
    return OnnxInfo(inputs[0].name, tuple(dims), tuple(o.name for o in model.graph.output), precision, problems)
