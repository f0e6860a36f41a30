"""Budgets a clinician would sign: how far a compressed model may stray from its teacher.

A candidate is measured against its teacher on the labelled validation images with four
figures (:func:`fidelity`), and each is held to a budget (:class:`Budgets`, :func:`check`):

``mean_drop``
    teacher's mean Dice (vs the ground truth) minus the candidate's (``--max-dice-drop``,
    default 0.01).
``image_drop``
    a quantile (``--image-quantile``, default 0.95) of the per-image Dice drop
    (teacher's Dice on that image minus the candidate's): the mean hides the images a
    reader sees go wrong (``--max-image-drop``, default 0.05).
``agreement``
    the mean, over images, of the Dice between the candidate's mask and the teacher's mask;
    the ground truth is not involved (``--min-agreement``, default 0.95).
``lost_lesions``
    lesions are the 8-connected components of the teacher's predicted foreground (any
    non-background class) of at least ``--min-lesion-px`` pixels (default 9: a 3 x 3 blob) at
    the model's input resolution (scaled to each image's size): specks smaller than that are
    below what the model resolves and no reader counts them as lesions. One is *lost* when the
    candidate's foreground no longer overlaps it by a single pixel (``--max-lost-lesions``,
    default 0).

Per-image Dice: binary models, Dice of the foreground masks; multi-class, the mean over the
classes present in either mask; 1.0 when both masks are empty (nothing to find, nothing
found). The mean drop is taken from the same per-image figures unless the caller passes the
mean Dice it already measured (``edgeseg compress`` passes its stage table's).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from edgeseg.errors import ConfigError

# (key, what it is called in a sentence, the budget's field, "max" or "min")
FIGURES = (
    ("mean_drop", "mean Dice drop", "max_dice_drop", "max"),
    ("image_drop", "per-image Dice drop", "max_image_drop", "max"),
    ("agreement", "mean agreement (Dice with the teacher's masks)", "min_agreement", "min"),
    ("lost_lesions", "lost lesions (teacher's lesions the model no longer touches)", "max_lost_lesions", "max"),
)


@dataclass(frozen=True)
class Budgets:
    """The four budgets; None switches one off."""

    max_dice_drop: float | None = 0.01
    max_image_drop: float | None = 0.05
    image_quantile: float = 0.95
    min_agreement: float | None = 0.95
    max_lost_lesions: int | None = 0
    min_lesion_px: int = 9  # what counts as a lesion: pixels at the model's input resolution

    def __post_init__(self) -> None:
        for key in ("max_dice_drop", "max_image_drop", "min_agreement"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                  or not 0 <= v <= 1):
                raise ConfigError(f"--{key.replace('_', '-')} must be a number in [0, 1], got {v!r}")
        q = self.image_quantile
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not math.isfinite(q) or not 0 < q <= 1:
            raise ConfigError(f"--image-quantile must be in (0, 1], got {q!r}")
        n = self.max_lost_lesions
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ConfigError(f"--max-lost-lesions must be an integer >= 0, got {n!r}")
        px = self.min_lesion_px
        if isinstance(px, bool) or not isinstance(px, int) or px < 1:
            raise ConfigError(f"--min-lesion-px must be an integer >= 1, got {px!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line: every budget that is on."""
        parts = []
        if self.max_dice_drop is not None:
            parts.append(f"mean Dice drop <= {self.max_dice_drop:g}")
        if self.max_image_drop is not None:
            parts.append(f"p{_pct(self.image_quantile)} per-image Dice drop <= {self.max_image_drop:g}")
        if self.min_agreement is not None:
            parts.append(f"agreement >= {self.min_agreement:g}")
        if self.max_lost_lesions is not None:
            parts.append(f"lost lesions (>= {self.min_lesion_px} px at the model's input) <= {self.max_lost_lesions}")
        return ", ".join(parts) or "no budgets"


def _pct(q: float) -> str:
    return format(q * 100, "g")


def image_dice(pred: np.ndarray, ref: np.ndarray, num_classes: int = 2) -> float:
    """Dice between two label masks of one image (see the module doc for the conventions)."""
    p, r = np.asarray(pred), np.asarray(ref)
    classes = [1] if num_classes <= 2 else [c for c in range(1, num_classes) if (p == c).any() or (r == c).any()]
    if num_classes <= 2:
        p, r = p > 0, r > 0
    else:
        p = p[None] == np.asarray(classes)[:, None, None]
        r = r[None] == np.asarray(classes)[:, None, None]
        if not classes:
            return 1.0
    axes = tuple(range(p.ndim - 2, p.ndim))
    inter = np.count_nonzero(p & r, axis=axes)
    total = np.count_nonzero(p, axis=axes) + np.count_nonzero(r, axis=axes)
    dice = np.where(total > 0, 2.0 * inter / np.maximum(total, 1), 1.0)
    return float(np.mean(dice))


