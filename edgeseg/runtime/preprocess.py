"""Pre- and post-processing, written once and shared by training, export checks and the device.

Torch-free and OpenCV-free on purpose: the device runtime must apply exactly the steps the
model was trained with, so resizing is done here in numpy with separable weight matrices:

- down-scaling averages each output pixel over the input area it covers (an exact box filter,
  the same rule as OpenCV's INTER_AREA);
- up-scaling is bilinear with half-pixel centres (align_corners=False, as in
  ``torch.nn.functional.interpolate``).

Both are linear maps ``out = R @ img @ C.T`` whose matrices depend only on the sizes, so they
are cached and cost one pair of small matrix products per image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np

from edgeseg.runtime.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_POLICIES = ("stretch",)
# Largest image the runtime accepts (and edgeseg.data.folders reads): pre-processing makes a float32
# copy (12 bytes a pixel), so a 20000 x 20000 image would need ~5 GB. Downscale or tile first.
MAX_IMAGE_PIXELS = 100_000_000
MAX_INPUT_SIDE = 8192  # the model's own input height/width


@dataclass(frozen=True)
class Preprocess:
    """What the model expects. Recorded in checkpoints and bundles, applied everywhere."""

    height: int = 256
    width: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "stretch"  # the whole image to height x width (area for down, bilinear for up)
    color: str = "RGB"  # channel order the model was trained on; inputs are given as RGB
    layout: str = "NCHW"
    dtype: str = "float32"
    scale: float = 1.0 / 255.0  # uint8 -> [0, 1] before mean/std
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("height", "width"):  # a manifest may hold anything: check types, not only ranges
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise InputError(f"input {name} must be an integer, got {v!r}")
        if not (8 <= self.height <= MAX_INPUT_SIDE and 8 <= self.width <= MAX_INPUT_SIDE):
            raise InputError(f"input size must be between 8x8 and {MAX_INPUT_SIDE}x{MAX_INPUT_SIDE}, "
                             f"got {self.height}x{self.width}")
        if (isinstance(self.scale, bool) or not isinstance(self.scale, (int, float, np.floating))
                or not np.isfinite(self.scale) or self.scale <= 0):
            raise InputError(f"scale must be a positive number, got {self.scale!r}")
        if self.resize not in RESIZE_POLICIES:
            raise InputError(f"unknown resize policy {self.resize!r}; known: {', '.join(RESIZE_POLICIES)}")
        if self.layout != "NCHW" or self.dtype != "float32" or self.color != "RGB":
            raise InputError("only RGB, NCHW, float32 model inputs are supported")
        if (len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0
                or not np.isfinite(np.asarray([*self.mean, *self.std], dtype=np.float64)).all()):
            raise InputError("mean and std need three finite values each, std > 0")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        if not isinstance(d, dict):
            raise InputError(f"invalid pre-processing record: expected a JSON object, got {type(d).__name__}")
        known = {k: d[k] for k in ("height", "width", "resize", "color", "layout", "dtype", "scale") if k in d}
        try:
            return cls(mean=tuple(float(x) for x in d.get("mean", IMAGENET_MEAN)),
                       std=tuple(float(x) for x in d.get("std", IMAGENET_STD)), **known)
        except (TypeError, ValueError) as exc:
            raise InputError(f"invalid pre-processing record: {exc}") from None


@lru_cache(maxsize=64)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Weights W (n_out x n_in) so that ``W @ x`` resizes a 1-D signal of length n_in to n_out."""
    if n_in <= 0 or n_out <= 0:
        raise InputError(f"cannot resize {n_in} -> {n_out} pixels")
    w = np.zeros((n_out, n_in), dtype=np.float64)
    if n_out == n_in:
        np.fill_diagonal(w, 1.0)
    elif n_out < n_in:
        # exact area coverage of [i*s, (i+1)*s) over unit input pixels
        s = n_in / n_out
        edges = np.arange(n_out + 1) * s
        for i in range(n_out):
            a, b = edges[i], edges[i + 1]
            j0, j1 = int(np.floor(a)), min(int(np.ceil(b)), n_in)
            for j in range(j0, j1):
                w[i, j] = min(b, j + 1) - max(a, j)
        w /= w.sum(axis=1, keepdims=True)
    else:
        # bilinear, half-pixel centres, clamped at the borders
        s = n_in / n_out
        src = (np.arange(n_out) + 0.5) * s - 0.5
        src = np.clip(src, 0, n_in - 1)
        j0 = np.floor(src).astype(int)
        j1 = np.minimum(j0 + 1, n_in - 1)
        f = src - j0
        w[np.arange(n_out), j0] += 1 - f
        w[np.arange(n_out), j1] += f
    w = w.astype(np.float32)
    w.setflags(write=False)
    return w


_F32_MAX_BAND = 32


