"""Segmentation metrics for binary and multi-class masks, in numpy only (device runtime).

Conventions for empty masks (chosen so that no metric is ever NaN except AUC):

- Dice and IoU are 1.0 when both prediction and ground truth are empty (nothing was there
  and nothing was predicted); when only one of them is empty they are 0.0.
- Precision is 1.0 when there is no positive prediction (no false positive was made).
- Recall is 1.0 when the ground truth is empty (there was nothing to miss).
- Specificity is 1.0 when the ground truth has no negative pixel.
- AUC (ROC, rank-based Mann-Whitney with average ranks for ties) is NaN when no probability
  map is given or the ground truth has only one class; means skip NaN AUCs.
- HD95 is 0.0 when both masks are empty and +inf when exactly one is empty; aggregated means
  use the finite values only and count the infinite ones in ``hd95_inf``.

HD95 definition: the boundary of a mask is its foreground pixels having at least one
4-neighbour that is background, pixels outside the image counting as background (so
foreground on the image edge is boundary). HD95 is max(P95(d(A->B)), P95(d(B->A))), where
d(A->B) are the Euclidean distances from each boundary pixel centre of A to the nearest
boundary pixel centre of B and P95 is ``np.percentile(..., 95)`` (linear interpolation).
Distances are in pixels, or in physical units when ``spacing=(sy, sx)`` is given.
Pooled metrics apply the same conventions to confusion counts summed over all images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeseg.runtime.errors import InputError

__all__ = [
    "CONVENTIONS", "METRICS", "binary_confusion", "dice_score", "iou_score", "roc_auc", "hd95",
    "euclidean_distance_transform", "mask_boundary", "image_metrics", "multiclass_image_metrics",
    "MetricAccumulator",
]

CONVENTIONS: str = __doc__.split("\n\n", 1)[1].strip()
METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "specificity", "accuracy", "auc", "hd95")
_RATIOS = ("dice", "iou", "precision", "recall", "specificity", "accuracy")


# --------------------------------------------------------------------------- validation
def _mask(a: np.ndarray, name: str) -> np.ndarray:
    """A bool array from a bool or 0/1 numeric array; InputError otherwise."""
    a = np.asarray(a)
    if a.dtype == bool:
        return a
    if a.dtype.kind not in "iuf" or not np.all((a == 0) | (a == 1)):
        raise InputError(f"{name} must be a binary mask (bool or 0/1 values), got dtype {a.dtype}")
    return a.astype(bool)


def _pair(pred: np.ndarray, gt: np.ndarray, ndim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    p, g = _mask(pred, "pred"), _mask(gt, "gt")
    if p.shape != g.shape:
        raise InputError(f"pred and gt shapes differ: {p.shape} vs {g.shape}")
    if ndim is not None and p.ndim != ndim:
        raise InputError(f"expected {ndim}-D masks, got shape {p.shape}")
    if p.size == 0:
        raise InputError(f"masks are empty arrays: shape {p.shape}")
    return p, g


def _spacing(spacing: Sequence[float] | None) -> tuple[float, float]:
    if spacing is None:
        return 1.0, 1.0
    try:
        sy, sx = (float(s) for s in spacing)
    except (TypeError, ValueError):
        raise InputError(f"spacing must be a pair (sy, sx), got {spacing!r}") from None
    if not (np.isfinite(sy) and np.isfinite(sx) and sy > 0 and sx > 0):
        raise InputError(f"spacing must be finite and positive, got {spacing!r}")
    return sy, sx


def _nanmean(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


# --------------------------------------------------------------------------- overlap metrics
def binary_confusion(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) pixel counts for two binary masks of the same shape."""
    p, g = _pair(pred, gt)
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(g)) - tp
    return tp, fp, fn, p.size - tp - fp - fn


def _ratio(num: int, den: int) -> float:
    return 1.0 if den == 0 else num / den


def _ratios(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """Overlap metrics from confusion counts, with the empty conventions of this module."""
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
    }


def dice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice = 2|P&G| / (|P|+|G|); 1.0 when both masks are empty."""
    return _ratios(*binary_confusion(pred, gt))["dice"]


def iou_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU (Jaccard) = |P&G| / |P|G|; 1.0 when both masks are empty."""
    return _ratios(*binary_confusion(pred, gt))["iou"]


