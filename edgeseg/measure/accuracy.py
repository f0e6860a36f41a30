"""How much accuracy a model keeps: Dice/IoU, their drop vs a reference, lesion-level sensitivity.

Accuracy (``score``, ``compare_scores``, ``accuracy``)
    Per-image Dice/IoU against the ground truth (``MetricAccumulator``, so the same
    conventions as ``edgeseg evaluate``), and per image the drop ``reference Dice - model
    Dice``: mean, median, p95, the worst image (name and drop) and the share of images whose
    Dice drops by more than ``drop_threshold`` (0.05). ``agreement_dice`` is the mean Dice
    between the model's mask and the reference's mask (ground truth not involved). The
    reference itself gets no drop figures (``drop`` is None): compared with itself every
    drop would be a meaningless zero.

Lesion-level sensitivity
    Lesions are the 8-connected components of the ground-truth foreground (any non-background
    class). A lesion is *detected* when the predicted foreground covers at least 50% of its
    pixels (``rule="coverage"``, the default). Coverage was chosen over an IoU rule because it
    asks the question a reader asks ("was this lesion found?") without penalising a prediction
    that merges two neighbouring lesions or draws a generous margin around a small one, which
    an IoU threshold does for small lesions. ``rule="iou"`` (IoU > 0.1 between the lesion and
    the predicted components touching it) is available for comparison with papers using it.
    Lesions are bucketed by area as a fraction of the image: ``<1%``, ``1-5%``, ``>5%``.
    ``lost_vs_reference`` counts lesions the reference detected and the model missed.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgeseg.errors import ConfigError, DataError
from edgeseg.runtime.metrics import MetricAccumulator, dice_score

SIZE_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("<1%", 0.0, 0.01),
    ("1-5%", 0.01, 0.05),
    (">5%", 0.05, math.inf),
)
DETECTION_RULES = {"coverage": 0.5, "iou": 0.1}  # rule -> default threshold


# --------------------------------------------------------------------------- lesions
def connected_components(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Label the connected foreground regions of a 2-D mask.

    -> (labels int32 HxW with 0 = background and 1..n the components, areas int64 (n,) where
    ``areas[i]`` is the pixel count of label ``i + 1``).
    """
    import cv2

    if connectivity not in (4, 8):
        raise ConfigError(f"connectivity must be 4 or 8, got {connectivity}")
    m = np.ascontiguousarray(np.asarray(mask) > 0, dtype=np.uint8)
    if m.ndim != 2:
        raise DataError(f"expected a 2-D mask, got shape {m.shape}")
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=connectivity, ltype=cv2.CV_32S)
    return labels, stats[1:n, cv2.CC_STAT_AREA].astype(np.int64)


def lesion_hits(pred: np.ndarray, gt: np.ndarray, rule: str = "coverage", threshold: float | None = None,
                connectivity: int = 8) -> list[dict]:
    """One record per ground-truth lesion: ``area``, ``area_frac`` (of the image), ``coverage``
    (share of its pixels predicted foreground), ``iou`` (vs the predicted components touching
    it) and ``detected`` under ``rule`` (coverage >= 0.5, or iou > 0.1)."""
    if rule not in DETECTION_RULES:
        raise ConfigError(f"unknown lesion detection rule {rule!r}; known: {', '.join(DETECTION_RULES)}")
    thr = DETECTION_RULES[rule] if threshold is None else float(threshold)
    p = np.asarray(pred) > 0
    g = np.asarray(gt) > 0
    if p.shape != g.shape:
        raise DataError(f"prediction and ground truth shapes differ: {p.shape} vs {g.shape}")
    glab, gareas = connected_components(g, connectivity)
    if gareas.size == 0:
        return []
    plab, _ = connected_components(p, connectivity)
    n = gareas.size
    inter = np.bincount(glab[p], minlength=n + 1)[1:]  # predicted pixels inside each lesion
    out = []
    for i in range(n):
        lesion = glab == i + 1
        touching = np.unique(plab[lesion])
        touching = touching[touching > 0]
        if touching.size:
            pmask = np.isin(plab, touching)
            union = int(np.count_nonzero(pmask | lesion))
            iou = float(inter[i]) / union if union else 0.0
        else:
            iou = 0.0
        coverage = float(inter[i]) / float(gareas[i])
        detected = coverage >= thr if rule == "coverage" else iou > thr
        out.append({"area": int(gareas[i]), "area_frac": float(gareas[i]) / g.size, "coverage": coverage,
                    "iou": iou, "detected": bool(detected)})
    return out


