"""Calibration images for INT8 quantization: read real images, refuse noise, fingerprint the set.

:func:`load_calibration` reads a dataset folder (its ``images/``; masks are not needed) or a
plain folder of images, refuses sets that are too small or made of noise or blank images
(:func:`looks_like_noise`), pre-processes them exactly as the model expects and returns them
with the set's size and sha256, which quantized models and bundles record. Nothing here invents
data: there is no random or synthetic fallback.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgeseg.data import folders as D
from edgeseg.errors import ConfigError, DataError
from edgeseg.runtime.preprocess import Preprocess, preprocess, validate_image

log = logging.getLogger(__name__)

__all__ = ["MIN_CALIBRATION_IMAGES", "NOISE_CORRELATION", "CONSTANT_STD", "noise_stats", "looks_like_noise",
           "load_calibration"]

MIN_CALIBRATION_IMAGES = 8
# Lag-1 autocorrelation of the gray image, averaged over the horizontal and vertical directions.
# Photographs and medical images are dominated by smooth structure: neighbouring pixels are
# strongly correlated (the embedded endoscopy-like set: >= 0.93; typical photos, CT, X-ray,
# ultrasound: 0.8-0.99). Independent per-pixel noise (np.random uniform/normal, salt-and-pepper)
# has ~0 correlation (|r| < 0.07 even after JPEG at quality 50). 0.5 sits far from both.
NOISE_CORRELATION = 0.5
# A gray-level standard deviation below 2 (on 0-255) is a blank/constant image (JPEG ringing of
# a flat image stays well below this).
CONSTANT_STD = 2.0
_STATS_MAX_SIDE = 512


def _gray(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> HxW float64 mean of the channels, block-averaged down to <= 512 px.

    Averaging non-overlapping k x k blocks keeps i.i.d. noise i.i.d. (so its neighbour correlation
    stays ~0) and keeps natural images correlated, while bounding the cost on huge images.
    """
    g = image.astype(np.float64).mean(axis=2)
    k = int(np.ceil(max(g.shape) / _STATS_MAX_SIDE))
    if k > 1:
        h, w = (g.shape[0] // k) * k, (g.shape[1] // k) * k
        g = g[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3))
    return g


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    d = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / d) if d > 0 else 0.0


def noise_stats(image: np.ndarray) -> tuple[float, float]:
    """(neighbour correlation, gray std) of an HxWx3 (or HxW) uint8 image.

    The correlation is the mean of the Pearson correlations between horizontally and between
    vertically adjacent pixels of the gray image; 0.0 for images without variation or smaller
    than 2x2.
    """
    g = _gray(validate_image(image))
    std = float(g.std())
    if g.shape[0] < 2 or g.shape[1] < 2 or std == 0.0:
        return 0.0, std
    return 0.5 * (_corr(g[:, :-1], g[:, 1:]) + _corr(g[:-1, :], g[1:, :])), std


def looks_like_noise(image: np.ndarray) -> bool:
    """True when an image carries no image structure: constant (gray std < 2 levels) or
    noise-like (neighbouring pixels correlate less than 0.5; see :data:`NOISE_CORRELATION`).

    Calibrating on such images makes INT8 ranges that match no real input, so
    :func:`load_calibration` refuses sets made of them.
    """
    corr, std = noise_stats(image)
    return std < CONSTANT_STD or corr < NOISE_CORRELATION


def load_calibration(root: str | Path, pp: Preprocess, count: int = 64, split: str | None = None, seed: int = 0,
                     allow_few: bool = False, intensity=None) -> tuple[np.ndarray, dict]:
    """Read, check and pre-process calibration images.

    ``root`` is a dataset folder (its ``images/`` are used, masks are not needed) or a plain
    folder of images. ``split`` is a split name (``ROOT/splits/NAME.txt``) or a split file.
    ``count`` images are chosen (all of them if there are fewer) by a seeded random choice, kept
    in folder order. Returns ``(N x 3 x h x w float32, info)`` with info ``count``, ``sha256``
    (see :func:`edgeseg.data.folders.fingerprint`), ``root``, ``split``, ``seed``.

    Raises DataError for fewer than 8 images (unless ``allow_few``) and when more than a quarter
    of the images are noise or constant.
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ConfigError(f"calibration count must be a positive integer, got {count!r}")
    root = Path(root)
    samples = D.discover(root, split=split, require_masks=False)
    found = len(samples)
    if found > count:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(found, size=int(count), replace=False))
        samples = [samples[i] for i in keep]
    where = f"{root}" + (f" (split {split})" if split else "")
    if len(samples) < MIN_CALIBRATION_IMAGES and not allow_few:
        why = (f"count={count} was asked for" if count < MIN_CALIBRATION_IMAGES and found >= count
               else f"only {found} image(s) found in {where}")
        raise DataError(f"too few calibration images: {len(samples)} ({why}); INT8 ranges from fewer than "
                        f"{MIN_CALIBRATION_IMAGES} images are unreliable. Add real images of the kind the model "
                        "will see (64-512 is typical), or pass allow_few=True to accept the risk")

    images, noisy, flat = [], [], []
    for s in samples:
        im = D.read_image(s.image, intensity)  # [intensity] mapped as the model's training images were
        if im.dtype != np.uint8:
            raise DataError(f"calibration image {s.image} holds {im.dtype} pixels and the model records no intensity "
                            "policy to map them (train it with --intensity)")
        corr, std = noise_stats(im)
        if std < CONSTANT_STD:
            flat.append(s.name)
        elif corr < NOISE_CORRELATION:
            noisy.append(s.name)
        images.append(im)
    bad = len(noisy) + len(flat)
    if bad * 4 > len(images):
        parts = []
        if noisy:
            parts.append(f"{len(noisy)} look like random noise (neighbouring pixels uncorrelated, "
                         f"e.g. {noisy[0]!r})")
        if flat:
            parts.append(f"{len(flat)} are constant/blank (e.g. {flat[0]!r})")
        raise DataError(f"calibration set {where} is not usable: of {len(images)} images, "
                        f"{' and '.join(parts)}. Calibrating on such data gives INT8 ranges that fit no real "
                        "input; use real images from the deployment domain (e.g. the training or a "
                        "calibration split of the dataset)")
    if bad:
        log.warning("%d of %d calibration images look like noise or are constant (e.g. %r); using them anyway",
                    bad, len(images), (noisy + flat)[0])
    arr = np.stack([preprocess(im, pp) for im in images]).astype(np.float32, copy=False)
    info = {"count": len(samples), "sha256": D.fingerprint(samples)["sha256"], "root": str(root),
            "split": split, "seed": seed}
    return np.ascontiguousarray(arr), info
