"""ONNX graph helpers shared by the INT8 quantizers: load and check a model, find its image
input, carry edgeseg's metadata over (stamped int8), save atomically, keep graph outputs in float,
and name the SegFormer block a node belongs to (:func:`group_of`, the unit of float fallback)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from edgeseg.errors import ModelError
from edgeseg.runtime.files import atomic_write_bytes

log = logging.getLogger(__name__)

__all__ = ["load_onnx", "image_input", "edgeseg_meta", "save_model", "mark_int8", "float_graph_outputs",
           "group_of"]


def load_onnx(path: str | Path):
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ONNX model not found: {path}")
    try:
        m = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise ModelError(f"{path} is not an ONNX model: {str(exc).splitlines()[0][:200] if str(exc) else exc!r}") \
            from None
    if not m.graph.node or not m.graph.input or not m.opset_import:
        raise ModelError(f"{path} is not an ONNX model (no graph, inputs or opset)")
    return m


def image_input(m):
    inits = {t.name for t in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelError(f"the model has {len(inputs)} inputs; edgeseg quantizes single-input image models")
    inp = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    return inp.name, dims


def edgeseg_meta(m) -> dict | None:
    from edgeseg.export.onnx import get_metadata

    try:
        return get_metadata(m)
    except ValueError:
        log.warning("the model's edgeseg metadata is not valid JSON; it is not carried over")
        return None


def save_model(m, out: str | Path) -> Path:
    """Write an ONNX ModelProto to ``out`` atomically (temporary file, then rename); returns ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(out, m.SerializeToString())


def mark_int8(m, source_meta: dict | None, quant: dict) -> None:
    """Carry the source's edgeseg metadata over, with precision int8 and how it was quantized."""
    from edgeseg.export.onnx import set_metadata

    if source_meta is None:
        log.warning("the source model has no edgeseg metadata; the INT8 model has none either")
        return
    meta = dict(source_meta)
    meta["precision"] = "int8"
    meta["quantization"] = quant
    set_metadata(m, meta)


def float_graph_outputs(m) -> int:
    """Drop the Q->DQ pair in front of each graph output, so logits/probabilities leave the model
    in full float precision (8-bit logits would turn near-ties at class boundaries into coin
    flips, for no speed gain: the last op is tiny). Returns the number of outputs changed."""
    nodes = list(m.graph.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output}
    uses: dict[str, int] = {}
    for n in nodes:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    outputs = {o.name for o in m.graph.output}
    drop: set[int] = set()
    for name in outputs:
        dq = producer.get(name)
        if dq is None or nodes[dq].op_type != "DequantizeLinear":
            continue
        q = producer.get(nodes[dq].input[0])
        if q is None or nodes[q].op_type != "QuantizeLinear" or uses.get(nodes[q].output[0], 0) != 1:
            continue
        tensor = nodes[q].input[0]
        src = producer.get(tensor)
        if src is None or tensor in outputs or uses.get(tensor, 0) != 1:
            continue
        for k, o in enumerate(nodes[src].output):
            if o == tensor:
                nodes[src].output[k] = name
        drop.update((q, dq))
    for k in sorted(drop, reverse=True):
        del m.graph.node[k]
    return len(drop) // 2


_STAGE_BLOCK = [
    # transformers >= 5: segformer.stages.N.blocks.M / stages.N.patch_embeddings
    re.compile(r"/stages\.(?P<stage>\d+)/blocks\.(?P<block>\d+)/(?P<part>attention|mlp)?"),
    # transformers 4.x: segformer.encoder.block.N.M / encoder.patch_embeddings.N
    re.compile(r"/encoder/block\.(?P<stage>\d+)/(?P<block>\d+)/(?P<part>attention|mlp)?"),
]
_PATCH = [re.compile(r"/stages\.(?P<stage>\d+)/patch_embeddings/"),
          re.compile(r"/encoder/patch_embeddings\.(?P<stage>\d+)/")]


def group_of(node_name: str) -> str:
    """SegFormer block a node belongs to, from the module path in its exported name.

    ``stage{N}.block{M}.attention`` (q/k/v/o projections, the spatial-reduction conv and the two
    attention products), ``stage{N}.block{M}.mlp`` (fc1, depth-wise conv, fc2),
    ``stage{N}.patch_embed``, ``decode_head``; ``other`` for anything else. N and M are the
    module indices as in the names (0-based).
    """
    for rx in _STAGE_BLOCK:
        mt = rx.search(node_name)
        if mt:
            g = f"stage{int(mt['stage'])}.block{int(mt['block'])}"
            return f"{g}.{mt['part']}" if mt["part"] else g
    for rx in _PATCH:
        mt = rx.search(node_name)
        if mt:
            return f"stage{int(mt['stage'])}.patch_embed"
    if "/decode_head/" in node_name or node_name.startswith("decode_head"):
        return "decode_head"
    return "other"
