"""Intensity policies: how an image of any pixel type becomes the 8-bit RGB the model was trained on.

A policy is chosen at training time (``edgeseg train --intensity ...``), saved in the checkpoint,
carried into the bundle (manifest section ``intensity``) and applied by this one function on both
sides of the wall, so the workstation and the device map pixels identically (numpy only):

- ``window``: a CT window in Hounsfield units, ``level``/``width`` or a named preset
  (:data:`PRESETS`); values below ``level - width/2`` become 0, above ``level + width/2`` 255.
  The image must already be in HU (the DICOM modality LUT applied: edgeseg.data.medical does).
- ``percentile``: each image's own ``low``/``high`` percentiles (e.g. 0.5 and 99.5) map to 0/255.
- ``minmax``: fixed ``low``/``high`` values (e.g. 0 and 4095 for 12-bit data) map to 0/255.

Gray images are repeated into three channels, RGB keep theirs (one mapping for all three), a
fourth (alpha) channel is dropped. NaN/inf pixels are refused.

Clipping is what a window does, but an image whose values do not fit the policy is *flagged*
(:func:`check`; the Segmenter warns, evaluate and predict count them), never silently clipped:

- window: fewer than ``min_inside`` (1 %) of the pixels lie inside the window (the image is all
  black/white: not in HU, or another body region), or the image is 8-bit (a display rendering,
  not Hounsfield units);
- minmax: more than ``max_outside`` (0 by default) of the pixels lie outside [low, high];
- percentile: the image is constant (its percentiles coincide: nothing to map).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeseg.runtime.errors import InputError
from edgeseg.runtime.preprocess import MAX_IMAGE_PIXELS

# Typical CT display windows (level, width) in HU, as listed by Radiopaedia, "Windowing (CT)"
# (https://radiopaedia.org/articles/windowing-ct): brain W80 L40, soft tissues W350-400 L20-60,
# lungs W1500 L-600, bone W1800 L400.
PRESETS = {"soft-tissue": (40.0, 400.0), "lung": (-600.0, 1500.0), "bone": (400.0, 1800.0), "brain": (40.0, 80.0)}
KINDS = ("window", "percentile", "minmax")
SPEC_HELP = ("ct:soft-tissue | ct:lung | ct:bone | ct:brain | window:LEVEL,WIDTH | percentile:LOW,HIGH "
             "(e.g. percentile:0.5,99.5) | minmax:MIN,MAX (e.g. minmax:0,4095)")


def _num(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
        raise InputError(f"intensity policy: {what} must be a finite number, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class IntensityPolicy:
    kind: str
    low: float  # window: level - width/2; percentile: lower percentile; minmax: lower value
    high: float
    preset: str | None = None  # window presets keep their name
    min_inside: float = 0.01  # window: flagged when fewer pixels lie inside
    max_outside: float = 0.0  # minmax: flagged when more pixels lie outside
    flags: bool = True  # False: check() flags nothing (windows of a tiled image, checked once as a whole)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"intensity policy: unknown kind {self.kind!r}; known: {', '.join(KINDS)}")
        lo, hi = _num(self.low, "low"), _num(self.high, "high")
        if not lo < hi:
            raise InputError(f"intensity policy {self.kind}: low ({lo:g}) must be below high ({hi:g})")
        if self.kind == "percentile" and not (0 <= lo and hi <= 100):
            raise InputError(f"intensity policy percentile: percentiles must lie in 0..100, got {lo:g}, {hi:g}")
        for name in ("min_inside", "max_outside"):
            v = _num(getattr(self, name), name)
            if not 0 <= v <= 1:
                raise InputError(f"intensity policy: {name} must be a fraction in 0..1, got {v:g}")

    @classmethod
    def window(cls, level: float, width: float, preset: str | None = None) -> IntensityPolicy:
        level, width = _num(level, "window level"), _num(width, "window width")
        if width <= 0:
            raise InputError(f"intensity policy window: width must be positive, got {width:g}")
        return cls("window", level - width / 2, level + width / 2, preset)

    @property
    def level(self) -> float:
        return (self.low + self.high) / 2

    @property
    def width(self) -> float:
        return self.high - self.low

    def describe(self) -> str:
        if self.kind == "window":
            name = f"{self.preset} " if self.preset else ""
            return f"CT window {name}(level {self.level:g}, width {self.width:g} HU)"
        return f"{self.kind} {self.low:g}..{self.high:g}"

    def spec(self) -> str:
        """The command-line form (:func:`parse` gives this policy back)."""
        if self.kind == "window":
            return f"ct:{self.preset}" if self.preset in PRESETS else f"window:{self.level:g},{self.width:g}"
        return f"{self.kind}:{self.low:g},{self.high:g}"

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "low": self.low, "high": self.high}
        if self.kind == "window":
            d.update(level=self.level, width=self.width, preset=self.preset, min_inside=self.min_inside)
        if self.kind == "minmax":
            d["max_outside"] = self.max_outside
        d["output"] = "uint8 RGB"
        return d

    @classmethod
    def from_dict(cls, d) -> IntensityPolicy:
        if not isinstance(d, dict):
            raise InputError(f"intensity policy must be a JSON object, got {type(d).__name__}")
        kind = d.get("kind")
        if kind == "window" and "level" in d and "width" in d:
            pol = cls.window(d["level"], d["width"], d.get("preset"))
            lo, hi = pol.low, pol.high
        else:
            if "low" not in d or "high" not in d:
                raise InputError(f"intensity policy {kind!r} lacks 'low'/'high'")
            lo, hi = d["low"], d["high"]
        return cls(kind, lo, hi, d.get("preset"), d.get("min_inside", 0.01), d.get("max_outside", 0.0))


def parse(spec: str) -> IntensityPolicy:
    """A policy from its command-line form (see :data:`SPEC_HELP`)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise InputError(f"unknown intensity policy {spec!r}; use {SPEC_HELP}")
    kind, _, arg = spec.strip().partition(":")
    kind, arg = kind.strip().lower(), arg.strip().lower()
    if kind == "ct":
        if arg not in PRESETS:
            raise InputError(f"unknown CT window preset {arg!r}; known: {', '.join(PRESETS)} (or window:LEVEL,WIDTH)")
        return IntensityPolicy.window(*PRESETS[arg], preset=arg)
    parts = [p.strip() for p in arg.split(",")]
    try:
        a, b = (float(p) for p in parts)
    except ValueError:
        raise InputError(f"intensity policy {spec!r}: expected two numbers after '{kind}:'; use {SPEC_HELP}") from None
    if kind == "window":
        return IntensityPolicy.window(a, b)
    if kind in ("percentile", "minmax"):
        return IntensityPolicy(kind, a, b)
    raise InputError(f"unknown intensity policy {spec!r}; use {SPEC_HELP}")


