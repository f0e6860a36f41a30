"""Masks, overlays and probability maps for a file or a folder of images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgeseg.data import folders as D
from edgeseg.errors import DataError
from edgeseg.runtime.segmenter import Segmenter


def list_images(src: Path) -> list[tuple[str, Path]]:
    src = Path(src)
    if src.is_file():
        return [(src.stem, src)]
    if not src.is_dir():
        raise DataError(f"images not found: {src}")
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in D.IMAGE_EXTS)
    if not files:
        raise DataError(f"no images found in {src}")
    return [(p.relative_to(src).with_suffix("").as_posix(), p) for p in files]


def overlay_image(image: np.ndarray, mask: np.ndarray, colors, alpha: float = 0.45) -> np.ndarray:
    out = image.astype(np.float32).copy()
    for c in range(1, int(mask.max()) + 1):
        sel = mask == c
        if sel.any():
            col = np.asarray(colors[c % len(colors)], np.float32)
            out[sel] = (1 - alpha) * out[sel] + alpha * col
    return out.clip(0, 255).astype(np.uint8)


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, img)
    if not ok:
        raise DataError(f"could not encode {path}")
    tmp = path.with_name(f".{path.name}.tmp")
    buf.tofile(str(tmp))
    tmp.replace(path)


def predict_folder(seg: Segmenter, src: Path, out: Path, overlay: bool = True, probs: bool = False) -> list[Path]:
    items = list_images(src)
    # read everything first, so a corrupt file stops the run before anything is written
    images = [(name, D.read_image(p)) for name, p in items]
    out = Path(out)
    colors = seg.info.get("colors") or [(0, 0, 0), (255, 64, 64)]
    binary = seg.num_classes == 2
    written = []
    for name, image in images:
        mask, prob = seg.predict(image, probabilities=True) if probs else (seg.predict(image), None)
        mp = out / "masks" / f"{name}.png"
        _write(mp, (mask * 255).astype(np.uint8) if binary else mask)
        written.append(mp)
        if overlay:
            _write(out / "overlays" / f"{name}.jpg", overlay_image(image, mask, colors)[:, :, ::-1])
        if prob is not None:
            if binary:
                _write(out / "probs" / f"{name}.png", (prob[1] * 255 + 0.5).astype(np.uint8))
            else:
                pp = out / "probs" / f"{name}.npy"
                pp.parent.mkdir(parents=True, exist_ok=True)
                np.save(pp, prob.astype(np.float16))
    return written