def lost_lesions(pred: np.ndarray, ref: np.ndarray, min_area: float = 0) -> tuple[int, int]:
    """(lesions of ``ref`` of at least ``min_area`` pixels, how many of them ``pred``'s
    foreground does not overlap at all)."""
    from edgeseg.measure.accuracy import connected_components

    labels, areas = connected_components(np.asarray(ref) > 0)
    if areas.size == 0:
        return 0, 0
    hit = np.bincount(labels[np.asarray(pred) > 0], minlength=areas.size + 1)[1:]
    big = areas >= min_area
    return int(np.count_nonzero(big)), int(np.count_nonzero((hit == 0) & big))


def min_lesion_area(shape: tuple[int, ...], min_px: int, grid: tuple[int, int] | None) -> float:
    """``min_px`` pixels of the model's input grid (H, W) in pixels of an image of ``shape``
    (``min_px`` itself when the grid is unknown)."""
    if grid is None:
        return float(min_px)
    return float(min_px) * (shape[-2] * shape[-1]) / float(grid[0] * grid[1])


def fidelity(masks: Sequence[np.ndarray], teacher_masks: Sequence[np.ndarray], gts: Sequence[np.ndarray],
             names: Sequence[str], num_classes: int = 2, quantile: float = 0.95,
             mean_drop: float | None = None, min_lesion_px: int = 9, grid: tuple[int, int] | None = None) -> dict:
    """The four figures of a candidate (``masks``) against its teacher (``teacher_masks``) on
    the images whose ground truths are ``gts``; plus the worst images and where lesions were
    lost. ``mean_drop``: the mean Dice drop the caller measured (else from the per-image Dice).
    ``min_lesion_px`` / ``grid``: what counts as a lesion (pixels at the model's input grid)."""
    if not (len(masks) == len(teacher_masks) == len(gts) == len(names)) or not masks:
        raise ConfigError("fidelity needs one candidate mask, teacher mask, ground truth and name per image")
    drops, agree, lesions, lost, where = [], [], 0, 0, []
    for m, t, g, n in zip(masks, teacher_masks, gts, names):
        drops.append(image_dice(t, g, num_classes) - image_dice(m, g, num_classes))
        agree.append(image_dice(m, t, num_classes))
        k, k_lost = lost_lesions(m, t, min_lesion_area(np.shape(t), min_lesion_px, grid))
        lesions += k
        lost += k_lost
        if k_lost:
            where.append({"image": str(n), "lost": k_lost, "of": k})
    d = np.asarray(drops, dtype=np.float64)
    worst = np.argsort(-d)[:5]
    return {
        "images": len(masks),
        "mean_drop": float(d.mean()) if mean_drop is None else float(mean_drop),
        "image_quantile": float(quantile),
        "image_drop": float(np.quantile(d, quantile)),
        "share_images_over_0.05": float((d > 0.05).mean()),
        "worst_images": [{"image": str(names[i]), "drop": float(d[i])} for i in worst],
        "agreement": float(np.mean(agree)),
        "min_agreement_image": float(np.min(agree)),
        "lesions": int(lesions),
        "min_lesion_px": int(min_lesion_px),
        "lost_lesions": int(lost),
        "lost_where": where[:20],
    }


def check(fig: dict, budgets: Budgets) -> list[dict]:
    """Each budget ``fig`` (a :func:`fidelity` dict) misses: ``{"budget", "what", "measured",
    "limit", "kind"}``; empty when every budget holds. A figure that could not be measured
    (None, NaN) misses its budget."""
    missed = []
    for key, what, field, kind in FIGURES:
        limit = getattr(budgets, field)
        if limit is None:
            continue
        v = fig.get(key)
        bad = v is None or (isinstance(v, float) and math.isnan(v))
        if not bad:
            bad = v > limit if kind == "max" else v < limit
        if bad:
            if key == "image_drop":
                what = f"p{_pct(budgets.image_quantile)} {what}"
            missed.append({"budget": field, "what": what, "measured": v, "limit": limit, "kind": kind})
    return missed


def shortfall(fig: dict, budgets: Budgets) -> float:
    """How far ``fig`` is from meeting every budget, each miss scaled by its budget's size (0
    when all hold): what "the closest candidate" means."""
    total = 0.0
    for m in check(fig, budgets):
        v, lim = m["measured"], m["limit"]
        if v is None or (isinstance(v, float) and math.isnan(v)):
            total += 1e6
            continue
        scale = max(abs(lim), 0.01) if m["budget"] != "max_lost_lesions" else max(lim, 1)
        total += abs(v - lim) / scale
    return total


def miss_line(m: dict, closest: str | None = None, closest_value=None) -> str:
    """One line naming a missed budget, the measured value, the budget, and the closest candidate."""
    op = "<=" if m["kind"] == "max" else ">="
    line = f"over budget: {m['what']} is {_fmt(m['measured'])}, budget {op} {_fmt(m['limit'])}"
    if closest:
        line += f" (closest candidate: {closest}" + ("" if closest_value is None else f", {_fmt(closest_value)}") + ")"
    return line


def _fmt(v) -> str:
    if v is None:
        return "not measured"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    return f"{float(v):.4f}"
