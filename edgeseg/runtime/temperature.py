"""Temperature scaling: one number T that makes a model's probabilities honest (torch-free).

Probabilities become ``softmax(logits / T)``. T > 1 softens an over-confident model, T < 1
sharpens an under-confident one. Dividing every logit by the same positive T never changes
which class is largest, so **masks (the argmax) are unchanged**; only probabilities, the
uncertainty maps and scores made from them, and the calibration error change. The runtime
still takes its masks from the raw logits, so not even a floating-point tie can move a pixel.

Fitting (:func:`fit_temperature`): T minimises the mean negative log-likelihood (NLL) of the
true labels of a set of labelled pixels. With ``b = 1/T`` the logits are linear in ``b``, so
the NLL is convex in ``b``; a golden-section search over ``log b`` with ``T`` in
[0.05, 20] (50 steps) finds its minimum to far better than 1e-6 relative. ``edgeseg export``
fits T on the validation images its parity check uses (pixels drawn evenly from every image,
at the original resolution, the resolution the runtime's probabilities have) and records it in
the manifest's ``temperature`` section; :func:`temperature_of` reads it back (1.0 when absent).

For a model that outputs probabilities instead of logits, ``log p`` serves as logits (softmax
of ``log p / T`` is ``p ** (1/T)`` normalised): :func:`temper_probs`.
"""

from __future__ import annotations

import math

import numpy as np

from edgeseg.runtime.errors import BundleError, InputError
from edgeseg.runtime.preprocess import logits_to_original

T_RANGE = (0.05, 20.0)
STEPS = 50
PIXELS_PER_IMAGE = 20_000


def _pixels(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    if z.ndim != 2 or z.shape[0] != y.size or z.shape[1] < 2:
        raise InputError(f"expected logits (N, C) with C >= 2 and N labels, got {z.shape} and {y.size}")
    if y.size == 0 or y.min() < 0 or y.max() >= z.shape[1]:
        raise InputError(f"labels must lie in 0..{z.shape[1] - 1} (and there must be some)")
    return z, y


def nll(logits, labels, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` (N,) under ``softmax(logits / T)``, logits (N, C)."""
    z, y = _pixels(logits, labels)
    s = z / float(temperature)
    m = s.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(s - m).sum(axis=1))
    return float(np.mean(lse - s[np.arange(y.size), y]))


def fit_temperature(logits, labels, t_range: tuple[float, float] = T_RANGE, steps: int = STEPS) -> float:
    """The T in ``t_range`` minimising :func:`nll` (golden-section search over log(1/T))."""
    z, y = _pixels(logits, labels)
    lo, hi = math.log(1.0 / t_range[1]), math.log(1.0 / t_range[0])
    g = (math.sqrt(5.0) - 1.0) / 2.0

    def f(log_b: float) -> float:
        return nll(z, y, math.exp(-log_b))

    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(steps):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return float(math.exp(-(a + b) / 2.0))


def temper_probs(probs, temperature: float, axis: int = 0) -> np.ndarray:
    """Probabilities ``p`` -> ``p ** (1/T)`` normalised along ``axis`` (= softmax(log p / T))."""
    p = np.asarray(probs, np.float64)
    if temperature == 1.0:
        return p.astype(np.float32)
    s = np.log(np.maximum(p, 1e-30)) / float(temperature)
    s -= s.max(axis=axis, keepdims=True)
    e = np.exp(s)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def sample_pixels(logits_chw, labels_hw, limit: int = PIXELS_PER_IMAGE, seed: int = 0):
    """At most ``limit`` pixels of one image, evenly spread (a seeded draw): (N, C) logits, (N,) labels."""
    z = np.asarray(logits_chw, np.float32)
    y = np.asarray(labels_hw)
    if z.ndim != 3 or z.shape[1:] != y.shape:
        raise InputError(f"logits {z.shape} do not match labels {y.shape} (expected (C, H, W) and (H, W))")
    n = y.size
    idx = np.arange(n) if n <= limit else np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))
    return z.reshape(z.shape[0], -1)[:, idx].T, y.reshape(-1)[idx]


def original_logits(seg, outs: dict, h: int, w: int) -> np.ndarray | None:
    """(C, H, W) float32 logits of the first image of a Segmenter's graph outputs ``outs`` at its
    original size (``log p`` for a model that outputs probabilities), None for a mask-only model."""
    kinds = {o["kind"]: o["name"] for o in seg.outputs}
    if "logits" in kinds:
        return logits_to_original(np.asarray(outs[kinds["logits"]][0], np.float32), h, w)
    if "probs" in kinds:
        keep, seg.temperature = seg.temperature, 1.0
        try:
            return np.log(np.maximum(seg.finish(outs, [(h, w)], True)[0][1], 1e-30))
        finally:
            seg.temperature = keep
    return None


def section(temperature: float, logits, labels, images: int, what: str, ece_before=None, ece_after=None) -> dict:
    """The manifest's ``temperature`` section: T, what it was fitted on, NLL and ECE before/after."""
    return {"value": float(temperature), "method": "NLL minimised over 1/T (golden-section), T in "
            f"[{T_RANGE[0]}, {T_RANGE[1]}]", "fitted_on": {"what": what, "images": int(images),
                                                           "pixels": int(np.asarray(labels).size)},
            "nll": {"before": nll(logits, labels, 1.0), "after": nll(logits, labels, temperature)},
            "ece": {"before": ece_before, "after": ece_after}}


def temperature_of(info, path) -> float:
    """The manifest's temperature (its ``temperature.value``), 1.0 when it records none."""
    sec = info.get("temperature") if hasattr(info, "get") else None
    if sec is None:
        return 1.0
    t = sec.get("value") if isinstance(sec, dict) else None
    if (not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t)
            or not T_RANGE[0] <= t <= T_RANGE[1]):
        raise BundleError(f"{path}: 'temperature.value' must be a number in [{T_RANGE[0]}, {T_RANGE[1]}], got {t!r}")
    return float(t)
