"""Input-drift guard: does this image look like the images the bundle was calibrated on?

A segmentation model answers every input with a mask, also an image from another scanner,
another stain or no medical device at all. The bundle therefore records a few cheap statistics
of its calibration images (``input_stats`` in the manifest) and the device can score each
input against them and warn instead of trusting the mask. numpy only (device half).

Each image is reduced to an analysis copy of ``ANALYSIS_SIZE`` x ``ANALYSIS_SIZE`` pixels
(area-averaged by the runtime's own resize: one float copy of the image and two matrix
products, a few to a few tens of milliseconds on one CPU core, and figures that hardly depend
on the image's resolution), in [0, 1], and described by thirteen numbers:

- ``mean_r, mean_g, mean_b``: per-channel means (colour cast, brightness);
- ``std_r, std_g, std_b``: per-channel standard deviations (contrast);
- ``chroma``: mean of max(R,G,B) - min(R,G,B) (zero for a gray image: ultrasound, X-ray);
- ``chrom_r, chrom_b``: mean chromaticity R/(R+G+B) and B/(R+G+B) (hue independent of
  brightness: another stain, another light source; 1/3 each for a gray image);
- ``chrom_r_std, chrom_b_std``: their spread within the image;
- ``gradient``: mean gradient magnitude of the gray image (texture, sharpness, noise);
- ``hist_distance``: Hellinger distance of the image's 32-bin gray histogram to the mean
  calibration histogram (shape of the intensity distribution).

The calibration set gives each feature a centre (median) and a scale (standard deviation,
floored so that a feature that never varied in calibration does not make every later
difference infinite). The drift score of an image is the root mean square of its thirteen
z-scores (``hist_distance`` counts only when larger than usual): about 1 for a typical
calibration image, growing with every way an image differs.

The threshold comes from the calibration images themselves: each one is scored against
statistics built from all the *others* (leave-one-out, so it is scored as a new image would be)
and the threshold is ``margin`` x the ``percentile`` of those scores (defaults 1.5 x the 95th),
at least ``MIN_THRESHOLD``. The rule and the calibration scores are recorded with the stats.
"""

from __future__ import annotations

import math

import numpy as np

from edgeseg.runtime.errors import InputError
from edgeseg.runtime.preprocess import resize, validate_image

STATS_FORMAT = "edgeseg-input-stats"
STATS_VERSION = 1
ANALYSIS_SIZE = 128
HIST_BINS = 32
FEATURES = ("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "chroma", "chrom_r", "chrom_b",
            "chrom_r_std", "chrom_b_std", "gradient", "hist_distance")
# the smallest scale a feature may have, in its own units (all features live in [0, 1])
SCALE_FLOOR = {"mean_r": 0.01, "mean_g": 0.01, "mean_b": 0.01, "std_r": 0.01, "std_g": 0.01, "std_b": 0.01,
               "chroma": 0.01, "chrom_r": 0.005, "chrom_b": 0.005, "chrom_r_std": 0.005, "chrom_b_std": 0.005,
               "gradient": 0.002, "hist_distance": 0.01}
ONE_SIDED = ("hist_distance",)  # smaller than usual is not drift
MIN_IMAGES = 4
DEFAULT_PERCENTILE = 95.0
DEFAULT_MARGIN = 1.5
MIN_THRESHOLD = 2.0
_GRAY = np.array([0.299, 0.587, 0.114], np.float32)
_CHROM_EPS = 0.004  # ~1/255: keeps the chromaticity of black pixels (dark borders) at 0, not noise