def from_info(info) -> IntensityPolicy | None:
    """The policy a bundle manifest / checkpoint records (``intensity``), or None."""
    d = info.get("intensity") if hasattr(info, "get") else None
    return None if not d else IntensityPolicy.from_dict(d)


def source_pixels(image, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Check any-dtype pixels: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) of a real numeric type,
    finite. Returns the array without its alpha channel (a view where possible)."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype == bool or image.dtype.kind not in "uif":
        raise InputError(f"image pixels must be numbers (integer or float), got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] in (1, 4):
        image = image[:, :, 0] if image.shape[2] == 1 else image[:, :, :3]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise InputError(f"image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"image is empty: shape {image.shape}")
    if max_pixels is not None and image.shape[0] * image.shape[1] > max_pixels:  # before any float copy
        raise InputError(f"image too large: {image.shape[1]}x{image.shape[0]} pixels; the runtime takes up to "
                         f"{max_pixels // 1_000_000} MP whole: predict it tiled (Segmenter.predict(image, "
                         "tiled=True)) or downscale it first")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise InputError(f"image has NaN or infinite pixels (dtype {image.dtype})")
    return image


def bounds(image: np.ndarray, policy: IntensityPolicy) -> tuple[float, float]:
    """The (low, high) pixel values that map to 0 and 255 for this image."""
    if policy.kind == "percentile":
        lo, hi = np.percentile(image, [policy.low, policy.high])
        return float(lo), float(hi)
    return policy.low, policy.high


def apply(image: np.ndarray, policy: IntensityPolicy) -> np.ndarray:
    """Any-dtype image -> (H, W, 3) uint8 RGB under ``policy`` (round half up, clipped)."""
    src = source_pixels(image)
    lo, hi = bounds(src, policy)
    span = hi - lo if hi > lo else np.inf  # a constant image (percentiles coincide) maps to 0
    y = np.floor((src.astype(np.float64) - lo) * 255.0 / span + 0.5)
    out = np.clip(y, 0, 255).astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return np.ascontiguousarray(out)


def check(image: np.ndarray, policy: IntensityPolicy) -> dict:
    """How ``image`` fits ``policy``: ``{"flagged", "reason", "below", "above", "min", "max"}``
    (``below``/``above``: fractions of pixels the mapping clips at 0 / 255)."""
    src = source_pixels(image)
    lo, hi = bounds(src, policy)
    n = src.size
    below = float(np.count_nonzero(src < lo)) / n
    above = float(np.count_nonzero(src > hi)) / n
    reason = None
    if not policy.flags:
        pass
    elif policy.kind == "window":
        inside = 1.0 - below - above
        if src.dtype == np.uint8:
            reason = ("an 8-bit image given to a CT window: its values are display grey levels, not Hounsfield "
                      "units (read the DICOM itself)")
        elif inside < policy.min_inside:
            reason = (f"only {inside:.1%} of the pixels lie inside the {policy.describe()} (values "
                      f"{float(src.min()):g}..{float(src.max()):g}): not Hounsfield units, or another body region")
    elif policy.kind == "minmax":
        if below + above > policy.max_outside:
            reason = (f"{below + above:.2%} of the pixels lie outside {policy.low:g}..{policy.high:g} (values "
                      f"{float(src.min()):g}..{float(src.max()):g}) and would be clipped")
    elif hi <= lo:
        reason = "the image is constant: its percentiles coincide, nothing to map"
    return {"flagged": reason is not None, "reason": reason, "below": below, "above": above,
            "min": float(src.min()), "max": float(src.max()), "policy": policy.describe()}


MAX_BOUND_SAMPLES = 4_000_000  # pixels a whole-image bound or check looks at (a regular subsample)


def for_windows(policy: IntensityPolicy, image: np.ndarray) -> tuple[IntensityPolicy, dict]:
    """For tiled prediction: the policy that maps every window of ``image`` as the whole image is
    mapped (a percentile policy's bounds computed once, as fixed min/max; window and min/max are
    per pixel already), with per-window flags off; and the whole image's :func:`check`. Bounds
    and check look at a regular subsample of at most :data:`MAX_BOUND_SAMPLES` pixels."""
    if not isinstance(image, np.ndarray) or image.ndim < 2:
        raise InputError(f"image must be a numpy array of at least 2 dimensions, got {type(image).__name__}")
    h, w = image.shape[:2]
    step = max(1, int(np.ceil(np.sqrt(h * w / MAX_BOUND_SAMPLES))))
    sub = source_pixels(image[::step, ::step], max_pixels=None)
    report = check(sub, policy)
    lo, hi = bounds(sub, policy)
    if not hi > lo:  # a constant image: everything maps to 0, as apply() does
        hi = lo + 1.0
    kind = "minmax" if policy.kind == "percentile" else policy.kind
    return IntensityPolicy(kind, lo, hi, policy.preset, flags=False), report
