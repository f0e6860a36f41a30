"""Masks in JSON answers: run-length encoding (row-major) and per-class areas.

``rle_encode(mask)`` gives ``{"shape": [H, W], "order": "row-major", "values": [...],
"lengths": [...]}``: the mask read row by row is ``values[0]`` repeated ``lengths[0]`` times,
then ``values[1]`` ``lengths[1]`` times, and so on. :func:`rle_decode` is the exact inverse.
"""

from __future__ import annotations

import numpy as np

from edgeseg.runtime.errors import InputError


def rle_encode(mask: np.ndarray) -> dict:
    flat = np.ascontiguousarray(mask).reshape(-1)
    if flat.size == 0:
        return {"shape": list(mask.shape), "order": "row-major", "values": [], "lengths": []}
    starts = np.flatnonzero(np.concatenate(([True], flat[1:] != flat[:-1])))
    lengths = np.diff(np.concatenate((starts, [flat.size])))
    return {"shape": [int(s) for s in mask.shape], "order": "row-major",
            "values": flat[starts].astype(int).tolist(), "lengths": lengths.astype(int).tolist()}


def rle_decode(rle: dict) -> np.ndarray:
    shape = tuple(int(s) for s in rle["shape"])
    values, lengths = np.asarray(rle["values"], dtype=np.int64), np.asarray(rle["lengths"], dtype=np.int64)
    if values.shape != lengths.shape or (lengths < 0).any() or int(lengths.sum()) != int(np.prod(shape)):
        raise InputError(f"run-length encoding does not cover a {shape} mask")
    return np.repeat(values, lengths).astype(np.uint8).reshape(shape)


def class_areas(mask: np.ndarray, classes: list[str]) -> dict[str, int]:
    """Pixels per class name (every class listed, zero when absent)."""
    counts = np.bincount(mask.reshape(-1), minlength=len(classes))
    return {name: int(counts[i]) for i, name in enumerate(classes)}


__all__ = ["class_areas", "rle_decode", "rle_encode"]