# --------------------------------------------------------------------------- per-image description
def _describe(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One RGB uint8 image -> (12 raw features, normalised 32-bin gray histogram)."""
    image = validate_image(image)
    a = resize(image.astype(np.float32) * np.float32(1 / 255), ANALYSIS_SIZE, ANALYSIS_SIZE)
    a = np.clip(a, 0.0, 1.0)
    px = a.reshape(-1, 3)
    mean = px.mean(axis=0)
    std = px.std(axis=0)
    chroma = float((px.max(axis=1) - px.min(axis=1)).mean())
    total = px.sum(axis=1) + np.float32(_CHROM_EPS)
    cr = px[:, 0] / total
    cb = px[:, 2] / total
    gray = a @ _GRAY
    gx = np.diff(gray, axis=1)[:-1, :]
    gy = np.diff(gray, axis=0)[:, :-1]
    gradient = float(np.sqrt(gx * gx + gy * gy).mean())
    hist = np.bincount(np.minimum((gray * HIST_BINS).astype(np.int64), HIST_BINS - 1).ravel(),
                       minlength=HIST_BINS).astype(np.float64)
    hist /= hist.sum()
    feats = np.array([*mean, *std, chroma, cr.mean(), cb.mean(), cr.std(), cb.std(), gradient], np.float64)
    return feats, hist


def _hellinger(h: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Hellinger distance(s) in [0, 1] between histogram(s) ``h`` (.., B) and ``ref`` (B,)."""
    bc = np.sqrt(np.clip(h, 0, None) * np.clip(ref, 0, None)).sum(axis=-1)
    return np.sqrt(np.clip(1.0 - bc, 0.0, 1.0))


def _fit(feats: np.ndarray, hists: np.ndarray) -> dict:
    """Centre and scale of the features over a set of images."""
    ref = hists.mean(axis=0)
    ref = ref / ref.sum()
    x = np.column_stack([feats, _hellinger(hists, ref)])
    centre = np.median(x, axis=0)
    spread = x.std(axis=0, ddof=1) if len(x) > 1 else np.zeros(x.shape[1])
    floor = np.array([SCALE_FLOOR[f] for f in FEATURES])
    return {"ref_hist": ref, "centre": centre, "scale": np.maximum(spread, floor)}


def _z(fit: dict, feats: np.ndarray, hist: np.ndarray) -> np.ndarray:
    x = np.append(feats, _hellinger(hist, fit["ref_hist"]))
    z = (x - fit["centre"]) / fit["scale"]
    for i, name in enumerate(FEATURES):
        if name in ONE_SIDED:
            z[i] = max(z[i], 0.0)
    return z


def _score(z: np.ndarray) -> float:
    return float(np.sqrt(np.mean(z * z)))


def _r(v, nd: int = 6):
    return round(float(v), nd)


# --------------------------------------------------------------------------- calibration
def image_stats(images, percentile: float = DEFAULT_PERCENTILE, margin: float = DEFAULT_MARGIN) -> dict:
    """Statistics of calibration images (list of HxWx3 uint8 RGB), with a drift threshold.

    The returned dict is plain JSON (it is stored in the bundle manifest as ``input_stats``)
    and is what :class:`DriftGuard` is built from.
    """
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if not isinstance(images, (list, tuple)):
        raise InputError("image_stats needs a list of HxWx3 uint8 RGB images")
    if len(images) < MIN_IMAGES:
        raise InputError(f"input statistics need at least {MIN_IMAGES} calibration images, got {len(images)}")
    if not (0 < float(percentile) <= 100) or not float(margin) >= 1.0:
        raise InputError("percentile must be in (0, 100] and margin >= 1")
    px = [int(np.asarray(im).shape[0]) * int(np.asarray(im).shape[1]) for im in images]
    described = [_describe(im) for im in images]
    feats = np.stack([d[0] for d in described])
    hists = np.stack([d[1] for d in described])
    n = len(described)

    # leave-one-out: every calibration image scored as a new image against the others
    loo = []
    for i in range(n):
        keep = np.arange(n) != i
        loo.append(_score(_z(_fit(feats[keep], hists[keep]), feats[i], hists[i])))
    loo = np.asarray(loo)
    threshold = max(float(margin) * float(np.percentile(loo, percentile)), MIN_THRESHOLD)

    fit = _fit(feats, hists)
    # pooled per-channel moments over every analysis pixel of every image (equal weight per image)
    m = feats[:, 0:3]
    s = feats[:, 3:6]
    ch_mean = m.mean(axis=0)
    ch_std = np.sqrt(np.maximum((s ** 2 + m ** 2).mean(axis=0) - ch_mean ** 2, 0.0))
    return {
        "format": STATS_FORMAT,
        "version": STATS_VERSION,
        "count": n,
        "analysis_size": ANALYSIS_SIZE,
        "channel_mean": [_r(v) for v in ch_mean],
        "channel_std": [_r(v) for v in ch_std],
        "gray_hist": [_r(v, 8) for v in fit["ref_hist"]],
        "features": {"names": list(FEATURES), "centre": [_r(v) for v in fit["centre"]],
                     "scale": [_r(v) for v in fit["scale"]]},
        "threshold": _r(threshold, 4),
        "threshold_rule": {"percentile": float(percentile), "margin": float(margin), "minimum": MIN_THRESHOLD,
                           "of": "leave-one-out scores of the calibration images"},
        "calibration_scores": {"p50": _r(np.percentile(loo, 50), 4), "p95": _r(np.percentile(loo, 95), 4),
                               "max": _r(loo.max(), 4)},
        "image_pixels": {"min": int(min(px)), "max": int(max(px))},
    }


# --------------------------------------------------------------------------- the guard
class DriftGuard:
    """Scores images against recorded calibration statistics. Stateless after construction:
    safe to share across threads."""

    def __init__(self, stats: dict) -> None:
        try:
            if not isinstance(stats, dict):
                raise TypeError("not a JSON object")
            if stats.get("format") != STATS_FORMAT or stats.get("version") != STATS_VERSION:
                raise ValueError(f"format {stats.get('format')!r} version {stats.get('version')!r}; this edgeseg "
                                 f"reads {STATS_FORMAT} version {STATS_VERSION}")
            if stats.get("analysis_size") != ANALYSIS_SIZE:
                raise ValueError(f"analysis size {stats.get('analysis_size')!r} != {ANALYSIS_SIZE}")
            f = stats["features"]
            if list(f["names"]) != list(FEATURES):
                raise ValueError(f"features {f['names']!r}; expected {list(FEATURES)}")
            centre = np.asarray(f["centre"], dtype=np.float64)
            scale = np.asarray(f["scale"], dtype=np.float64)
            ref = np.asarray(stats["gray_hist"], dtype=np.float64)
            threshold = float(stats["threshold"])
        except (TypeError, ValueError, KeyError) as exc:
            raise InputError(f"invalid input statistics: {exc}") from None
        if centre.shape != (len(FEATURES),) or scale.shape != (len(FEATURES),) or ref.shape != (HIST_BINS,):
            raise InputError("invalid input statistics: wrong number of values")
        if not (np.isfinite(centre).all() and np.isfinite(scale).all() and np.isfinite(ref).all()
                and (scale > 0).all() and (ref >= 0).all() and ref.sum() > 0
                and math.isfinite(threshold) and threshold > 0):
            raise InputError("invalid input statistics: values must be finite, scales and threshold positive")
        self.stats = stats
        self.threshold = threshold
        self._fit = {"ref_hist": ref / ref.sum(), "centre": centre, "scale": scale}

    @classmethod
    def from_images(cls, images, **kw) -> "DriftGuard":
        return cls(image_stats(images, **kw))

    def z_scores(self, image: np.ndarray) -> dict[str, float]:
        feats, hist = _describe(image)
        return {n: float(v) for n, v in zip(FEATURES, _z(self._fit, feats, hist))}

    def score(self, image: np.ndarray) -> float:
        """How far the image lies from the calibration images (about 1 = typical)."""
        feats, hist = _describe(image)
        return _score(_z(self._fit, feats, hist))

    def check(self, image: np.ndarray) -> dict:
        """``{"score", "drifted", "threshold", "details"}``; details holds each feature's z-score
        and the feature that differs most (what to tell the user)."""
        feats, hist = _describe(image)
        z = _z(self._fit, feats, hist)
        score = _score(z)
        details = {n: round(float(v), 3) for n, v in zip(FEATURES, z)}
        worst = FEATURES[int(np.argmax(np.abs(z)))]
        drifted = bool(score > self.threshold)
        return {"score": score, "drifted": drifted, "threshold": self.threshold,
                "details": {"z": details, "most_different": worst},
                "likely_cause": self.likely_cause(image, z, score) if drifted else None}

    def likely_cause(self, image: np.ndarray, z: np.ndarray, score: float) -> str:
        """A one-line guess at why an image drifted, for the person reading the warning."""
        image = validate_image(image)
        swapped = _score(_z(self._fit, *_describe(np.ascontiguousarray(image[:, :, ::-1]))))
        if swapped <= self.threshold and swapped < 0.5 * score:
            return ("colour channels look swapped: the image matches the calibration images in reversed "
                    "channel order (BGR given where RGB is expected? pass color='BGR')")
        px = self.stats.get("image_pixels")
        h, w = image.shape[:2]
        if isinstance(px, dict) and px.get("min") and not (px["min"] / 4 <= h * w <= px["max"] * 4):
            return (f"another image size: {w}x{h} is far outside the calibration images' "
                    f"{px['min'] / 1e6:.2f}-{px['max'] / 1e6:.2f} MP (another device or a crop?)")
        zi = dict(zip(FEATURES, z))
        chroma, ref_chroma = float(_describe(image)[0][6]), float(self._fit["centre"][6])
        if chroma < 0.01 <= ref_chroma / 5:
            return "a gray image where the calibration images were in colour (another modality?)"
        if ref_chroma < 0.01 <= chroma / 5:
            return "a colour image where the calibration images were gray (another modality?)"
        means = [zi[k] for k in ("mean_r", "mean_g", "mean_b")]
        uniform = min(abs(v) for v in means) > 3 and (min(means) > 0 or max(means) < 0)  # all brighter / darker
        level = max(abs(zi[k]) for k in ("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "hist_distance"))
        if uniform or level == max(abs(z)):
            return "another intensity range: brightness or contrast unlike the calibration images (exposure, window)"
        if max(abs(zi[k]) for k in ("chrom_r", "chrom_b", "chrom_r_std", "chrom_b_std")) == max(abs(z)):
            return "another colour balance: hue unlike the calibration images (another stain, light or camera)"
        return "texture or sharpness unlike the calibration images (blur, noise, another resolution)"


def channels_look_swapped(stats: dict, image: np.ndarray) -> bool:
    """Cheap check (a strided mean of the image): do the channel means match the calibration
    images' far better in reversed order? Only decided when the calibration set is colourful
    enough for red and blue to differ."""
    ref = stats.get("channel_mean") if isinstance(stats, dict) else None
    if not isinstance(ref, list) or len(ref) != 3 or abs(float(ref[0]) - float(ref[2])) < 0.08:
        return False
    step = max(1, min(image.shape[0], image.shape[1]) // 64)
    m = image[::step, ::step].reshape(-1, 3).mean(axis=0) / 255.0
    ref = np.asarray(ref, np.float64)
    d_rgb = float(np.abs(m - ref).sum())
    d_bgr = float(np.abs(m[::-1] - ref).sum())
    return d_bgr < 0.5 * d_rgb and d_rgb > 0.15


__all__ = ["image_stats", "DriftGuard", "channels_look_swapped", "FEATURES", "STATS_FORMAT", "STATS_VERSION"]
