"""Are the probabilities honest? Expected calibration error and reliability bins (torch-free).

Convention (one, used everywhere in edgeseg): **top-class confidence**, pixel-weighted.
Every pixel contributes its predicted class (the argmax of its probabilities), its confidence
(the probability of that class, in [1/C, 1]) and whether the prediction is right (equal to the
ground-truth label). Confidences fall into ``bins`` equal-width bins over [0, 1] (15 by
default; a confidence of exactly 1 goes to the last bin). Then

    ECE = sum over bins of (pixels in bin / all pixels) * |accuracy in bin - mean confidence in bin|

in [0, 1]: 0 when, within every bin, the model is right exactly as often as it claims. For a
binary model the top-class confidence is ``max(p, 1 - p)`` of the foreground probability ``p``,
so the bins below 0.5 stay empty. Pixels of all images of a set are pooled (an image with more
pixels weighs more), as for pooled Dice. :class:`ReliabilityBins` accumulates image by image, so
memory does not grow with the set.
"""

from __future__ import annotations

import numpy as np

from edgeseg.runtime.errors import InputError

N_BINS = 15
CONVENTION = "top-class confidence, equal-width bins over [0, 1], pixels pooled over images"


class ReliabilityBins:
    """Counts, summed confidence and correct predictions per confidence bin."""

    def __init__(self, bins: int = N_BINS) -> None:
        if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
            raise InputError(f"bins must be a positive integer, got {bins!r}")
        self.bins = bins
        self.count = np.zeros(bins, np.int64)
        self.conf_sum = np.zeros(bins, np.float64)
        self.correct = np.zeros(bins, np.int64)

    def add(self, probs, labels) -> "ReliabilityBins":
        """One image: ``probs`` (C, H, W) (or (C, N)) and integer ``labels`` (H, W) (or (N,))."""
        p = np.asarray(probs, np.float32)
        y = np.asarray(labels)
        if p.ndim < 2 or p.shape[1:] != y.shape or p.shape[0] < 2:
            raise InputError(f"probabilities {p.shape} do not match labels {y.shape} (expected (C, ...) and (...))")
        p = p.reshape(p.shape[0], -1)
        pred = p.argmax(axis=0)
        conf = p[pred, np.arange(p.shape[1])].astype(np.float64)
        right = pred == y.reshape(-1)
        idx = np.minimum((conf * self.bins).astype(np.int64), self.bins - 1)
        self.count += np.bincount(idx, minlength=self.bins)
        self.conf_sum += np.bincount(idx, weights=conf, minlength=self.bins)
        self.correct += np.bincount(idx, weights=right, minlength=self.bins).astype(np.int64)
        return self

    @property
    def pixels(self) -> int:
        return int(self.count.sum())

    def ece(self) -> float | None:
        """The expected calibration error, None before any pixel was added."""
        n = self.pixels
        if n == 0:
            return None
        used = self.count > 0
        acc = self.correct[used] / self.count[used]
        conf = self.conf_sum[used] / self.count[used]
        return float(np.sum(self.count[used] / n * np.abs(acc - conf)))

    def to_dict(self) -> dict:
        """Plain JSON: the ECE, the convention, and per bin its edges, pixels, mean confidence and
        accuracy (None for an empty bin): what a reliability diagram is drawn from."""
        edges = np.linspace(0.0, 1.0, self.bins + 1)
        used = self.count > 0
        div = np.maximum(self.count, 1)
        return {"ece": self.ece(), "bins": self.bins, "convention": CONVENTION, "pixels": self.pixels,
                "edges": [float(e) for e in edges],
                "count": [int(c) for c in self.count],
                "confidence": [float(v) if u else None for v, u in zip(self.conf_sum / div, used)],
                "accuracy": [float(v) if u else None for v, u in zip(self.correct / div, used)]}


def expected_calibration_error(probs, labels, bins: int = N_BINS) -> float | None:
    """ECE of one set of probabilities (C, ...) against integer labels (...)."""
    return ReliabilityBins(bins).add(probs, labels).ece()
