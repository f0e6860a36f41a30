"""Knowledge distillation of a student SegFormer from its teacher on the user's labelled images.

Loss = (1 - alpha) * (CE + Dice against the masks)
     + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
     + beta * sum over stages of MSE(student stage features, teacher stage features)

Every image counts for the teacher term: ``DistillConfig.extra_images`` names a folder of
images that need no masks (``--distill-images``); they join the training images with an
"unlabelled" mask (:data:`UNLABELLED` everywhere), so their batches carry only the KL (and
feature) terms, while labelled images carry both. Augmentations (flips, rotations, intensity)
apply to them alike: the teacher sees the same augmented image, so its soft targets stay
consistent with the student's input.

The student is the pruned teacher (same residual widths, so stage features can be matched
directly) or a smaller variant initialised from the teacher wherever tensor shapes agree.
Uses the shared training loop: resumable, progress bar, CPU or CUDA, DDP under torchrun.

Which epoch is kept: the one whose masks agree best with the *teacher's* masks on the
validation images (mean Dice between the two, at original size), because matching the
teacher is what distillation is for. The starting student is scored the same way first; if
no epoch beats it, the starting student is kept and the checkpoint says so
(``training.selection.kept == "starting point"``, and a warning is logged): distillation
never ends worse than where it started without saying so. The checkpoint's ``metrics.val``
are the kept model's Dice against the ground truth; ``metrics.agreement`` its agreement.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from edgeseg.data import folders as D
from edgeseg.errors import ConfigError, DataError
from edgeseg.model.checkpoint import checkpoint_sha256, load_checkpoint, save_checkpoint
from edgeseg.model.variants import build_model
from edgeseg.runtime.preprocess import Preprocess
from edgeseg.train.loop import TrainConfig, class_weights_for, evaluate_model, fit, load_arrays, seg_loss

log = logging.getLogger(__name__)

UNLABELLED = 255  # the mask value of an image without ground truth (every pixel)


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the teacher's soft targets vs the ground truth
    feature_weight: float = 0.0  # stage-feature matching (students with the teacher's widths)
    extra_images: str | None = None  # a folder of images without masks: teacher term only

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError("--temperature must be > 0")
        if not 0 <= self.alpha <= 1:
            raise ConfigError("--alpha must be in [0, 1]")
        if self.feature_weight < 0:
            raise ConfigError("--feature-weight must be >= 0")


def init_from_teacher(student, teacher) -> int:
    """Copy every teacher tensor whose name and shape match the student's; returns the count."""
    t = teacher.state_dict()
    s = student.state_dict()
    same = {k: v for k, v in t.items() if k in s and s[k].shape == v.shape}
    student.load_state_dict(same, strict=False)
    return len(same)


class _StageFeatures:
    """Collects each encoder stage's output (after its LayerNorm) through forward hooks."""

    def __init__(self, model) -> None:
        self.feats: list[torch.Tensor] = []
        self.handles = [st.layer_norm.register_forward_hook(self._hook) for st in model.segformer.stages]

    def _hook(self, _m, _i, out) -> None:
        self.feats.append(out)

    def take(self) -> list[torch.Tensor]:
        f, self.feats = self.feats, []
        return f

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def make_loss(teacher, cfg: DistillConfig, class_weights, dice_weight: float = 1.0, student=None):
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    t_feats = _StageFeatures(teacher) if cfg.feature_weight > 0 else None
    s_feats = _StageFeatures(student) if cfg.feature_weight > 0 else None
    T = cfg.temperature

    def loss_fn(logits, x, y):
        with torch.no_grad():
            t_logits = teacher(pixel_values=x).logits
        labelled = (y != UNLABELLED).flatten(1).any(1)
        kl = F.kl_div(F.log_softmax(logits / T, 1), F.softmax(t_logits / T, 1), reduction="none").sum(1).mean()
        loss = cfg.alpha * T * T * kl
        if bool(labelled.any()):  # the ground-truth term over the labelled images of the batch
            loss = loss + (1 - cfg.alpha) * seg_loss(logits[labelled], y[labelled], class_weights, dice_weight)
        if t_feats is not None:
            tf, sf = t_feats.take(), s_feats.take()
            if len(tf) == len(sf) and all(a.shape == b.shape for a, b in zip(tf, sf)):
                loss = loss + cfg.feature_weight * sum(F.mse_loss(b, a) for a, b in zip(tf, sf))
        return loss

    return loss_fn