@lru_cache(maxsize=64)
def _band(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """The non-zeros of :func:`resize_matrix` as a band: first input index per output and the
    weights of the (at most K) consecutive inputs it averages; applying it costs O(n_out * K)
    instead of a dense O(n_out * n_in) product."""
    w = resize_matrix(n_in, n_out)
    nz = w != 0
    start = nz.argmax(axis=1)
    width = max(1, int(max(np.flatnonzero(row).max() - st + 1 for row, st in zip(nz, start))))
    idx = np.minimum(start[:, None] + np.arange(width)[None, :], n_in - 1)
    wts = np.where(start[:, None] + np.arange(width)[None, :] < n_in, np.take_along_axis(w, idx, axis=1), 0)
    # a wide band (a long side shrunk to a few pixels) sums hundreds of terms: float32 weights and
    # sums drift visibly from the input's values there (1403 -> 1 rows: 4e-3), so wide bands use
    # float64; narrow ones (the usual photo -> model input case) stay float32 for speed
    wts = wts.astype(np.float64 if width > _F32_MAX_BAND else np.float32)
    idx.setflags(write=False)
    wts.setflags(write=False)
    return idx, wts


def _resize_axis(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    n_in = a.shape[axis]
    if n_in == n_out:
        return a
    idx, wts = _band(n_in, n_out)
    shape = [1] * a.ndim
    shape[axis] = n_out
    if idx.shape[1] == 1:  # pure gather (with weight 1) or nearest: no sum to drift
        return (np.take(a, idx[:, 0], axis=axis) * wts[:, 0].reshape(shape).astype(np.float32))
    out = None
    for k in range(idx.shape[1]):
        term = np.take(a, idx[:, k], axis=axis) * wts[:, k].reshape(shape)
        out = term if out is None else out + term
    return out.astype(np.float32)


def resize(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) array (channels last) to (height, width); returns float32.

    Same result as ``R @ img @ C.T`` with :func:`resize_matrix`, computed band by band.
    """
    a = np.asarray(arr)
    if a.dtype != np.uint8:  # uint8 stays uint8: the band products promote to float32 on the small side
        a = a.astype(np.float32, copy=False)
    if a.ndim not in (2, 3):
        raise InputError(f"expected a 2-D or 3-D array, got shape {a.shape}")
    for n in (a.shape[0], a.shape[1], height, width):
        if n <= 0:
            raise InputError(f"cannot resize {a.shape[:2]} -> {(height, width)}")
    return np.ascontiguousarray(_resize_axis(_resize_axis(a, height, 0), width, 1), dtype=np.float32)


def resize_chw(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a (C, H, W) or (N, C, H, W) float array over its last two axes."""
    a = np.asarray(arr, dtype=np.float32)
    return np.ascontiguousarray(_resize_axis(_resize_axis(a, height, a.ndim - 2), width, a.ndim - 1),
                                dtype=np.float32)


def validate_image(image: np.ndarray, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Check an RGB image given to the runtime: (H, W, 3) uint8 (or (H, W) gray, promoted).
    ``max_pixels``: the whole-image limit; None for the tiled path (``edgeseg.runtime.tiled``)."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        if image.dtype.kind in "fc" and image.size and not np.isfinite(image).all():
            raise InputError(f"image must be uint8 (0-255), got dtype {image.dtype} with NaN or infinite values")
        raise InputError(f"image must be uint8 (0-255), got dtype {image.dtype}; convert it first (a model trained "
                         "with an intensity policy, `edgeseg train --intensity`, takes any pixel type)")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise InputError(f"image must be HxWx3 RGB (or HxW gray), got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"image is empty: shape {image.shape}")
    if max_pixels is not None and image.shape[0] * image.shape[1] > max_pixels:
        raise InputError(f"image too large: {image.shape[1]}x{image.shape[0]} pixels; the runtime takes up to "
                         f"{max_pixels // 1_000_000} MP whole: predict it tiled (Segmenter.predict(image, "
                         "tiled=True)) or downscale it first")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return image


def preprocess(image: np.ndarray, pp: Preprocess) -> np.ndarray:
    """One HxWx3 uint8 RGB image -> (3, h, w) float32 normalised tensor."""
    image = validate_image(image)
    x = resize(image, pp.height, pp.width) * np.float32(pp.scale)  # resize first: scale the small image
    x = (x - np.asarray(pp.mean, np.float32)) / np.asarray(pp.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def preprocess_batch(images: list[np.ndarray], pp: Preprocess) -> np.ndarray:
    """A list of images (any sizes) -> (N, 3, h, w) float32."""
    if len(images) == 0:
        raise InputError("empty batch")
    return np.stack([preprocess(im, pp) for im in images])


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def logits_to_original(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, h, w) logits -> (C, H, W) logits at the original image size (bilinear)."""
    if logits.ndim != 3:
        raise InputError(f"expected (C, h, w) logits, got shape {logits.shape}")
    return resize_chw(logits, height, width)


def postprocess(logits: np.ndarray, height: int, width: int, probabilities: bool = False):
    """(C, h, w) logits -> uint8 label mask (H, W) [and float32 probabilities (C, H, W)]."""
    logits = np.asarray(logits, np.float32)
    if logits.ndim == 3 and logits.shape[0] == 2:
        # binary: resizing is linear, so resize the logit difference once (half the work);
        # argmax picks class 1 where d > 0, and softmax of two logits is sigmoid(d)
        d = logits_to_original((logits[1] - logits[0])[None], height, width)[0]
        mask = (d > 0).astype(np.uint8)
        if probabilities:
            p1 = 1.0 / (1.0 + np.exp(-np.clip(d, -80, 80)))
            return mask, np.stack([1.0 - p1, p1]).astype(np.float32)
        return mask
    up = logits_to_original(logits, height, width)
    mask = up.argmax(axis=0).astype(np.uint8)
    if probabilities:
        return mask, softmax(up, axis=0).astype(np.float32)
    return mask
