"""Masks, overlays and probability maps for a file or a folder of images.

Images are streamed (read, predicted, written one at a time: memory does not grow with the
folder) into a temporary folder beside the output, renamed into place at the end: a killed or
failed run leaves the previous result or nothing. The output folder records which model made
it (``.edgeseg-output.json``), and is never merged with another run's.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgeseg.data import folders as D
from edgeseg.errors import DataError
from edgeseg.outputs import check_output, mark
from edgeseg.runtime.files import atomic_dir, atomic_write_json
from edgeseg.runtime.segmenter import Segmenter
from edgeseg.runtime.uncertainty import heat_map

UNCERTAINTY_ABOUT = ("heat maps: normalised entropy, dark = sure, bright = unsure; score: mean normalised entropy "
                     "inside the predicted region, the image's largest when the mask is empty "
                     "(edgeseg.runtime.uncertainty); percentile: share of the bundle's validation images that were "
                     "surer; flagged: less sure than its flag percentile of them")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictResult:
    out: Path
    images: int
    seconds: float
    files: tuple[str, ...]  # kinds written: masks, overlays, probs
    intensity_flagged: int = 0  # [intensity] images/slices whose values do not fit the bundle's policy


def list_images(src: Path) -> list[tuple[str, Path]]:
    """(output name, path) of every image: one file, or a folder searched recursively. Two images
    whose names differ only by extension would write the same mask: refused, naming both."""
    src = Path(src)
    if src.is_file():
        return [(src.stem, src)]
    if not src.is_dir():
        raise DataError(f"images not found: {src}")
    files = D.image_files(src)
    if not files:
        raise DataError(f"no images found in {src} (looked for jpg, png, tif, bmp)")
    items: dict[str, Path] = {}
    for p in files:
        name = p.relative_to(src).with_suffix("").as_posix()
        if name in items:
            raise DataError(f"two images would write the same mask {name}.png: {items[name].name} and {p.name}")
        items[name] = p
    return list(items.items())


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
        raise DataError(f"could not encode {path.name}")
    buf.tofile(str(path))


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="predict", unit="img", disable=not enabled, file=sys.stderr, leave=False,
                dynamic_ncols=True)


def predict_folder(seg: Segmenter, src: Path, out: Path, overlay: bool = True, probs: bool = False,
                   overwrite: bool = False, model_path: str | Path | None = None, model_id: str | None = None,
                   progress: bool = False, uncertainty: bool = False, dicom_seg: bool = False,
                   slides=None, slice_axis: int = -1) -> PredictResult:
    """Write ``masks/`` (PNG at each image's size), optionally ``overlays/``, ``probs/`` and
    ``uncertainty/`` (heat maps of normalised entropy, and ``uncertainty/summary.json`` with each
    image's summary and flag) into ``out``: a new folder, or (``overwrite``) an earlier predict
    output, replaced whole. Slides (TIFFs over 100 MP; ``slides``: an ``edgeseg.predict_slide.Slides``
    with the tiling options) are tiled into ``NAME_mask.tif`` and ``NAME_preview.png``."""
    out = Path(out)
    check_output(out, "predict", inputs=[src, model_path], overwrite=overwrite)
    from edgeseg.predict_slide import Slides  # [slide] large TIFFs: tiled, read and written tile by tile

    slides = slides or Slides(seg, progress=progress)
    from edgeseg.predict_medical import Dispatch  # [medical] DICOM/NIfTI inputs, intensity policies

    med = Dispatch(seg, src, dicom_seg, Path(model_path).name if model_path else seg.path.name, model_id, slice_axis)
    items = med.items or list_images(src)
    colors = seg.info.get("colors") or [(0, 0, 0), (255, 64, 64)]
    binary = seg.num_classes == 2
    t0 = time.perf_counter()
    unsure: dict[str, dict] = {}  # [uncertainty] name -> summary, percentile, flagged
    with _bar(len(items), progress) as bar, atomic_dir(out) as tmp:  # the bar is cleared before any error line
        for name, path in items:
            if med.handles(path):  # [medical] masks in the source's geometry (NIfTI, PNG, DICOM SEG)
                med.predict(name, path, tmp, overlay, _write, overlay_image)
                bar.update(1)
                continue
            if slides.handles(path):  # [slide] NAME_mask.tif (tiled TIFF) + NAME_preview.png
                slides.predict(name, path, tmp, overlay)
                bar.update(1)
                continue
            image = med.read(path)  # [intensity] source pixels when the bundle has a policy
            if uncertainty:  # [uncertainty] heat map + summary; the same mask and probabilities
                res = seg.predict(image, probabilities=probs, uncertainty=True)
                mask, prob = res.mask, res.probabilities
                _write(tmp / "uncertainty" / f"{name}.png", heat_map(res.uncertainty)[:, :, ::-1])
                unsure[name] = {**res.summary, "percentile": res.percentile, "flagged": res.flagged}
            else:
                mask, prob = seg.predict(image, probabilities=True) if probs else (seg.predict(image), None)
            _write(tmp / "masks" / f"{name}.png", (mask * 255).astype(np.uint8) if binary else mask)
            if overlay:
                _write(tmp / "overlays" / f"{name}.jpg", overlay_image(med.display(image), mask, colors)[:, :, ::-1])
            if prob is not None:
                if binary:
                    _write(tmp / "probs" / f"{name}.png", (prob[1] * 255 + 0.5).astype(np.uint8))
                else:
                    (tmp / "probs").mkdir(exist_ok=True)
                    np.save(tmp / "probs" / f"{name}.npy", prob.astype(np.float16))
            bar.update(1)
        if uncertainty:
            atomic_write_json(tmp / "uncertainty" / "summary.json", {"images": unsure, "about": UNCERTAINTY_ABOUT})
        kinds = tuple(k for k, on in (("masks", True), ("overlays", overlay), ("probs", probs),
                                      ("uncertainty", uncertainty)) if on)
        mark(tmp, "predict", model=Path(model_path).name if model_path else str(seg.path.name),
             model_id=model_id, runner=seg.runner.name, images=len(items), outputs=list(kinds), **med.record())
    return PredictResult(out=out, images=len(items), seconds=time.perf_counter() - t0, files=kinds,
                         intensity_flagged=med.flagged)