def teacher_masks(teacher, meta, originals, progress: bool = False) -> list:
    """(image, the teacher's predicted mask at the image's size) for each (image, mask) pair,
    predicted the way every edgeseg model predicts (``Segmenter.predict``)."""
    import sys

    from tqdm import tqdm

    from edgeseg.runners import torch_segmenter

    seg = torch_segmenter(teacher.eval(), meta)
    return [(im, np.asarray(seg.predict(im))) for im, _ in
            tqdm(originals, desc="teacher masks", unit="img", disable=not progress, file=sys.stderr, leave=False)]


def distill(student, teacher, meta, train: TrainConfig, dcfg: DistillConfig, teacher_path: str | Path | None = None,
            student_note: str = "", overwrite: bool = False,
            announce: Callable[[float, int], None] | None = None) -> Path:
    """Train ``student`` towards ``teacher`` on train.data; writes the kept student to train.out
    (the best epoch by agreement with the teacher, or the starting student when no epoch beats
    it; see the module doc) and returns that path. train.out follows the training output
    policy (``edgeseg.train.resume.plan``): new, an unfinished run with the same settings
    (resumed), or with ``overwrite`` an earlier checkpoint to replace.

    ``announce(seconds_per_step, steps)``, when given, is called before training starts with the
    measured time of one training step (a few steps timed on a copy of the student) and the
    number of steps the run will take, so the caller can say how long it will last."""
    from edgeseg.train import resume as R

    if meta.intensity and not train.intensity:  # [intensity] the student reads images as its teacher did
        from dataclasses import replace

        from edgeseg.runtime.intensity import IntensityPolicy

        train = replace(train, intensity=IntensityPolicy.from_dict(meta.intensity).spec())
    _, state = R.plan(train, overwrite=overwrite)
    pp: Preprocess = meta.preprocess
    nc = len(meta.classes)
    train_s = D.discover(train.data, train.train_split)
    val_s = D.discover(train.data, train.val_split) if train.val_split else train_s
    xs, ys, _ = load_arrays(train_s, pp, nc, intensity=meta.intensity or None)
    cw = torch.tensor(class_weights_for(ys, nc), dtype=torch.float32)  # from the labelled images only
    if dcfg.extra_images:
        xs, ys = _with_unlabelled(xs, ys, dcfg.extra_images, pp, meta.intensity or None)
    _, _, val_orig = load_arrays(val_s, pp, nc, keep_original=True, intensity=meta.intensity or None)
    names = [s.name for s in val_s]
    device = train.device if train.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    agree_pairs = teacher_masks(teacher, meta, val_orig, train.progress)  # the teacher's masks as the target
    teacher.to(device)
    student.to(device)
    start_agreement = evaluate_model(student, agree_pairs, pp, nc, device, names=names)["mean_dice"]
    start_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
    student.train()
    cw = cw.to(device)
    loss_fn = make_loss(teacher, dcfg, cw if train.class_weighting else None, train.dice_weight, student)
    if announce is not None:
        announce(_step_seconds(student, loss_fn, xs, ys, pp, train.batch_size, device),
                 math.ceil(len(xs) / train.batch_size) * max(train.epochs - (state.epoch if state else 0), 0))
    provenance = {"distilled_from": {"path": Path(teacher_path).name if teacher_path else None,
                                     "sha256": checkpoint_sha256(teacher_path) if teacher_path else None,
                                     "provenance": meta.provenance},
                  "student": student_note, "data": str(Path(train.data).resolve()),
                  "train_split": train.train_split, "train_set": D.fingerprint(train_s)}
    out = fit(student, xs, ys, agree_pairs, names, pp, train, provenance, loss_fn=loss_fn,
              extra_training={"distill": dcfg.__dict__, "val_metric": "agreement with the teacher's masks"},
              state=state)
    return _keep_better(out, student, start_state, start_agreement, val_orig, names, pp, nc, device)


