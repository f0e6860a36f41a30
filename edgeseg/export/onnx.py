"""ONNX export of SegFormer checkpoints (any variant, folded or pruned), with optional in-graph
post-processing, FP16 conversion, and edgeseg metadata embedded in the ONNX file itself."""

from __future__ import annotations

import copy
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from edgeseg.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

POSTPROCESS = ("none", "mask", "probs", "mask+probs")


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 17
    fp16: bool = False
    fold: bool = True
    dynamic_batch: bool = True
    dynamic_hw: bool = False
    postprocess: str = "none"  # in-graph: upsample to input size + argmax (mask) and/or softmax (probs)

    def __post_init__(self) -> None:
        if self.opset < 17:
            raise ConfigError(f"opset {self.opset} is too old: edgeseg exports opset >= 17 "
                              "(LayerNormalization as one op, which TensorRT keeps in FP32)")
        if self.postprocess not in POSTPROCESS:
            raise ConfigError(f"unknown --postprocess {self.postprocess!r}; choose from {', '.join(POSTPROCESS)}")


def _wrapper(model, postprocess: str):
    import torch
    from torch import nn

    class SegformerOnnx(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            logits = self.m(pixel_values=pixel_values).logits
            if postprocess == "none":
                return logits
            up = nn.functional.interpolate(logits, size=pixel_values.shape[2:], mode="bilinear",
                                           align_corners=False)
            outs = []
            if "mask" in postprocess:
                outs.append(up.argmax(dim=1).to(torch.uint8))
            if "probs" in postprocess:
                outs.append(up.softmax(dim=1))
            return tuple(outs) if len(outs) > 1 else outs[0]

    # A freshly built wrapper is in training mode; export would restore that mode onto the
    # SegFormer afterwards (BatchNorm!). Put the wrapper itself in eval mode.
    return SegformerOnnx(model).eval()


def output_spec(postprocess: str) -> list[dict]:
    if postprocess == "none":
        return [{"name": "logits", "kind": "logits", "scale": 0.25}]
    spec = []
    if "mask" in postprocess:
        spec.append({"name": "mask", "kind": "mask", "scale": 1.0})
    if "probs" in postprocess:
        spec.append({"name": "probs", "kind": "probs", "scale": 1.0})
    return spec


def export_onnx(model, out: str | Path, height: int, width: int, cfg: ExportConfig = ExportConfig(),
                metadata: dict | None = None) -> Path:
    """Export ``model`` (a SegformerForSemanticSegmentation, eval mode) to ``out``; returns out.

    ``metadata`` (pre-processing, classes, outputs) is stored in the ONNX file's
    metadata_props under the key "edgeseg", so a bare ONNX file can still be used correctly.
    """
    import onnx
    import torch

    from edgeseg.fold import fold_decode_head

    out = Path(out)
    model = model.eval()
    if cfg.fold:
        model = fold_decode_head(copy.deepcopy(model))
    wrapper = _wrapper(model, cfg.postprocess)
    device = next(model.parameters()).device
    x = torch.zeros(1, 3, height, width, device=device)
    names = [o["name"] for o in output_spec(cfg.postprocess)]
    axes = {}
    if cfg.dynamic_batch or cfg.dynamic_hw:
        in_axes = {0: "batch"} if cfg.dynamic_batch else {}
        if cfg.dynamic_hw:
            in_axes.update({2: "height", 3: "width"})
        axes["pixel_values"] = in_axes
        for n in names:
            axes[n] = {0: "batch"} if cfg.dynamic_batch else {}
    tmp = out.with_name(f".{out.name}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (x,), str(tmp), input_names=["pixel_values"], output_names=names,
                              opset_version=cfg.opset, dynamic_axes=axes or None, dynamo=False,
                              do_constant_folding=True)
        wrapper.eval()
        m = onnx.load(str(tmp))
        if cfg.fp16:
            m = to_fp16(m)
        if metadata is not None:
            meta = dict(metadata)
            meta["outputs"] = output_spec(cfg.postprocess)
            meta["precision"] = "fp16" if cfg.fp16 else "fp32"
            set_metadata(m, meta)
        onnx.checker.check_model(m, full_check=True)
        onnx.save(m, str(tmp))
        tmp.replace(out)
    except ModelError:
        raise
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"ONNX export failed: {str(exc).splitlines()[0][:300]}") from exc
    return out


def set_metadata(m, meta: dict) -> None:
    for p in list(m.metadata_props):
        if p.key == "edgeseg":
            m.metadata_props.remove(p)
    entry = m.metadata_props.add()
    entry.key = "edgeseg"
    entry.value = json.dumps(meta, sort_keys=True)


def get_metadata(m) -> dict | None:
    for p in m.metadata_props:
        if p.key == "edgeseg":
            return json.loads(p.value)
    return None


def to_fp16(m):
    """FP16 weights and activations, keeping inputs/outputs FP32 and LayerNorm/Softmax in FP32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = convert_float_to_float16(m, keep_io_types=True,
                                 op_block_list=["LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt"])
    toposort(m.graph)
    return m


def toposort(graph) -> None:
    """Re-order graph nodes so every input is produced before it is used (in place)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(i in known for i in n.input):
                ordered.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ModelError("graph has a cycle or an undefined input after FP16 conversion")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
