"""Request bodies to images and masks to PNG, with the service's limits.

Decoding is Pillow's (the runtime has no image decoder and no OpenCV): PNG, JPEG and TIFF,
recognised by their first bytes, never by a file name; 16-bit and float gray images only for a
model with an intensity policy (the runtime maps them). The pixel count is checked from the
header before any pixel is decoded, and a truncated file is refused, not padded.
Every refusal is an :class:`ImageRefused` carrying the HTTP status it maps to.
"""

from __future__ import annotations

import io

import numpy as np

from edgeseg.runtime.errors import InputError
from edgeseg.serve import require

SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
IMAGE_TYPES = ("image/png", "image/jpeg", "image/tiff", "application/octet-stream")
# Pillow modes that are 8 bits a channel and convert to RGB without choosing an intensity window
EIGHT_BIT = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La", "RGBa")
# gray modes whose values a bundle's intensity policy maps (CT in HU, 16-bit ultrasound, float)
SOURCE_GRAY = ("L", "I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class ImageRefused(InputError):
    """A request body that is not an image the service takes; ``status`` is the HTTP answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def sniff(data: bytes) -> str | None:
    return next((kind for sig, kind in SIGNATURES.items() if data.startswith(sig)), None)


def _open(data: bytes, what: str, max_pixels: int):
    Image = require("PIL.Image")
    if not data:
        raise ImageRefused(f"empty {what}: send a PNG, JPEG or TIFF image", 400)
    kind = sniff(data)
    if kind is None:
        raise ImageRefused(f"the {what} is not a PNG, JPEG or TIFF image", 415)
    try:
        im = Image.open(io.BytesIO(data), formats=[kind])
        w, h = im.size
    except Exception:  # Pillow raises many types for a broken header
        raise ImageRefused(f"the {what} is a broken {kind} file (unreadable header)", 400) from None
    if w * h > max_pixels:
        raise ImageRefused(f"the {what} has {w}x{h} pixels, over the service's limit of {max_pixels} pixels: "
                           "downscale or tile it first", 413)
    try:
        im.load()
    except Exception:
        raise ImageRefused(f"the {what} is a truncated or corrupt {kind} file", 400) from None
    return im


def decode_image(data: bytes, max_pixels: int, source_pixels: bool = False) -> np.ndarray:
    """PNG/JPEG/TIFF bytes -> (H, W, 3) uint8 RGB. With ``source_pixels`` (a model whose bundle
    records an intensity policy) gray images keep their own values and type (16-bit, 32-bit,
    float) for the Segmenter to map; without, more than 8 bits a channel is refused (415)."""
    im = _open(data, "image", max_pixels)
    if source_pixels and im.mode in SOURCE_GRAY:
        return np.asarray(im)
    if im.mode not in EIGHT_BIT:
        raise ImageRefused(f"the image is {im.mode} (more than 8 bits a channel) and this model records no intensity "
                           "policy: send an 8-bit image (window or scale it first)", 415)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def decode_mask(data: bytes, max_pixels: int) -> np.ndarray:
    """A mask image (PNG/TIFF, or JPEG) -> (H, W) array of its values (first channel of colour masks)."""
    im = _open(data, "mask", max_pixels)
    a = np.asarray(im)
    if a.ndim == 3:
        a = a[:, :, 0]
    return a


def encode_png(array: np.ndarray) -> bytes:
    """An (H, W) uint8 array as PNG bytes (8-bit gray)."""
    Image = require("PIL.Image")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


__all__ = ["IMAGE_TYPES", "ImageRefused", "decode_image", "decode_mask", "encode_png", "sniff"]