# --------------------------------------------------------------------------- ROC-AUC
def roc_auc(prob: np.ndarray, gt: np.ndarray) -> float:
    """ROC-AUC of scores ``prob`` against binary ``gt`` (Mann-Whitney U, average ranks for ties).

    O(n log n). NaN when ``gt`` has only one class.
    """
    g = _mask(gt, "gt").ravel()
    s = np.asarray(prob)
    if s.shape != np.shape(gt):
        raise InputError(f"prob and gt shapes differ: {s.shape} vs {np.shape(gt)}")
    if s.dtype.kind not in "iufb":
        raise InputError(f"prob must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64).ravel()
    if not np.all(np.isfinite(s)):
        raise InputError("prob contains NaN or infinite values")
    n_pos = int(np.count_nonzero(g))
    n_neg = g.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    ss = s[order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    ends = np.r_[starts[1:], ss.size]
    ranks = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # 1-based average ranks
    u = ranks[g[order]].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


# --------------------------------------------------------------------------- distances
def _lower_envelope(f: np.ndarray) -> np.ndarray:
    """min_q f[r, q] + (x - q)^2 for every row r and x (Felzenszwalb-Huttenlocher).

    ``f`` is (R, n) with +inf for "no feature"; the 1-D algorithm runs on all rows at once,
    looping over positions in Python and over rows in numpy.
    """
    n_rows, n = f.shape
    rows = np.arange(n_rows)
    v = np.zeros((n_rows, n), dtype=np.intp)  # positions of the envelope's parabolas
    z = np.full((n_rows, n + 1), np.inf)  # boundaries between them
    k = np.full(n_rows, -1, dtype=np.intp)  # index of the last parabola per row
    for q in range(n):
        fq = f[:, q]
        act = np.isfinite(fq)
        if not act.any():
            continue
        first = act & (k < 0)
        r = rows[act & ~first]
        if first.any():
            k[first] = 0
            v[first, 0] = q
            z[first, 0] = -np.inf
        if r.size == 0:
            continue
        kr, fr = k[r], fq[r]
        p = v[r, kr]
        s = ((fr + q * q) - (f[r, p] + p * p)) / (2.0 * (q - p))
        pop = s <= z[r, kr]
        while pop.any():
            i = np.flatnonzero(pop)
            kr[i] -= 1
            p = v[r[i], kr[i]]
            s[i] = ((fr[i] + q * q) - (f[r[i], p] + p * p)) / (2.0 * (q - p))
            pop[i] = s[i] <= z[r[i], kr[i]]
        kr += 1
        k[r] = kr
        v[r, kr] = q
        z[r, kr] = s
        z[r, kr + 1] = np.inf
    out = np.full((n_rows, n), np.inf)
    kk = np.zeros(n_rows, dtype=np.intp)
    for x in range(n):
        adv = z[rows, kk + 1] < x
        while adv.any():
            i = np.flatnonzero(adv)
            kk[i] += 1
            adv[i] = z[i, kk[i] + 1] < x
        p = v[rows, kk]
        out[:, x] = (x - p) ** 2 + f[rows, p]
    out[k < 0] = np.inf
    return out


def euclidean_distance_transform(features: np.ndarray, spacing: Sequence[float] | None = None,
                                 squared: bool = False) -> np.ndarray:
    """Exact Euclidean distance from every pixel to the nearest True pixel of a 2-D mask.

    Separable: exact 1-D distances along axis 0 by running min/max scans, then the
    Felzenszwalb-Huttenlocher lower envelope along axis 1. ``spacing=(sy, sx)`` gives
    anisotropic pixel sizes. All +inf when ``features`` has no True pixel.
    """
    feat = _mask(features, "features")
    if feat.ndim != 2:
        raise InputError(f"expected a 2-D mask, got shape {feat.shape}")
    sy, sx = _spacing(spacing)
    h, w = feat.shape
    idx = np.arange(h, dtype=np.float64)[:, None]
    above = np.maximum.accumulate(np.where(feat, idx, -np.inf), axis=0)
    below = np.minimum.accumulate(np.where(feat, idx, np.inf)[::-1], axis=0)[::-1]
    col = np.minimum(idx - above, below - idx) * (sy / sx)  # in units of sx
    out = np.full((h, w), np.inf)
    has = np.isfinite(col).any(axis=1)
    if has.any():
        out[has] = _lower_envelope(col[has] ** 2) * (sx * sx)
    return out if squared else np.sqrt(out)


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a background 4-neighbour; outside the image counts as background."""
    m = np.pad(_mask(mask, "mask"), 1, constant_values=False)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m[1:-1, 1:-1] & ~inner


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance between the boundaries of two 2-D masks.

    max(P95 of pred->gt, P95 of gt->pred) boundary distances; 0.0 when both masks are empty,
    +inf when exactly one is. In pixels, or physical units with ``spacing=(sy, sx)``.
    """
    p, g = _pair(pred, gt, ndim=2)
    sp = _spacing(spacing)
    bp, bg = mask_boundary(p), mask_boundary(g)
    if not bp.any() and not bg.any():
        return 0.0
    if not bp.any() or not bg.any():
        return float("inf")
    # Nearest features of boundary pixels lie within the bounding box of both boundaries.
    ys, xs = np.nonzero(bp | bg)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    bp, bg = bp[box], bg[box]
    d_pg = euclidean_distance_transform(bg, sp)[bp]
    d_gp = euclidean_distance_transform(bp, sp)[bg]
    return float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))


