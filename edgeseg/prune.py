"""Structured pruning of SegFormer with torch-pruning, and the pruned checkpoint format.

What is pruned (channels are removed, not masked, so the graph really gets smaller):
- Mix-FFN hidden channels of every block (fc1 outputs, the depthwise conv, fc2 inputs);
- the decode-head width, after exact folding (the stage convs' outputs and the classifier's
  inputs, all coupled through the sum).
Attention heads/head dims and the residual width are left alone: on B0 the heads are few and
narrow ([1, 2, 5, 8] x 32) and the residual stream couples every LayerNorm of a stage, so they
buy little latency for a large accuracy risk (see ../shared/DESIGN.md).

A pruned model is saved as ``config.json`` (a SegformerConfig plus ``edgeseg_widths``) and
``model.safetensors``; ``edgeseg.model.shapes.load_pruned`` rebuilds the module shapes from the
config alone.
"""

from __future__ import annotations

import copy
import logging
import sys
from dataclasses import dataclass, field
import torch
from torch import nn

from edgeseg.errors import ConfigError, ModelError
from edgeseg.fold import fold_decode_head
from edgeseg.model.shapes import mlp_blocks, widths

log = logging.getLogger(__name__)

IMPORTANCE = ("magnitude", "taylor")


@dataclass(frozen=True)
class PruneConfig:
    ratio: float = 0.5  # fraction of Mix-FFN hidden channels removed (all stages)
    stage_ratios: tuple[float, ...] | None = None  # per-stage override of ``ratio``
    decoder_ratio: float | None = None  # fraction of decode-head width removed; default = ratio
    target_macs: float | None = None  # prune until MACs <= this fraction of the original
    importance: str = "magnitude"
    round_to: int = 8
    steps: int = 5  # iterative steps when a target is given
    depths: tuple[int, ...] | None = None  # blocks kept per stage (depth pruning); least useful dropped
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for r in [self.ratio, self.decoder_ratio, *(self.stage_ratios or ())]:
            if r is not None and not 0 <= r < 1:
                raise ConfigError(f"pruning ratios must be in [0, 1), got {r}")
        if self.target_macs is not None and not 0 < self.target_macs < 1:
            raise ConfigError(f"--target-macs is a fraction of the original MACs in (0, 1), got {self.target_macs}")
        if self.importance not in IMPORTANCE:
            raise ConfigError(f"unknown importance {self.importance!r}; choose from {', '.join(IMPORTANCE)}")
        if self.round_to < 1:
            raise ConfigError("round_to must be >= 1")
        if self.depths is not None and any(int(d) < 1 for d in self.depths):
            raise ConfigError(f"--depths must keep at least one block per stage, got {list(self.depths)}")


class _Logits(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(pixel_values=x).logits


def count_macs_params(model, height: int, width: int) -> tuple[int, int]:
    import torch_pruning as tp

    device = next(model.parameters()).device
    macs, params = tp.utils.count_ops_and_params(_Logits(model).eval(), torch.zeros(1, 3, height, width,
                                                                                   device=device))
    return int(macs), int(params)


MAX_ROWS = 20000


def _consumer_io(model, wrapper, calib) -> dict:
    """Inputs and outputs of every layer that loses input channels when pruning (the fc2 of
    each Mix-FFN, the classifier) on the calibration images, as (rows, features) float64
    matrices subsampled to at most MAX_ROWS rows."""
    targets = [m.fc2 for _, _, m in mlp_blocks(model)] + [model.decode_head.classifier]
    io: dict = {}
    gen = torch.Generator().manual_seed(0)

    def hook(mod, inputs, output):
        x, y = inputs[0].detach(), output.detach()
        if x.dim() == 4:  # NCHW conv: pixels are rows
            x = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
            y = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])
        else:
            x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        if x.shape[0] > MAX_ROWS:
            sel = torch.randperm(x.shape[0], generator=gen)[:MAX_ROWS]
            x, y = x[sel], y[sel]
        io[mod] = (x.double(), y.double())

    handles = [t.register_forward_hook(hook) for t in targets]
    try:
        with torch.no_grad():
            wrapper(calib)
    finally:
        for hd in handles:
            hd.remove()
    return io


