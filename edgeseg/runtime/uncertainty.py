"""How sure the model is of a mask: per-pixel uncertainty and one per-image score (torch-free).

Per pixel, from the class probabilities ``p`` (C, H, W):

- ``entropy_map``: ``-sum_c p_c log p_c / log C``, in [0, 1]: 1 where every class is equally
  likely, 0 where one class has probability 1. This is the map the runtime returns and the
  ``predict --uncertainty`` heat maps show.
- ``margin_map``: ``1 - (p_top1 - p_top2)``, in [0, 1], the same two end points (a second view,
  cheaper to explain: 0.8 means the best class won by 0.2).

Per image (:func:`summarize`), ``u`` being the entropy map and the predicted foreground every
non-background pixel of the mask:

- ``mean``: mean of ``u`` over the whole image;
- ``foreground``: mean of ``u`` inside the predicted foreground (None when it is empty);
- ``boundary``: mean of ``u`` in the band of pixels within ``band`` px (default 3, square
  neighbourhood) of the predicted foreground's edge, both sides (None when it is empty);
- ``foreground_fraction``: the share of pixels predicted foreground;
- ``area_ratio``: ``mean / (mean + foreground_fraction)``: the uncertain area relative to the area
  the mask claims (0 when both are 0);
- ``score``: ``foreground``, or, when the mask is empty, the largest ``u`` in the image (a
  confidently empty mask scores 0, one that nearly drew a region scores high). This is the one
  number used to rank and flag images, in [0, 1].

How ``score`` was chosen: ``area_ratio`` was declared first. On the Kvasir teacher's
*validation* split (100 images) the Spearman correlation with per-image Dice was -0.68 for
``foreground``, -0.59 ``boundary``, -0.53 ``area_ratio``, -0.43 ``mean``; ``foreground`` was
taken (``benchmarks/triage.py`` records these selection figures and the test figures of every
candidate; the test split had also been looked at with ``area_ratio`` before the switch).

The bundle's manifest may record the distribution of ``score`` on the validation images
(section ``uncertainty``, written by ``edgeseg export``); :class:`UncertaintyProfile` then
places a new image in it: ``percentile`` is the share (0-100) of validation images that were
*more sure* (lower score) than this one, and ``flagged`` is true when the score exceeds the
recorded threshold (the validation scores' ``flag_percentile``-th percentile, 95 by default):
"less sure than 95% of validation images".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeseg.runtime.errors import BundleError, InputError

BAND_PX = 3
FLAG_PERCENTILE = 95.0
SUMMARY_KEYS = ("score", "mean", "foreground", "boundary", "foreground_fraction", "area_ratio")
DEFINITION = "mean normalised entropy inside the predicted foreground; the image's largest when the mask is empty"
SCORE = "score"  # the summary ranked and flagged


def _probs(p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float32)
    if p.ndim != 3 or p.shape[0] < 2:
        raise InputError(f"expected class probabilities of shape (C, H, W) with C >= 2, got {p.shape}")
    return p


def entropy_map(probs) -> np.ndarray:
    """(C, H, W) probabilities -> (H, W) float32 entropy divided by log C, in [0, 1]."""
    p = _probs(probs)
    c = p.shape[0]
    plogp = np.where(p > 0, p * np.log(np.maximum(p, 1e-30)), 0.0)
    return np.clip(-plogp.sum(axis=0) / np.log(c), 0.0, 1.0).astype(np.float32)


def margin_map(probs) -> np.ndarray:
    """(C, H, W) probabilities -> (H, W) float32 ``1 - (top1 - top2)``, in [0, 1]."""
    p = _probs(probs)
    if p.shape[0] == 2:
        return (1.0 - np.abs(p[1] - p[0])).clip(0.0, 1.0).astype(np.float32)
    top2 = np.partition(p, p.shape[0] - 2, axis=0)[-2:]
    return (1.0 - (top2[1] - top2[0])).clip(0.0, 1.0).astype(np.float32)


def _dilate(m: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation by a (2r+1)^2 square, separable (rows then columns), in numpy."""
    out = m.copy()
    for axis in (0, 1):
        src = out.copy()
        n = src.shape[axis]
        for s in range(1, min(r, n - 1) + 1):
            lo = [slice(None)] * 2
            hi = [slice(None)] * 2
            lo[axis], hi[axis] = slice(0, n - s), slice(s, n)
            out[tuple(lo)] |= src[tuple(hi)]
            out[tuple(hi)] |= src[tuple(lo)]
    return out


def boundary_band(mask, band: int = BAND_PX) -> np.ndarray:
    """(H, W) bool: pixels within ``band`` px (square neighbourhood) of the edge of ``mask > 0``,
    on either side; empty when the mask is empty or covers the whole image."""
    fg = np.asarray(mask) > 0
    if band < 1:
        raise InputError(f"band must be at least 1 pixel, got {band}")
    return _dilate(fg, band) & _dilate(~fg, band) if fg.any() else np.zeros_like(fg)


