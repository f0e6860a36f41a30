"""``edgeseg predict`` on whole slides: which inputs are slides, and what is written for each.

The rule: a TIFF (``.tif``, ``.tiff``, ``.svs``) whose full-resolution level is over
``MAX_IMAGE_PIXELS`` (100 MP), or any TIFF when ``--tiled`` is given, is a slide. A slide is
read region by region and predicted by overlapping windows at the model's input size
(``edgeseg.runtime.tiled``; ``--tile-scale`` for another resolution); memory is bounded by one
band of windows across the slide, never by the slide. For slide ``NAME`` the output folder gets
``NAME_mask.tif`` (the full-size mask, binary 0/255, as a tiled deflate-compressed TIFF written
row by row), ``NAME_preview.png`` (a downscaled overlay, longest side 2048 px; with --overlay)
and ``NAME_slide.json`` (size, windows run and skipped, seconds, windows per second, options).
Everything is written inside ``predict``'s temporary output folder, so a failed slide (a corrupt
tile: one line naming it) leaves nothing behind.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from edgeseg.runtime.errors import MissingDependency
from edgeseg.runtime.files import atomic_write_json
from edgeseg.runtime.preprocess import MAX_IMAGE_PIXELS
from edgeseg.runtime.tiled import TileOptions

SLIDE_SUFFIXES = (".tif", ".tiff", ".svs")


def slide_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of a TIFF from its directory, without decoding pixels."""
    try:
        from edgeseg.runtime.slide import tiff_size

        return tiff_size(path)
    except MissingDependency:  # still tell a slide from a small TIFF, to name the extra it needs
        from edgeseg.data.folders import image_header_size

        return image_header_size(memoryview(np.memmap(path, mode="r")))


def is_slide(path: Path, force: bool = False) -> bool:
    """Whether ``predict`` takes ``path`` as a slide (see the module's rule)."""
    path = Path(path)
    if path.suffix.lower() not in SLIDE_SUFFIXES or not path.is_file():
        return False
    if force:
        return True
    size = slide_size(path)
    return size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS


class Slides:
    """Predicts the slides among ``predict``'s inputs into its temporary output folder."""

    def __init__(self, seg, options: TileOptions | None = None, force: bool = False, progress: bool = False) -> None:
        self.seg, self.options, self.force, self.progress = seg, options or TileOptions(), force, progress
        self.done: dict[str, dict] = {}

    def handles(self, path: Path) -> bool:
        return is_slide(path, self.force)

    def predict(self, name: str, path: Path, tmp: Path, overlay: bool = True) -> dict:
        from edgeseg.runtime.slide import segment_slide

        base = tmp / f"{name}_mask.tif"
        base.parent.mkdir(parents=True, exist_ok=True)
        preview = tmp / f"{name}_preview.png" if overlay else None
        with _rows_bar(name, self.progress) as bar:
            def tick(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            info = segment_slide(self.seg, path, base, preview, self.options, progress=tick)
        info = {"source": path.name, "mask": base.name, "preview": preview.name if preview else None, **info}
        atomic_write_json(tmp / f"{name}_slide.json", info)
        self.done[name] = info
        return info


def _rows_bar(name: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(desc=f"slide {name}", unit="row", disable=not enabled,
                file=sys.stderr, leave=False, dynamic_ncols=True)