def bucket_of(area_frac: float, buckets=SIZE_BUCKETS) -> str:
    for name, lo, hi in buckets:
        if lo <= area_frac < hi:
            return name
    return buckets[-1][0]


def lesion_sensitivity(hits: Sequence[dict], ref_hits: Sequence[dict] | None = None,
                       buckets=SIZE_BUCKETS) -> dict:
    """Detected / total lesions per size bucket and overall; with ``ref_hits`` (the same
    lesions scored for the reference, in the same order) also the lesions the model lost."""
    names = [b[0] for b in buckets] + ["all"]
    out = {n: {"lesions": 0, "detected": 0, "sensitivity": None} for n in names}
    if ref_hits is not None:
        for n in names:
            out[n]["lost_vs_reference"] = 0
    for i, h in enumerate(hits):
        for n in (bucket_of(h["area_frac"], buckets), "all"):
            out[n]["lesions"] += 1
            out[n]["detected"] += int(h["detected"])
            if ref_hits is not None and ref_hits[i]["detected"] and not h["detected"]:
                out[n]["lost_vs_reference"] += 1
    for n in names:
        if out[n]["lesions"]:
            out[n]["sensitivity"] = out[n]["detected"] / out[n]["lesions"]
    return out


# --------------------------------------------------------------------------- scores
@dataclass
class Scores:
    """Per-image scores of one model on a set (what drops are computed from)."""

    summary: dict
    names: list[str]
    dice: np.ndarray
    iou: np.ndarray
    hits: list[list[dict]]  # per image, per ground-truth lesion
    masks: list[np.ndarray] = field(default_factory=list, repr=False)  # bit-packed foreground
    shapes: list[tuple[int, int]] = field(default_factory=list, repr=False)


def _pack(mask: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(mask) > 0)


def _unpack(packed: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape).astype(bool)


def _image_dice_iou(res: dict, multiclass: bool) -> tuple[float, float]:
    if not multiclass:
        return float(res["dice"]), float(res["iou"])
    return (float(np.mean([r["dice"] for r in res.values()])), float(np.mean([r["iou"] for r in res.values()])))


def _iter_pairs(samples, num_classes: int, source: bool = False):
    from edgeseg.data import folders as D

    for s in samples:
        if isinstance(s, D.Sample):  # source: the pixels as stored, for a model whose intensity policy maps them
            image, gt = D.load_pair(s, num_classes, source=source)
            yield s.name, image, gt
        else:
            yield s  # (name, image, gt)


def score(seg_or_masks, samples, num_classes: int | None = None, rule: str = "coverage",
          threshold: float | None = None, keep_masks: bool = True, progress: bool = False) -> Scores:
    """Score a Segmenter (or a ``{name: mask}`` mapping of its predictions) on labelled samples.

    ``samples`` are ``data.Sample`` objects or ``(name, image, gt)`` triples.
    """
    from tqdm import tqdm

    masks_given = isinstance(seg_or_masks, Mapping)
    nc = num_classes or (2 if masks_given else seg_or_masks.num_classes)
    acc = MetricAccumulator(num_classes=nc)
    names, dice, iou, hits, packed, shapes = [], [], [], [], [], []
    source = not masks_given and getattr(seg_or_masks, "intensity", None) is not None  # [intensity]
    for name, image, gt in tqdm(_iter_pairs(samples, nc, source), total=len(samples), desc="accuracy",
                                disable=not progress, file=sys.stderr, leave=False):
        if masks_given:
            if name not in seg_or_masks:
                raise DataError(f"reference masks have no entry for image {name!r}")
            mask = np.asarray(seg_or_masks[name])
            if mask.shape != gt.shape:
                raise DataError(f"reference mask for {name!r} is {mask.shape}, ground truth is {gt.shape}")
        else:
            mask = seg_or_masks.predict(image)
        res = acc.add(mask, gt, name=name)
        d, j = _image_dice_iou(res, acc.multiclass)
        names.append(name)
        dice.append(d)
        iou.append(j)
        hits.append(lesion_hits(mask, gt, rule, threshold))
        if keep_masks:
            packed.append(_pack(mask))
            shapes.append(mask.shape)
    if not names:
        raise DataError("nothing to score: no images")
    return Scores(acc.summary(), names, np.asarray(dice), np.asarray(iou), hits, packed, shapes)