def summarize(mask, probs=None, uncertainty=None, band: int = BAND_PX) -> dict:
    """The per-image summary (see the module doc) of a mask and its probabilities (or an
    uncertainty map already computed from them)."""
    u = entropy_map(probs) if uncertainty is None else np.asarray(uncertainty, np.float32)
    fg = np.asarray(mask) > 0
    if fg.shape != u.shape:
        raise InputError(f"mask {fg.shape} and uncertainty {u.shape} differ in size")
    edge = boundary_band(fg, band)
    mean, frac = float(u.mean()), float(fg.mean())
    inside = float(u[fg].mean()) if fg.any() else None
    return {"score": inside if inside is not None else float(u.max()), "mean": mean, "foreground": inside,
            "boundary": float(u[edge].mean()) if edge.any() else None, "foreground_fraction": frac,
            "area_ratio": mean / (mean + frac) if mean + frac > 0 else 0.0}


# --- the validation distribution (manifest section ``uncertainty``) ------------------------
def profile_section(summaries: list[dict], what: str = "validation images",
                    flag_percentile: float = FLAG_PERCENTILE) -> dict:
    """The manifest section recording the distribution of ``score`` over ``summaries``."""
    if not summaries:
        raise InputError("no images to record an uncertainty distribution from")
    v = np.sort(np.asarray([s[SCORE] for s in summaries], np.float64))
    q = {f"p{k}": float(np.percentile(v, k)) for k in (5, 25, 50, 75, 95)}
    return {"summary": SCORE, "definition": DEFINITION, "band_px": BAND_PX, "images": int(v.size), "source": what,
            "flag_percentile": float(flag_percentile), "threshold": float(np.percentile(v, flag_percentile)),
            "quantiles": q, "values": [round(float(x), 6) for x in v]}


class UncertaintyProfile:
    """The validation distribution of the uncertainty score, read from a manifest section."""

    def __init__(self, section: dict, where: str = "manifest") -> None:
        section = section if isinstance(section, dict) else {}
        values, thr = section.get("values"), section.get("threshold")
        try:
            values = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            values = np.empty(0)
        if (section.get("summary") != SCORE or values.ndim != 1 or values.size == 0 or not np.isfinite(values).all()
                or not isinstance(thr, (int, float)) or isinstance(thr, bool) or not np.isfinite(thr)):
            raise BundleError(f"{where}: 'uncertainty' must record the validation 'values' of the score and a "
                              "finite 'threshold'")
        self.values = np.sort(values)
        self.threshold = float(thr)
        self.flag_percentile = float(section.get("flag_percentile", FLAG_PERCENTILE))
        self.band = int(section.get("band_px", BAND_PX))

    def percentile(self, score: float) -> float:
        """Share (0-100) of validation images with a lower score (more sure) than ``score``."""
        return 100.0 * float(np.searchsorted(self.values, float(score), side="left")) / self.values.size

    def flagged(self, score: float) -> bool:
        """True when ``score`` is above the threshold: less sure than ``flag_percentile``% of validation images."""
        return bool(float(score) > self.threshold)


def profile_of(info, path) -> UncertaintyProfile | None:
    """The manifest's UncertaintyProfile, None when it records no ``uncertainty`` section."""
    section = info.get("uncertainty") if hasattr(info, "get") else None
    return None if section is None else UncertaintyProfile(section, where=str(path))


# --- what Segmenter.predict(..., uncertainty=True) returns ---------------------------------
@dataclass(frozen=True)
class Prediction:
    """A mask with how sure the model was of it. ``percentile`` and ``flagged`` are None when the
    bundle records no validation distribution; ``probabilities`` only when asked for."""

    mask: np.ndarray  # uint8 (H, W)
    uncertainty: np.ndarray  # float32 (H, W), normalised entropy in [0, 1]
    summary: dict  # see summarize()
    percentile: float | None
    flagged: bool | None
    probabilities: np.ndarray | None = None


def assess(mask: np.ndarray, probs: np.ndarray, profile: UncertaintyProfile | None,
           keep_probabilities: bool = False) -> Prediction:
    u = entropy_map(probs)
    s = summarize(mask, uncertainty=u, band=profile.band if profile is not None else BAND_PX)
    return Prediction(mask=mask, uncertainty=u, summary=s,
                      percentile=None if profile is None else profile.percentile(s[SCORE]),
                      flagged=None if profile is None else profile.flagged(s[SCORE]),
                      probabilities=probs if keep_probabilities else None)


# --- a heat map without OpenCV or matplotlib -----------------------------------------------
_ANCHORS = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                     [245, 125, 21], [250, 193, 39], [252, 255, 164]], np.float32)  # dark -> bright


def heat_map(uncertainty) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 RGB: black/purple (sure) to pale yellow (unsure)."""
    u = np.clip(np.nan_to_num(np.asarray(uncertainty, np.float32)), 0.0, 1.0)
    x = u * (len(_ANCHORS) - 1)
    i = np.minimum(x.astype(np.int64), len(_ANCHORS) - 2)
    f = (x - i)[..., None]
    return (_ANCHORS[i] * (1 - f) + _ANCHORS[i + 1] * f + 0.5).astype(np.uint8)
