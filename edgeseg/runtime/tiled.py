"""Sliding-window (tiled) inference for images of any size, in bounded memory (torch-free).

The image is cut into windows of the model's own input size in source pixels (``scale`` 1.0;
``scale`` s < 1 takes windows of ``input / s`` source pixels, resized to the input: 0.5 when the
model was trained on images at half the slide's resolution, e.g. 0.5 um/px slides for a model
trained at 1 um/px). Windows overlap by ``overlap`` (a fraction of the window); each window's
probabilities are weighted (``gaussian``: sigma = 1/8 of the window, as MONAI does; ``linear``:
ramps across the overlap, 1 in the window's core) and the weighted sum is divided by the sum of
the weights of the windows covering each pixel. Windows form a full grid, so that sum is the
product of a per-row and a per-column sum: no weight image is kept.

Memory is bounded by one band, never by the image: windows are processed one row of windows
(a band) at a time; the band's weighted probabilities (classes 1..C-1, float32, window height x
image width) are kept with the part that the next band overlaps, and the rows no later window
touches are finished and yielded (:meth:`TiledPredictor.rows`), so a caller writes the mask as it
goes (``edgeseg.runtime.slide`` writes a tiled TIFF). Tiles are batched (``batch`` windows per
model call). With ``skip_background``, a window whose pixels hold almost no tissue (H&E: a
1-in-4 subsample with less than 2% of pixels both saturated and darker than near-white) is not
run: it counts as background.

When edgeseg tiles (the rule, stated once here): ``Segmenter.predict`` predicts an image whole
(resized to the model's input) unless asked ``tiled=True`` (or ``Segmenter.predict_tiled``);
images over ``MAX_IMAGE_PIXELS`` (100 MP) are refused there rather than silently downscaled;
``edgeseg predict`` tiles TIFF files over 100 MP, read region by region from the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from edgeseg.runtime.errors import InputError

BLENDS = ("gaussian", "linear")
GAUSSIAN_SIGMA = 0.125  # of the window side, as MONAI's sliding_window_inference
MIN_WEIGHT = 1e-3  # gaussian weights are clamped here so every pixel has some weight
TISSUE_MIN_FRACTION = 0.02  # a window with fewer tissue pixels than this is background
Reader = Callable[[int, int, int, int], np.ndarray]  # (y0, y1, x0, x1) -> (y1-y0, x1-x0, 3) uint8 RGB


@dataclass(frozen=True)
class TileOptions:
    """How to tile: ``overlap`` fraction of a window shared with its neighbour [0, 0.9];
    ``batch`` windows per model call; ``blend`` gaussian or linear; ``scale`` model pixels per
    source pixel (0.01-16); ``skip_background``: do not run windows without tissue."""

    overlap: float = 0.25
    batch: int = 4
    blend: str = "gaussian"
    scale: float = 1.0
    skip_background: bool = False

    def __post_init__(self) -> None:
        def bad(name, v, want):
            raise InputError(f"tile {name} must be {want}, got {v!r}")

        if isinstance(self.overlap, bool) or not isinstance(self.overlap, (int, float)) \
                or not 0.0 <= self.overlap <= 0.9:
            bad("overlap", self.overlap, "a fraction in [0, 0.9]")
        if isinstance(self.batch, bool) or not isinstance(self.batch, (int, np.integer)) or not 1 <= self.batch <= 256:
            bad("batch", self.batch, "an integer in [1, 256]")
        if self.blend not in BLENDS:
            bad("blend", self.blend, " or ".join(BLENDS))
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not 0.01 <= self.scale <= 16:
            bad("scale", self.scale, "a number in [0.01, 16]")


def window_size(model_hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """Source pixels one window covers: the model's input size divided by ``scale``."""
    return max(1, round(model_hw[0] / scale)), max(1, round(model_hw[1] / scale))


def stride_of(win: int, overlap: float) -> int:
    return max(1, win - round(win * overlap))