def compare_scores(scores: Scores, ref: Scores | None, drop_threshold: float = 0.05) -> dict:
    """The accuracy block of a bench row: Dice/IoU, drop statistics, lesion sensitivity.

    ``ref is scores`` (the reference's own row) gives ``is_reference: True`` and no drop
    figures, which would all be zero by construction."""
    s = scores.summary
    out: dict = {
        "n_images": len(scores.names),
        "dice": float(s["mean_dice"]), "iou": float(s["mean_iou"]), "median_dice": float(s["median_dice"]),
        "pooled_dice": s.get("pooled_dice"),
        "is_reference": ref is scores,
        "drop": None,
        "agreement_dice": None,
        "lesions": lesion_sensitivity([h for hs in scores.hits for h in hs]),
        "per_image": [{"name": n, "dice": float(d), "iou": float(j)}
                      for n, d, j in zip(scores.names, scores.dice, scores.iou)],
    }
    if ref is None or ref is scores:
        return out
    if ref.names != scores.names:
        raise DataError("model and reference were scored on different images")
    drop = ref.dice - scores.dice
    worst = int(np.argmax(drop))
    out["drop"] = {
        "reference_dice": float(ref.summary["mean_dice"]),
        "mean": float(drop.mean()), "median": float(np.median(drop)),
        "p95": float(np.percentile(drop, 95)), "max": float(drop[worst]),
        "worst_image": scores.names[worst], "threshold": drop_threshold,
        "share_over_threshold": float(np.mean(drop > drop_threshold)),
        "images_over_threshold": int(np.count_nonzero(drop > drop_threshold)),
        "iou_mean": float((ref.iou - scores.iou).mean()),
    }
    for row, d, rd in zip(out["per_image"], drop, ref.dice):
        row["reference_dice"] = float(rd)
        row["dice_drop"] = float(d)
    if scores.masks and ref.masks:
        agree = [dice_score(_unpack(a, sh), _unpack(b, sh)) for a, b, sh in zip(scores.masks, ref.masks, scores.shapes)]
        out["agreement_dice"] = float(np.mean(agree))
    flat = [h for hs in scores.hits for h in hs]
    ref_flat = [h for hs in ref.hits for h in hs]
    if len(flat) == len(ref_flat):
        out["lesions"] = lesion_sensitivity(flat, ref_flat)
    return out


def accuracy(seg, reference, samples, rule: str = "coverage", threshold: float | None = None,
             drop_threshold: float = 0.05, progress: bool = False) -> dict:
    """Dice/IoU of ``seg`` and their drop vs ``reference`` on labelled ``samples``.

    ``reference``: None (no drop), a Segmenter (scored here), a ``{name: predicted mask}``
    mapping, or ``Scores`` from :func:`score`. See the module doc for every figure.
    """
    mine = score(seg, samples, rule=rule, threshold=threshold, progress=progress)
    if reference is None or isinstance(reference, Scores):
        ref = reference
    elif isinstance(reference, Mapping):
        ref = score(reference, samples, num_classes=seg.num_classes, rule=rule, threshold=threshold)
    else:
        ref = score(reference, samples, rule=rule, threshold=threshold, progress=progress)
    return compare_scores(mine, ref, drop_threshold)
