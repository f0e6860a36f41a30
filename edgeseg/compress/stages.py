"""The stage table of ``edgeseg compress``: teacher -> fold -> prune -> distill -> export -> quantize.

Each :class:`Stage` of :data:`STAGES` is a function from the previous stage's files to its own
folder (written atomically by the compressor) that returns a :class:`StageResult`: the stage
scored on the validation images (Dice, and its fidelity to the teacher, see
``edgeseg.measure.budgets``) and timed on this machine. The stages read their settings from
the compressor's current recipe (``c.recipe``), which the search
(``edgeseg.compress.search``) sets to each candidate's in turn. ``edgeseg prune`` and
``edgeseg distill`` run the prune and distill steps alone, file to file
(:func:`prune_checkpoint`, :func:`distill_checkpoint`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from edgeseg.compress.progress import fmt_seconds
from edgeseg.compress.recipe import Recipe
from edgeseg.model.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from edgeseg.runners import open_model, torch_segmenter

if TYPE_CHECKING:
    from edgeseg.compress.pipeline import Compressor

@dataclass
class StageResult:
    name: str
    path: str
    params: int | None = None
    gflops: float | None = None
    size_mb: float | None = None
    runner: str = ""
    precision: str = "fp32"
    p50_ms: float | None = None
    p90_ms: float | None = None
    spread_ms: float | None = None
    noisy_reason: str | None = None  # set when the stage was timed on a busy machine
    dice: float | None = None
    iou: float | None = None
    median_dice: float | None = None
    dice_drop: float | None = None  # vs the teacher (None for the teacher itself)
    worst_image: str | None = None
    worst_drop: float | None = None
    seconds: float | None = None
    notes: dict = field(default_factory=dict)
    fidelity: dict | None = None  # the budget figures vs the teacher (edgeseg.measure.budgets.fidelity)


@dataclass(frozen=True)
class Stage:
    """One row of the table: ``run(compressor, src, out)`` turns the previous stage's path
    into this stage's files at ``out`` and returns their measurement."""

    name: str
    run: Callable[["Compressor", Path, Path], StageResult]
    enabled: Callable[[Recipe], bool] = lambda r: True


# --------------------------------------------------------------------------- file-to-file steps
def prune_checkpoint(src: str | Path, out: str | Path, cfg, calib: np.ndarray | None = None, guard=None,
                     meta: CheckpointMeta | None = None, progress: bool = False) -> tuple[Path, dict]:
    """Prune the checkpoint ``src`` (folded first, as pruning needs) into the checkpoint ``out``.
    ``cfg`` is a ``PruneConfig``; ``calib`` (N, 3, H, W) float32 images for data-driven steps.
    Returns (out, the pruning report)."""
    import torch

    from edgeseg.prune import prune

    model, src_meta = load_checkpoint(src)
    meta = copy.deepcopy(meta or src_meta)
    model, rep = prune(model.eval(), cfg, calib=None if calib is None else torch.from_numpy(calib), guard=guard,
                       progress=progress)
    meta.provenance = {**meta.provenance, "stage": "prune", "prune": rep}
    save_checkpoint(model, meta, out)
    return Path(out), rep


def distill_checkpoint(teacher: str | Path, student: str | Path, train_cfg, dcfg, student_note: str = "",
                       overwrite: bool = False, announce=None) -> Path:
    """Distil the checkpoint ``student`` towards the checkpoint ``teacher`` into the checkpoint
    ``train_cfg.out`` (see ``edgeseg.distill.distill``: best epoch by agreement with the teacher,
    never worse than the starting student without saying so)."""
    from edgeseg.distill import distill

    t_model, meta = load_checkpoint(teacher)
    s_model, _ = load_checkpoint(student)
    return distill(s_model.train(), t_model, meta, train_cfg, dcfg, teacher, student_note=student_note,
                   overwrite=overwrite, announce=announce)


# --------------------------------------------------------------------------- the stages
def _teacher(c: "Compressor", src: Path, out: Path) -> StageResult:
    return c.torch_stage("teacher", c.teacher, src, time.time())


def _fold(c: "Compressor", src: Path, out: Path) -> StageResult:
    from edgeseg.fold import fold_decode_head

    t0 = time.time()
    folded = fold_decode_head(copy.deepcopy(c.teacher).eval())
    save_checkpoint(folded, c.meta_with({"stage": "fold"}), out)
    return c.torch_stage("fold", folded, out, t0)