def starts(n: int, win: int, stride: int) -> list[int]:
    """Window start offsets along an axis of ``n`` pixels: every ``stride``, the last one ending
    at the image's edge. One window (at 0, padded) when the image is no larger than a window."""
    if n <= win:
        return [0]
    out = list(range(0, n - win, stride))
    return out + [n - win]


def weights_1d(win: int, stride: int, blend: str) -> np.ndarray:
    """One axis of a window's blending weight (the 2-D weight is the outer product)."""
    i = np.arange(win, dtype=np.float64) + 0.5
    if blend == "gaussian":
        w = np.exp(-0.5 * ((i - win / 2) / (GAUSSIAN_SIGMA * win)) ** 2)
        return np.maximum(w / w.max(), MIN_WEIGHT).astype(np.float32)
    ov = win - stride
    if ov <= 0:
        return np.ones(win, np.float32)
    return np.minimum(1.0, np.minimum(i, win - i) / ov).astype(np.float32)


def coverage(n: int, win: int, offsets: list[int], w: np.ndarray) -> np.ndarray:
    """Sum over the windows at ``offsets`` of their weight at each of the axis's ``n`` pixels."""
    total = np.zeros(n, np.float64)
    for o in offsets:
        m = min(win, n - o)
        total[o:o + m] += w[:m]
    return total.astype(np.float32)


def is_tissue(window: np.ndarray, min_fraction: float = TISSUE_MIN_FRACTION) -> bool:
    """Whether an RGB window holds tissue: enough saturated, not near-white pixels (H&E)."""
    s = window[::4, ::4].astype(np.int16)
    mx, mn = s.max(axis=2), s.min(axis=2)
    tissue = ((mx - mn) > 0.07 * np.maximum(mx, 1)) & (mn < 215)
    return bool(tissue.mean() >= min_fraction)


def _pad(crop: np.ndarray, h: int, w: int) -> np.ndarray:
    """A crop at the image's edge, smaller than the window, mirrored out to the window size."""
    ph, pw = h - crop.shape[0], w - crop.shape[1]
    if ph <= 0 and pw <= 0:
        return crop
    return np.pad(crop, ((0, max(ph, 0)), (0, max(pw, 0)), (0, 0)), mode="symmetric")


