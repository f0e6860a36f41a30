"""Clinician feedback: a corrected mask for an earlier answer, scored against that answer.

The service keeps the masks of its recent answers (:class:`RecentAnswers`, bounded in count
and bytes; the oldest go first), so ``POST /v1/feedback`` can score the answer that was
actually given, by the model version that gave it, not a re-run. :func:`score` gives the Dice
of the foreground, and the false-positive and false-negative areas in pixels.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from edgeseg.runtime.errors import InputError
from edgeseg.runtime.metrics import dice_score


@dataclass(frozen=True)
class Answer:
    version: str
    sha256: str
    mask: np.ndarray
    classes: tuple[str, ...]


class RecentAnswers:
    def __init__(self, max_count: int = 512, max_bytes: int = 256_000_000) -> None:
        self.max_count, self.max_bytes = max_count, max_bytes
        self._items: OrderedDict[str, Answer] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, request_id: str, answer: Answer) -> None:
        with self._lock:
            self._items[request_id] = answer
            self._bytes += answer.mask.nbytes
            while self._items and (len(self._items) > self.max_count or self._bytes > self.max_bytes):
                _, old = self._items.popitem(last=False)
                self._bytes -= old.mask.nbytes

    def get(self, request_id: str) -> Answer | None:
        with self._lock:
            return self._items.get(request_id)


def labels(truth: np.ndarray, num_classes: int) -> np.ndarray:
    """A corrected mask as label ids: binary models also take {0, 255} masks."""
    t = np.asarray(truth)
    if t.dtype.kind not in "iub":
        raise InputError(f"the corrected mask must hold integer labels, got {t.dtype}")
    t = t.astype(np.int64)
    if num_classes == 2 and set(np.unique(t).tolist()) <= {0, 255}:
        t = (t > 0).astype(np.int64)
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise InputError(f"the corrected mask holds values up to {int(t.max())}; this model has {num_classes} "
                         f"classes (labels 0-{num_classes - 1}{', or 0/255 for binary' if num_classes == 2 else ''})")
    return t


def score(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> dict:
    """Dice (binary: the foreground; multi-class: the mean over the foreground classes present in
    either mask), and the areas in pixels that the answer got wrong: ``fp_pixels`` labelled as a
    foreground class they are not, ``fn_pixels`` of a foreground class labelled otherwise."""
    t = labels(truth, num_classes)
    if t.shape != pred.shape:
        raise InputError(f"the corrected mask is {t.shape[1]}x{t.shape[0]} but the answer was "
                         f"{pred.shape[1]}x{pred.shape[0]}: send a mask at the image's size")
    p = pred.astype(np.int64)
    wrong = p != t
    if num_classes == 2:
        dice = dice_score(p > 0, t > 0)
    else:
        present = [c for c in range(1, num_classes) if (p == c).any() or (t == c).any()]
        dice = float(np.mean([dice_score(p == c, t == c) for c in present])) if present else 1.0
    return {"dice": float(dice), "fp_pixels": int(np.count_nonzero(wrong & (p > 0))),
            "fn_pixels": int(np.count_nonzero(wrong & (t > 0))), "pixels": int(p.size)}


__all__ = ["Answer", "RecentAnswers", "labels", "score"]
