"""The pixel confusion matrix of a segmentation model on a labelled set (``edgeseg evaluate``).

Rows are the ground-truth class, columns the predicted class; every pixel of every image at
its original size is counted once. ``normalised`` divides each row by its total, so row i
reads "of the pixels that are truly class i, the fraction predicted as each class" (its
diagonal is each class's pixel recall); a class absent from the ground truth has a row of
nulls. Written as JSON (counts and normalised) and as a PNG with both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.errors import DataError
from edgeseg.runtime.files import atomic_write_json


class ConfusionMatrix:
    """Accumulates (ground truth, prediction) pixel counts image by image."""

    def __init__(self, classes: list[str]) -> None:
        self.classes = list(classes)
        n = len(self.classes)
        self.counts = np.zeros((n, n), dtype=np.int64)

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        n = len(self.classes)
        p = np.asarray(pred).astype(np.int64).ravel()
        g = np.asarray(gt).astype(np.int64).ravel()
        if p.shape != g.shape:
            raise DataError(f"prediction and mask sizes differ: {np.shape(pred)} vs {np.shape(gt)}")
        if p.size and (min(p.min(), g.min()) < 0 or max(p.max(), g.max()) >= n):
            raise DataError(f"labels outside 0..{n - 1} in a prediction or mask")
        self.counts += np.bincount(g * n + p, minlength=n * n).reshape(n, n)

    def normalised(self) -> list[list[float | None]]:
        rows = self.counts.sum(axis=1, keepdims=True)
        out = self.counts / np.maximum(rows, 1)
        return [[float(v) for v in r] if t[0] else [None] * len(r) for r, t in zip(out, rows)]

    def to_dict(self) -> dict:
        return {"classes": self.classes, "rows": "ground truth", "columns": "prediction",
                "counts": self.counts.tolist(), "normalised": self.normalised(),
                "pixels": int(self.counts.sum())}


def write_confusion(conf: dict, png: str | Path, title: str = "") -> tuple[Path, Path]:
    """``conf`` (:meth:`ConfusionMatrix.to_dict`) as ``png`` and a JSON file beside it (same
    name, ``.json``); returns both paths."""
    from edgeseg.measure.report import require_matplotlib, save_figure

    Figure, Canvas = require_matplotlib()
    png = Path(png)
    counts = np.asarray(conf["counts"], dtype=np.int64)
    norm = np.array([[np.nan if v is None else v for v in r] for r in conf["normalised"]], dtype=float)
    n = len(conf["classes"])
    fig = Figure(figsize=(3.0 + 1.2 * n, 1.6 + 0.9 * n))
    ax = fig.add_subplot()
    im = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class's pixels")
    for i in range(n):
        for j in range(n):
            v = norm[i, j]
            ax.text(j, i, f"{counts[i, j]:,}\n{'n/a' if np.isnan(v) else f'{v:.3f}'}", ha="center", va="center",
                    fontsize=8, color="white" if np.nan_to_num(v) > 0.6 else "black")
    ax.set_xticks(range(n), conf["classes"], fontsize=8)
    ax.set_yticks(range(n), conf["classes"], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title or "pixel confusion matrix (counts, row-normalised)", fontsize=9)
    save_figure(fig, Canvas, png)
    return png, atomic_write_json(png.with_suffix(".json"), conf)
