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

from edgeseg.errors import ConfigError
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

    def __init__(self, seg, options: TileOptions | None = None, force: bool = False, progress: bool = False,
                 unsupported: tuple[str, ...] = (), model_mpp: float | None = None) -> None:
        """``unsupported``: options given that slides cannot honour (``--probs``, ``--uncertainty``):
        a slide among the inputs is then refused, naming them, rather than predicted without them."""
        self.seg, self.options, self.force, self.progress = seg, options or TileOptions(), force, progress
        if model_mpp is not None:
            from edgeseg.checks import number

            number("--tile-mpp", model_mpp, 0.0, 1000.0, lo_open=True)
        self.unsupported, self.model_mpp = tuple(unsupported), model_mpp
        self.done: dict[str, dict] = {}

    def handles(self, path: Path) -> bool:
        return is_slide(path, self.force)

    def predict(self, name: str, path: Path, tmp: Path, overlay: bool = True) -> dict:
        from edgeseg.runtime.slide import segment_slide

        if self.unsupported:
            raise ConfigError(f"{path.name} is a slide (tiled): {' and '.join(self.unsupported)} cannot be written for "
                              "slides (full-size probability maps are what tiling avoids); predict it without them")
        base = tmp / f"{name}_mask.tif"
        base.parent.mkdir(parents=True, exist_ok=True)
        preview = tmp / f"{name}_preview.png" if overlay else None
        with _rows_bar(name, self.progress) as bar:
            def tick(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            info = segment_slide(self.seg, path, base, preview, self.options, progress=tick, model_mpp=self.model_mpp)
        info = {"source": path.name, "mask": base.name, "preview": preview.name if preview else None, **info}
        atomic_write_json(tmp / f"{name}_slide.json", info)
        self.done[name] = info
        return info


def _rows_bar(name: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(desc=f"slide {name}", unit="row", disable=not enabled,
                file=sys.stderr, leave=False, dynamic_ncols=True)


def bench_slide(models, slide: Path, options: TileOptions | None = None, threads: int | None = None,
                device: str = "cpu", providers: list[str] | None = None) -> dict:
    """``edgeseg bench MODEL... --data SLIDE.tif``: one pass of each model over the slide, tile by
    tile as ``predict`` does (mask written to a temporary folder, then removed): model load,
    slide and end-to-end seconds, windows run and skipped, windows and megapixels per second."""
    import os
    import tempfile
    import time
    from dataclasses import asdict

    from edgeseg.measure.machine import machine_info
    from edgeseg.runners import open_model
    from edgeseg.runtime.files import json_clean
    from edgeseg.runtime.slide import segment_slide

    options = options or TileOptions()
    rows = []
    load0 = os.getloadavg()
    for model in models:
        t0 = time.perf_counter()
        seg = open_model(model, providers=providers, threads=threads, device=device)
        load_s = time.perf_counter() - t0
        try:
            with tempfile.TemporaryDirectory(prefix=".edgeseg-bench-slide-") as tmp:
                info = segment_slide(seg, slide, Path(tmp) / "mask.tif", None, options)
        finally:
            seg.close()
        mp = info["height"] * info["width"] / 1e6
        rows.append({"model": str(model), "backend": seg.runner.name, "load_s": round(load_s, 3),
                     "slide_s": info["seconds"], "end_to_end_s": round(load_s + info["seconds"], 3),
                     "windows": info["windows"], "tiles_run": info["tiles_run"], "tiles_skipped": info["tiles_skipped"],
                     "windows_per_s": info["tiles_per_s"], "megapixels_per_s": round(mp / info["seconds"], 3)})
    return json_clean({"schema": "edgeseg-bench-slide/1", "slide": {"path": str(slide), "width": info["width"],
                       "height": info["height"], "window": info["window"]}, "options": asdict(options),
                       "threads": threads, "machine": machine_info(), "loadavg_before": list(load0),
                       "loadavg_after": list(os.getloadavg()), "rows": rows})


def format_slide_bench(result: dict) -> str:
    s = result["slide"]
    head = (f"slide {Path(s['path']).name}: {s['width']}x{s['height']}, windows of {s['window'][0]}x{s['window'][1]} px "
            f"(overlap {result['options']['overlap']}, scale {result['options']['scale']})")
    lines = [head, f"{'model':<40} {'backend':<18} {'end-to-end s':>12} {'windows':>8} {'skipped':>8} "
             f"{'windows/s':>10} {'MP/s':>7}"]
    lines += [f"{Path(r['model']).name[:40]:<40} {r['backend'][:18]:<18} {r['end_to_end_s']:>12.1f} {r['windows']:>8} "
              f"{r['tiles_skipped']:>8} {r['windows_per_s']:>10} {r['megapixels_per_s']:>7}" for r in result["rows"]]
    return "\n".join(lines)