def _with_unlabelled(xs: np.ndarray, ys: np.ndarray, folder: str, pp: Preprocess,
                     intensity=None) -> tuple[np.ndarray, np.ndarray]:
    """The training arrays with the images of ``folder`` (masks not needed) appended, each with
    a mask of :data:`UNLABELLED`."""
    from edgeseg.runtime.preprocess import resize

    extra = D.discover(folder, None, require_masks=False)
    if not extra:
        raise ConfigError(f"--distill-images {folder}: no images found")
    imgs = np.empty((len(extra), pp.height, pp.width, 3), np.uint8)
    for i, s in enumerate(extra):
        im = D.read_image(s.image, intensity)  # [intensity] mapped as the teacher's training images were
        if im.dtype != np.uint8:
            raise DataError(f"{s.image} holds {im.dtype} pixels and the teacher records no intensity policy "
                            "to map them (train it with --intensity)")
        im = im.astype(np.float32)
        imgs[i] = np.clip(resize(im, pp.height, pp.width) + 0.5, 0, 255).astype(np.uint8)
    log.info("distillation: %d labelled + %d unlabelled images", len(xs), len(extra))
    masks = np.full((len(extra), pp.height, pp.width), UNLABELLED, np.uint8)
    return np.concatenate([xs, imgs]), np.concatenate([ys, masks])


def _step_seconds(student, loss_fn, xs, ys, pp, batch_size: int, device) -> float:
    from edgeseg.compress.progress import time_train_steps
    from edgeseg.train.augment import to_tensor

    x = to_tensor(torch.from_numpy(xs[:batch_size]), pp, device)
    return time_train_steps(student, loss_fn, x, torch.from_numpy(ys[:batch_size]).to(device))


def _keep_better(out: Path, student, start_state: dict, start_agreement: float, val_orig, names, pp, nc,
                 device) -> Path:
    """Record the selection in the checkpoint at ``out``; replace it by the starting student
    when the best epoch agrees less with the teacher than the start did."""
    model, kept_meta = load_checkpoint(out, device=str(device))
    best_agreement = float(kept_meta.metrics.get("val", {}).get("mean_dice", float("-inf")))
    training = dict(kept_meta.training or {})
    best_epoch = training.get("best_epoch", kept_meta.metrics.get("epoch"))
    kept = "best epoch"
    if not best_agreement >= start_agreement:
        kept = "starting point"
        student.load_state_dict(start_state)
        model = student
        log.warning("distillation did not beat its starting point on the validation set (agreement with the "
                    "teacher %.4f at best vs %.4f at the start): keeping the starting student",
                    best_agreement, start_agreement)
    gt = evaluate_model(model, val_orig, pp, nc, device, names=names)
    training["selection"] = {"by": "validation agreement (Dice) with the teacher's masks",
                             "start_agreement": float(start_agreement), "best_agreement": best_agreement,
                             "best_epoch": best_epoch, "kept": kept}
    kept_meta.training = training
    kept_meta.metrics = {**kept_meta.metrics, "agreement": {"mean_dice": best_agreement if kept == "best epoch"
                                                            else float(start_agreement)},
                         "val": {k: v for k, v in gt.items() if k != "per_class"}}
    from edgeseg.train.resume import RESUME_DIR

    unfinished = (Path(out) / RESUME_DIR).is_dir()  # stopped early (time budget): keep its resume state
    from edgeseg.track import LOG_DIR

    save_checkpoint(model.eval(), kept_meta, out, keep=(RESUME_DIR, LOG_DIR) if unfinished else (LOG_DIR,))
    return Path(out)


def student_from_variant(teacher, variant: str, num_labels: int):
    student = build_model(variant, num_labels)
    n = init_from_teacher(student, teacher)
    log.info("student %s: %d tensors initialised from the teacher", variant, n)
    return student, n


def load_teacher(path: str | Path):
    return load_checkpoint(path)
