"""Pruned and folded SegFormer shapes: what differs from a standard config, recorded in it.

A pruned model is a standard ``SegformerConfig`` plus ``edgeseg_widths`` (Mix-FFN hidden width of
every block, decode-head width, whether the head is folded) and ``model.safetensors``;
:func:`load_pruned` rebuilds the module shapes from the config alone, so loading a checkpoint
never needs the pruning code.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from edgeseg.errors import ModelError
from edgeseg.fold import FoldedDecodeHead


def mlp_blocks(model):
    for s, stage in enumerate(model.segformer.stages):
        for b, blk in enumerate(stage.blocks):
            yield s, b, blk.mlp


def widths(model) -> dict:
    mlp: list[list[int]] = []
    for s, b, m in mlp_blocks(model):
        while len(mlp) <= s:
            mlp.append([])
        mlp[s].append(m.fc1.out_features)
    head = model.decode_head
    folded = isinstance(head, FoldedDecodeHead)
    dec = head.classifier.in_channels
    return {"mlp": mlp, "decoder": dec, "folded": folded}


def annotate_config(model) -> None:
    """Record non-standard shapes in the config so the checkpoint reloads without pruning code."""
    w = widths(model)
    cfg = model.config
    std_mlp = [[int(h * r)] * d for h, r, d in zip(cfg.hidden_sizes, cfg.mlp_ratios, cfg.depths)]
    if w["folded"] or w["mlp"] != std_mlp or w["decoder"] != cfg.decoder_hidden_size:
        cfg.edgeseg_widths = w
    elif hasattr(cfg, "edgeseg_widths"):
        del cfg.edgeseg_widths


def load_pruned(path: str | Path):
    """Rebuild a pruned/folded SegFormer from its config and load its safetensors."""
    from safetensors.torch import load_file
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    path = Path(path)
    cfg = SegformerConfig.from_pretrained(str(path))
    w = getattr(cfg, "edgeseg_widths", None)
    if not isinstance(w, dict) or "mlp" not in w:
        raise ModelError(f"{path}: config has no valid edgeseg_widths")
    model = SegformerForSemanticSegmentation(cfg)
    try:
        for s, b, m in mlp_blocks(model):
            h = int(w["mlp"][s][b])
            c = m.fc1.in_features
            m.fc1 = nn.Linear(c, h)
            m.dwconv.dwconv = nn.Conv2d(h, h, 3, 1, 1, groups=h)
            m.fc2 = nn.Linear(h, c)
        if w.get("folded"):
            model.decode_head = FoldedDecodeHead.empty(list(cfg.hidden_sizes), int(w["decoder"]), cfg.num_labels)
        state = load_file(str(path / "model.safetensors"))
        model.load_state_dict(state, strict=True)
    except (IndexError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelError(f"{path}: weights do not match the recorded widths: {str(exc).splitlines()[0]}") from None
    return model.eval()