class TiledPredictor:
    """Tiled prediction of one image of ``height`` x ``width`` given by a region ``read``er.

    :meth:`rows` yields ``(y0, image_rows, mask_rows, prob_rows)`` from the top down: the finished
    mask rows ``y0 .. y0 + len(mask_rows)`` (uint8 labels), the image rows they came from, and
    (with ``probabilities``) their (C, n, W) float32 probabilities. ``tiles`` and ``skipped``
    count windows run and windows skipped as background."""

    def __init__(self, seg, height: int, width: int, read: Reader, options: TileOptions | None = None,
                 probabilities: bool = False) -> None:
        if "logits" not in seg._kinds and "probs" not in seg._kinds:
            raise InputError("tiled prediction blends probabilities; this model outputs masks only")
        self.seg, self.read, self.opt = seg, read, options or TileOptions()
        self.height, self.width, self.probabilities = int(height), int(width), probabilities
        if self.height < 1 or self.width < 1:
            raise InputError(f"image is empty: {self.width}x{self.height}")
        pp = seg.preprocess_spec
        self.window = window_size((pp.height, pp.width), self.opt.scale)
        self.stride = tuple(stride_of(n, self.opt.overlap) for n in self.window)
        wh, ww = self.window
        self.ys, self.xs = starts(self.height, wh, self.stride[0]), starts(self.width, ww, self.stride[1])
        self.wy = weights_1d(wh, self.stride[0], self.opt.blend)
        self.wx = weights_1d(ww, self.stride[1], self.opt.blend)
        self.cov_y = coverage(self.height, wh, self.ys, self.wy)
        self.cov_x = coverage(self.width, ww, self.xs, self.wx)
        self.tiles = self.skipped = 0

    @property
    def total_windows(self) -> int:
        return len(self.ys) * len(self.xs)

    def band_bytes(self) -> int:
        """Bytes of the band buffers (weighted probabilities + image rows), the memory bound."""
        rows = min(self.window[0], self.height)
        return rows * self.width * (4 * (self.seg.num_classes - 1) + 3)

    def rows(self) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]:
        wh = self.window[0]
        rows = min(wh, self.height)
        acc = np.zeros((self.seg.num_classes - 1, rows, self.width), np.float32)
        for r, y0 in enumerate(self.ys):
            y1 = min(y0 + wh, self.height)
            band = self.read(y0, y1, 0, self.width)
            if band.shape[:2] != (y1 - y0, self.width):
                raise InputError(f"the reader returned {band.shape[:2]} for rows {y0}-{y1}, expected "
                                 f"{(y1 - y0, self.width)}")
            for b in range(0, len(self.xs), self.opt.batch):
                self._windows(band, self.xs[b:b + self.opt.batch], acc)
            nxt = self.ys[r + 1] if r + 1 < len(self.ys) else self.height
            n = nxt - y0
            mask, probs = self._finish(acc[:, :n], self.cov_y[y0:nxt])
            yield y0, band[:n], mask, probs
            acc[:, :rows - n] = acc[:, n:]  # numpy copies overlapping slices safely
            acc[:, rows - n:] = 0

    def _windows(self, band: np.ndarray, xs: list[int], acc: np.ndarray) -> None:
        wh, ww = self.window
        h = band.shape[0]
        crops, kept = [], []
        for x0 in xs:
            crop = band[:, x0:x0 + ww]
            if self.opt.skip_background and not is_tissue(crop):
                self.skipped += 1
                continue
            crops.append(_pad(crop, wh, ww))
            kept.append((x0, crop.shape[1]))
        if not crops:
            return
        outs = self.seg.infer(self.seg.prepare(crops))
        results = self.seg.finish(outs, [(wh, ww)] * len(crops), probabilities=True)
        for (x0, w), (_, p) in zip(kept, results):
            acc[:, :h, x0:x0 + w] += p[1:, :h, :w] * (self.wy[:h, None] * self.wx[None, :w])
        self.tiles += len(crops)

    def _finish(self, acc: np.ndarray, cov_y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        fg = acc / (cov_y[:, None] * self.cov_x[None, :])
        if fg.shape[0] == 1:
            mask = (fg[0] > 0.5).astype(np.uint8)
        else:
            fg_all = np.concatenate([1.0 - fg.sum(axis=0, keepdims=True), fg])
            mask = fg_all.argmax(axis=0).astype(np.uint8)
        if not self.probabilities:
            return mask, None
        return mask, np.concatenate([1.0 - fg.sum(axis=0, keepdims=True), fg]).astype(np.float32)


def predict_array(seg, image: np.ndarray, options: TileOptions | None = None, probabilities: bool = False):
    """Tiled prediction of an HxWx3 uint8 RGB array held in memory: the mask (H, W) [and the
    probabilities (C, H, W), which for a large image is the one thing that is not bounded]."""
    h, w = image.shape[:2]
    tp = TiledPredictor(seg, h, w, lambda y0, y1, x0, x1: image[y0:y1, x0:x1], options, probabilities)
    mask = np.empty((h, w), np.uint8)
    probs = np.empty((seg.num_classes, h, w), np.float32) if probabilities else None
    for y0, _, m, p in tp.rows():
        mask[y0:y0 + len(m)] = m
        if probs is not None:
            probs[:, y0:y0 + len(m)] = p
    return (mask, probs) if probabilities else mask


__all__ = ["TileOptions", "TiledPredictor", "predict_array", "is_tissue", "BLENDS"]