# --------------------------------------------------------------------------- per image
def image_metrics(pred: np.ndarray, gt: np.ndarray, prob: np.ndarray | None = None,
                  spacing: Sequence[float] | None = None) -> dict[str, float]:
    """All metrics of one binary 2-D image: the ratios of :data:`METRICS`, auc, hd95, tp/fp/fn/tn.

    ``prob`` is an optional (H, W) foreground probability (or score) map for the AUC.
    """
    p, g = _pair(pred, gt, ndim=2)
    tp, fp, fn, tn = binary_confusion(p, g)
    out: dict[str, float] = _ratios(tp, fp, fn, tn)
    out["auc"] = float("nan") if prob is None else roc_auc(prob, g)
    out["hd95"] = hd95(p, g, spacing)
    out.update(tp=tp, fp=fp, fn=fn, tn=tn)
    return out


def _labels(a: np.ndarray, name: str, num_classes: int) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "iub" and not (a.dtype.kind == "f" and np.all(a == np.round(a))):
        raise InputError(f"{name} must be an integer label map, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= num_classes):
        raise InputError(f"{name} has labels outside [0, {num_classes - 1}]")
    return a.astype(np.intp)


def multiclass_image_metrics(pred_labels: np.ndarray, gt_labels: np.ndarray, num_classes: int,
                             probs: np.ndarray | None = None, spacing: Sequence[float] | None = None,
                             ignore_background: bool = True) -> dict[int, dict[str, float]]:
    """One-vs-rest :func:`image_metrics` per class id of two (H, W) label maps.

    ``probs`` is an optional (C, H, W) probability map. Class 0 is skipped when
    ``ignore_background``.
    """
    if int(num_classes) != num_classes or num_classes < 2:
        raise InputError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    num_classes = int(num_classes)
    pl, gl = _labels(pred_labels, "pred_labels", num_classes), _labels(gt_labels, "gt_labels", num_classes)
    if pl.shape != gl.shape:
        raise InputError(f"pred_labels and gt_labels shapes differ: {pl.shape} vs {gl.shape}")
    if probs is not None and np.shape(probs) != (num_classes, *gl.shape):
        raise InputError(f"probs must have shape {(num_classes, *gl.shape)}, got {np.shape(probs)}")
    return {c: image_metrics(pl == c, gl == c, None if probs is None else np.asarray(probs)[c], spacing)
            for c in range(1 if ignore_background else 0, num_classes)}


# --------------------------------------------------------------------------- aggregation
def _summarize(rows: list[dict], counts: np.ndarray) -> dict:
    """Means over images, median dice, pooled ratios from summed counts, for one class."""
    col = {m: np.array([r[m] for r in rows], dtype=np.float64) for m in METRICS}
    out: dict = {"n_images": len(rows)}
    for m in _RATIOS + ("auc",):
        out[f"mean_{m}"] = _nanmean(col[m])
    out["auc_n"] = int(np.count_nonzero(~np.isnan(col["auc"])))
    hd = col["hd95"]
    out["mean_hd95"] = _nanmean(hd[np.isfinite(hd)])
    out["hd95_inf"] = int(np.count_nonzero(np.isinf(hd)))
    out["median_dice"] = float(np.median(col["dice"])) if rows else float("nan")
    tp, fp, fn, tn = (int(c) for c in counts)
    pooled = _ratios(tp, fp, fn, tn) if rows else dict.fromkeys(_RATIOS, float("nan"))
    out.update({f"pooled_{k}": v for k, v in pooled.items()})
    out.update(tp=tp, fp=fp, fn=fn, tn=tn)
    return out


class MetricAccumulator:
    """Collects per-image metrics and pooled confusion counts, image by image.

    Binary when ``num_classes <= 2`` (``add`` takes foreground masks and an optional (H, W)
    probability map); multi-class otherwise (``add`` takes label maps and optional (C, H, W)
    probabilities), scored one-vs-rest per class (class 0 skipped when ``ignore_background``).
    """

    def __init__(self, num_classes: int = 2, spacing: Sequence[float] | None = None,
                 ignore_background: bool = True) -> None:
        if int(num_classes) != num_classes or num_classes < 1:
            raise InputError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.multiclass = self.num_classes > 2
        self.spacing = None if spacing is None else _spacing(spacing)
        self.ignore_background = ignore_background
        self.classes = (list(range(1 if ignore_background else 0, self.num_classes))
                        if self.multiclass else [1])
        self._rows: dict[int, list[dict]] = {c: [] for c in self.classes}
        self._counts = {c: np.zeros(4, dtype=np.int64) for c in self.classes}
        self._names: list[str] = []

    def add(self, pred: np.ndarray, gt: np.ndarray, prob: np.ndarray | None = None,
            name: str | None = None, spacing: Sequence[float] | None = None) -> dict:
        """Score one image and keep its metrics; ``spacing`` overrides the accumulator's.

        Returns the image's metrics (per class id for multi-class).
        """
        sp = self.spacing if spacing is None else spacing
        if self.multiclass:
            per = multiclass_image_metrics(pred, gt, self.num_classes, prob, sp, self.ignore_background)
        else:
            if prob is not None and np.ndim(prob) == 3 and np.shape(prob)[0] == 2:
                prob = np.asarray(prob)[1]  # (2, H, W) probabilities: keep the foreground
            per = {1: image_metrics(pred, gt, prob, sp)}
        name = f"image_{len(self._names)}" if name is None else str(name)
        self._names.append(name)
        for c, m in per.items():
            self._rows[c].append(m)
            self._counts[c] += [m["tp"], m["fp"], m["fn"], m["tn"]]
        return per if self.multiclass else per[1]

    def __len__(self) -> int:
        return len(self._names)

    def rows(self) -> list[dict]:
        """Per-image rows with ``name`` (multi-class: one row per image and class, with ``class``)."""
        if not self.multiclass:
            return [{"name": n, **r} for n, r in zip(self._names, self._rows[1])]
        return [{"name": n, "class": c, **self._rows[c][i]}
                for i, n in enumerate(self._names) for c in self.classes]

    def summary(self) -> dict:
        """Means over images (``mean_<metric>``; ``mean_hd95`` over finite values, ``hd95_inf``
        counts infinite ones; ``mean_auc`` over defined values, ``auc_n`` counts them),
        ``median_dice``, ``pooled_<ratio>`` from summed counts, ``n_images``.

        Multi-class: ``per_class`` maps class id to that summary; the top-level keys are macro
        means over those classes (NaNs skipped), except ``hd95_inf``, ``auc_n`` and the counts,
        which are summed.
        """
        per = {c: _summarize(self._rows[c], self._counts[c]) for c in self.classes}
        if not self.multiclass:
            return per[1]
        summed = ("hd95_inf", "auc_n", "tp", "fp", "fn", "tn")
        out: dict = {"n_images": len(self._names)}
        for key in per[self.classes[0]]:
            if key == "n_images":
                continue
            vals = [per[c][key] for c in self.classes]
            out[key] = int(sum(vals)) if key in summed else _nanmean(vals)
        out["per_class"] = per
        return out