def _prune(c: "Compressor", src: Path, out: Path) -> StageResult:
    from edgeseg.prune import PruneConfig

    r, t0 = c.recipe, time.time()
    pcfg = PruneConfig(ratio=r.prune_ratio, decoder_ratio=r.decoder_ratio, stage_ratios=r.stage_ratios,
                       target_macs=r.target_macs, importance=r.importance, depths=r.depths)
    guard = None
    if r.target_macs is not None and r.max_dice_drop is not None:
        # the same budget picks the strongest pruning step (before distillation, so conservative)
        t_dice = c.results["teacher"].dice

        def guard(m):
            return t_dice - c.dice(torch_segmenter(m, c.meta)) <= r.max_dice_drop
    _, rep = prune_checkpoint(src, out, pcfg, calib=c.calib[:16], guard=guard, meta=c.meta_with({}),
                              progress=c.progress)
    model, _ = load_checkpoint(out)
    return c.torch_stage("prune", model, out, t0, notes={"prune": rep})


def _distill(c: "Compressor", src: Path, out: Path) -> StageResult:
    from edgeseg.distill import DistillConfig
    from edgeseg.train.loop import TrainConfig

    r, t0 = c.recipe, time.time()
    train_root, train_split, val_split = c.train_data()
    tcfg = TrainConfig(data=train_root, out=str(out), train_split=train_split, val_split=val_split,
                       classes=tuple(c.meta.classes), size=max(32, c.pp.height // 32 * 32),
                       epochs=r.distill_epochs, batch_size=r.batch_size, lr=r.distill_lr, warmup_steps=20,
                       device=r.device, seed=r.seed, progress=c.progress, threads=r.threads, log=c.log,
                       time_budget_min=c.distill_minutes, patience=r.distill_patience,
                       scale_jitter=r.distill_scale_jitter)
    dcfg = DistillConfig(temperature=r.temperature, alpha=r.alpha, feature_weight=r.feature_weight,
                         extra_images=r.distill_images)
    # an unrecorded earlier attempt: resume it when it stopped early, else start it again
    redo = out.exists() and not (out / ".resume").is_dir()
    def announce(step_s: float, steps: int) -> None:
        c.estimate.train_step_s = step_s
        c.talk.say(f"  distill: {steps} training steps at {step_s:.2f} s each (measured on the first steps): "
                   f"about {fmt_seconds(c.estimate.distill())} in all")

    distill_checkpoint(c.checkpoint, src, tcfg, dcfg, student_note="pruned teacher", overwrite=redo,
                       announce=announce)
    model, meta = load_checkpoint(out)
    sel = (meta.training or {}).get("selection") or {}
    notes = {"distill": asdict(dcfg), "epochs": r.distill_epochs, "train_split": train_split, "selection": sel}
    if sel.get("kept") == "starting point":
        notes["kept_start"] = ("distillation did not beat the pruned model it started from on the validation set "
                               f"(agreement {sel.get('best_agreement'):.4f} vs {sel.get('start_agreement'):.4f}); "
                               "the pruned model is kept")
    return c.torch_stage("distill", model, out, t0, notes=notes)


def _export(c: "Compressor", src: Path, out: Path) -> StageResult:
    from edgeseg.export.onnx import ExportConfig
    from edgeseg.export.pipeline import export_bundle

    t0 = time.time()
    # a bundle left by an earlier attempt that stopped before recording the stage is ours to replace
    _, rep = export_bundle(src, out, ExportConfig(fold=True), data=c.recipe.val, split=c.recipe.val_split, limit=16,
                           overwrite=out.exists())
    return c.onnx_stage("export", out, "fp32", t0, notes={"parity": rep})


def _quantize(c: "Compressor", src: Path, out: Path) -> StageResult:
    from edgeseg.compress.guard import quantize_guarded

    r, t0 = c.recipe, time.time()
    notes = quantize_guarded(src, out, target=r.target, method=r.calib_method, calib=c.calib,
                             calib_info=c.calib_info, dice_of_bundle=lambda b: c.dice(open_model(b, threads=r.threads)),
                             teacher_dice=c.results["teacher"].dice, fp32_dice=c.results["export"].dice,
                             budget=r.max_dice_drop, work=c.work, talk=c.talk, budgets=c.budgets,
                             score_of_bundle=lambda b: c.dice_and_fidelity(open_model(b, threads=r.threads)),
                             fp32_fig=c.results["export"].fidelity)
    res = c.onnx_stage("quantize", out, "int8", t0, notes=notes)
    fp32 = c.results["export"].p50_ms
    if res.p50_ms and fp32 and res.p50_ms > fp32:  # recorded in the state: repeated when the stage is reused
        res.notes["warning"] = (f"INT8 is slower than FP32 here ({res.p50_ms:.1f} vs {fp32:.1f} ms p50); "
                                "it is kept for its size")
    return res


STAGES: tuple[Stage, ...] = (
    Stage("teacher", _teacher),
    Stage("fold", _fold),
    Stage("prune", _prune),
    Stage("distill", _distill, lambda r: r.distill_epochs > 0),
    Stage("export", _export),
    Stage("quantize", _quantize, lambda r: r.int8),
)
# the last step, "bundle", is not a stage of the table: it always runs (cheap) and writes
# OUT/bundle from the last stage's files plus the whole story in its manifest.