@torch.no_grad()
def _reconstruct(group, io: dict, ridge: float = 1e-3) -> None:
    """Refit the consumer of the removed channels so it reproduces its unpruned output.

    For a layer y = W x + b losing input channels R, solve min ||W' x_K + b' - y||^2 over the
    calibration rows (ridge-regularised least squares; K = kept channels) and write W', b'
    into the kept columns; torch-pruning then drops the removed columns. The removed channels'
    average contribution moves into the bias, and whatever the kept channels can explain of
    the rest is recovered (channel-pruning reconstruction, He et al., ICCV 2017).
    """
    for dep, idxs in group:
        mod = dep.target.module
        if mod not in io or "in_channels" not in getattr(dep.handler, "__name__", str(dep.handler)):
            continue
        if not idxs:
            continue
        x, y = io[mod]
        n_in = x.shape[1]
        removed = set(int(i) for i in idxs)
        kept = torch.tensor([i for i in range(n_in) if i not in removed], dtype=torch.long)
        a = torch.cat([x[:, kept], torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
        reg = ridge * torch.eye(a.shape[1], dtype=a.dtype) * a.pow(2).mean()
        reg[-1, -1] = 0
        sol = torch.linalg.solve(a.T @ a + reg * a.shape[0], a.T @ y)  # (k+1, out)
        w = mod.weight.view(mod.weight.shape[0], mod.weight.shape[1], -1)
        w[:, kept, 0] = sol[:-1].T.to(w.dtype)
        if w.shape[-1] != 1:
            raise ModelError("reconstruction supports 1x1 convolutions and linear layers only")
        if mod.bias is not None:
            mod.bias.copy_(sol[-1].to(mod.bias.dtype))


@torch.no_grad()
def drop_blocks(model, depths, calib) -> dict:
    """Depth pruning: keep ``depths[s]`` blocks in stage s, dropping those whose residual update
    changes their input least on the calibration images (relative norm ||f(x) - x|| / ||x||)."""
    stages = model.segformer.stages
    if len(depths) != len(stages):
        raise ConfigError(f"--depths needs {len(stages)} values, got {len(depths)}")
    scores: dict = {}
    handles = []
    for s, st in enumerate(stages):
        for b, blk in enumerate(st.blocks):
            def hook(mod, inp, out, key=(s, b)):
                x = inp[0]
                y = out[0] if isinstance(out, tuple) else out
                scores[key] = float((y - x).norm() / x.norm().clamp_min(1e-12))
            handles.append(blk.register_forward_hook(hook))
    try:
        model(pixel_values=calib)
    finally:
        for h in handles:
            h.remove()
    dropped = {}
    for s, (st, keep) in enumerate(zip(stages, depths)):
        n = len(st.blocks)
        if keep > n:
            raise ConfigError(f"--depths asks for {keep} blocks in stage {s}, which has {n}")
        order = sorted(range(n), key=lambda b: scores[(s, b)], reverse=True)
        kept = sorted(order[:keep])
        dropped[f"stage{s}"] = {"kept": kept, "scores": [scores[(s, b)] for b in range(n)]}
        st.blocks = nn.ModuleList([st.blocks[b] for b in kept])
    model.config.depths = [len(st.blocks) for st in stages]
    return dropped


def _importance(name: str):
    import torch_pruning as tp

    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.GroupMagnitudeImportance(p=2)


def prune(model, cfg: PruneConfig, calib: torch.Tensor | None = None, teacher_logits: torch.Tensor | None = None,
          guard=None, progress: bool = False):
    """Fold (if needed) and prune ``model`` in place; returns (model, report dict).

    ``calib`` (N,3,H,W) normalised images drive the data-driven (Taylor) importance; the loss is
    the cross-entropy against the unpruned model's own predictions, so no labels are needed.
    ``progress``: a bar (stderr) over the steps of iterative pruning (``target_macs``).
    """
    import torch_pruning as tp
    from tqdm import tqdm

    model = model.eval()
    fold_decode_head(model)
    if calib is None:
        raise ConfigError("pruning needs a few real images (calibration set) to trace the graph")
    h, w = calib.shape[-2:]
    example = calib[:1]
    wrapper = _Logits(model)
    base_macs, base_params = count_macs_params(model, h, w)
    dropped = drop_blocks(model, cfg.depths, calib) if cfg.depths else {}
    if cfg.importance == "taylor" and teacher_logits is None:
        with torch.no_grad():
            teacher_logits = wrapper(calib)

    stages = max(s for s, _, _ in mlp_blocks(model)) + 1
    stage_r = list(cfg.stage_ratios) if cfg.stage_ratios else [cfg.ratio] * stages
    if len(stage_r) != stages:
        raise ConfigError(f"--stage-ratios needs {stages} values, got {len(stage_r)}")
    dec_r = cfg.ratio if cfg.decoder_ratio is None else cfg.decoder_ratio

    def build(scale: float, part: str):
        # a group can be reached from any of its layers, so give every coupled layer the ratio
        ratio_dict = {}
        if part == "encoder":
            for s, _, m in mlp_blocks(model):
                for layer in (m.fc1, m.dwconv.dwconv):
                    ratio_dict[layer] = min(stage_r[s] * scale, 0.95)
        else:
            for conv in model.decode_head.stage_convs:
                ratio_dict[conv] = min(dec_r * scale, 0.95)
        prunable = set(ratio_dict)
        ignored = [m for m in wrapper.modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and m not in prunable]
        return tp.pruner.BasePruner(
            wrapper, example, importance=_importance(cfg.importance), pruning_ratio=0.0,
            pruning_ratio_dict=ratio_dict, ignored_layers=ignored, round_to=cfg.round_to,
            iterative_steps=1,
        )

    def taylor_grads():
        if cfg.importance != "taylor":
            return
        # cross-entropy against the unpruned model's own hard labels: unlike a KL to its own soft
        # output (zero gradient at the start), this gives every channel a usable first-order score
        wrapper.zero_grad()
        out = wrapper(calib)
        loss = nn.functional.cross_entropy(out, teacher_logits.argmax(1))
        loss.backward()

    def step(scale: float) -> None:
        # encoder first, then the decoder, re-recording activations in between so the decoder's
        # reconstruction sees the already-pruned encoder
        for part, r in (("encoder", max(stage_r)), ("decoder", dec_r)):
            if r * scale <= 0:
                continue
            pruner = build(scale, part)
            taylor_grads()
            io = _consumer_io(model, wrapper, calib)
            for group in pruner.step(interactive=True):
                _reconstruct(group, io)
                group.prune()

    if cfg.target_macs is None:
        step(1.0)
    else:
        # iterative: a growing fraction of the configured ratios until the MACs target holds
        # with a ``guard(model) -> bool`` (the accuracy budget), stop at the strongest step it accepts
        guard_log = []
        for k in tqdm(range(cfg.steps), desc="prune: steps", unit="step", disable=not progress, file=sys.stderr,
                      leave=False):
            macs, _ = count_macs_params(model, h, w)
            if macs <= cfg.target_macs * base_macs:
                break
            prev = copy.deepcopy(model) if guard is not None else None
            step(1.0 / cfg.steps)
            if guard is not None:
                ok = bool(guard(model))
                guard_log.append({"step": k + 1, "macs": count_macs_params(model, h, w)[0], "accepted": ok})
                if not ok:
                    model = prev
                    log.warning("pruning stopped at step %d of %d: the next step breaks the accuracy budget", k,
                                cfg.steps)
                    break
        macs, _ = count_macs_params(model, h, w)
        if macs > cfg.target_macs * base_macs:
            log.warning("MACs target %.2f not reached with ratio %.2f (at %.3f)", cfg.target_macs, cfg.ratio,
                        macs / base_macs)
    model.zero_grad(set_to_none=True)
    model.eval()
    macs, params = count_macs_params(model, h, w)
    report = {"macs_before": base_macs, "macs_after": macs, "params_before": base_params, "params_after": params,
              "widths": widths(model), "dropped_blocks": dropped,
              "guard": guard_log if cfg.target_macs is not None and guard is not None else None,
              "config": {k: v for k, v in cfg.__dict__.items() if k != "extra"}}
    return model, report
