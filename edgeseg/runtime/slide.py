"""Whole slides: large (pyramidal) TIFFs read region by region, their masks written as tiled,
compressed TIFFs row by row, and a downscaled overlay preview (torch-free).

- :class:`TiffSlide` reads any rectangle of a TIFF's full-resolution level by decoding only the
  TIFF tiles (or strips) it touches (tifffile's per-segment decoder): the slide is never loaded
  whole. A tile that cannot be decoded is one :class:`InputError` line naming the tile, its
  pixel rectangle and the file.
- :func:`write_mask_tiff` writes a mask given as a stream of finished row chunks into a tiled,
  deflate-compressed TIFF (256 x 256 tiles), through a temporary file renamed into place only
  when complete: a failed run leaves no half-written mask.
- :class:`Preview` reduces the same stream to a small RGB overlay (block means of the image
  and of each class's pixel fraction); :func:`png_bytes` encodes it (zlib, no imaging library).
- :func:`segment_slide` ties them to :class:`edgeseg.runtime.tiled.TiledPredictor`.

tifffile is the optional extra ``medical``, imported when a slide is opened. JPEG/JPEG 2000
compressed slides (most scanner formats) need tifffile's codec package, imagecodecs, as well.
"""

from __future__ import annotations

import os
import struct
import tempfile
import time
import zlib
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from edgeseg.runtime.errors import InputError, MissingDependency
from edgeseg.runtime.files import WriteError
from edgeseg.runtime.tiled import TiledPredictor, TileOptions

MASK_TILE = 256
PREVIEW_SIDE = 2048  # longest side of the preview, in pixels
BIGTIFF_BYTES = 2**31  # masks larger than this (before compression) are written as BigTIFF
WRITE_BUFFER = 2**22  # bytes of mask tiles compressed per pass: with one thread, tiles go out as they come


def _tifffile():
    try:
        import tifffile
    except ImportError:
        raise MissingDependency('reading and writing slides needs tifffile: pip install "edgeseg[medical]"') from None
    return tifffile


class TiffSlide:
    """The full-resolution level of a TIFF, read by rectangles: ``read(y0, y1, x0, x1)`` gives
    an RGB uint8 array (gray repeated, alpha dropped, 16-bit scaled by 1/257)."""

    def __init__(self, path: str | Path) -> None:
        tf = _tifffile()
        self.path = Path(path)
        try:
            self._tif = tf.TiffFile(self.path)
            page = self._tif.series[0].levels[0].keyframe
        except (tf.TiffFileError, ValueError, IndexError, OSError) as exc:
            raise InputError(f"not a readable TIFF: {self.path} ({exc})") from None
        self._page = page
        shape = page.shape
        if page.dtype not in (np.uint8, np.uint16):
            self.close()
            raise InputError(f"{self.path.name}: slides must be 8- or 16-bit, got {page.dtype}")
        samples = page.samplesperpixel
        if samples > 1 and page.planarconfig != 1:
            self.close()
            raise InputError(f"{self.path.name}: planar (separate-channel) TIFFs are not supported; save it "
                             "with interleaved (contiguous) channels")
        if len(shape) not in (2, 3) or samples not in (1, 3, 4) or page.imagedepth > 1:
            self.close()
            raise InputError(f"{self.path.name}: expected a 2-D gray, RGB or RGBA image, got shape {shape}")
        self.height, self.width = int(page.imagelength), int(page.imagewidth)
        self.samples = samples
        if page.is_tiled:
            self.chunk = (int(page.tilelength), int(page.tilewidth))
        else:
            self.chunk = (int(page.rowsperstrip) or self.height, self.width)
        self._grid_w = -(-self.width // self.chunk[1])
        self._offsets, self._counts = page.dataoffsets, page.databytecounts
        self.levels = len(self._tif.series[0].levels)

    @property
    def microns_per_pixel(self) -> float | None:
        """From the X resolution tag when its unit is a length (cm or inch), else None."""
        tags = self._page.tags
        res, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
        if res is None or unit is None or int(unit.value) not in (2, 3):
            return None
        num, den = res.value
        if not num or not den:
            return None
        per_unit = num / den
        return (25400.0 if int(unit.value) == 2 else 10000.0) / per_unit

    def _segment(self, index: int) -> np.ndarray | None:
        th, tw = self.chunk
        ty, tx = divmod(index, self._grid_w)
        where = (f"{self.path.name}: {'tile' if self._page.is_tiled else 'strip'} {index} (row {ty}, column {tx}; "
                 f"pixels y {ty * th}-{min((ty + 1) * th, self.height)}, x {tx * tw}-{min((tx + 1) * tw, self.width)})")
        if index >= len(self._offsets):
            raise InputError(f"{where} is missing from the file")
        count = int(self._counts[index])
        if count == 0:
            return None
        fh = self._tif.filehandle
        try:
            fh.seek(int(self._offsets[index]))
            data = fh.read(count)
            if len(data) != count:
                raise ValueError(f"{len(data)} of {count} bytes present (truncated file?)")
            seg, _, shape = self._page.decode(data, index, jpegtables=self._page.jpegtables)
        except Exception as exc:  # noqa: BLE001 - any codec failure is this tile's corruption
            if "imagecodecs" in str(exc):
                raise MissingDependency(f"{self.path.name} is {self._page.compression.name} compressed; decoding it "
                                        "needs imagecodecs: pip install \"edgeseg[medical]\" (or imagecodecs alone)") from None
            raise InputError(f"{where} cannot be decoded (corrupt?): {str(exc).splitlines()[0][:200]}") from None
        if seg is None:
            return None
        return np.asarray(seg).reshape(shape[1], shape[2], shape[3])

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if not (0 <= y0 < y1 <= self.height and 0 <= x0 < x1 <= self.width):
            raise InputError(f"region y {y0}-{y1}, x {x0}-{x1} lies outside {self.path.name} "
                             f"({self.width}x{self.height})")
        th, tw = self.chunk
        out = np.zeros((y1 - y0, x1 - x0, self.samples), self._page.dtype)
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                seg = self._segment(ty * self._grid_w + tx)
                if seg is None:
                    continue
                ay, ax = max(y0, ty * th), max(x0, tx * tw)
                by, bx = min(y1, ty * th + seg.shape[0]), min(x1, tx * tw + seg.shape[1])
                out[ay - y0:by - y0, ax - x0:bx - x0] = seg[ay - ty * th:by - ty * th, ax - tx * tw:bx - tx * tw]
        if out.dtype == np.uint16:
            out = (out.astype(np.float32) / 257.0).round().astype(np.uint8)
        if self.samples == 1:
            return np.repeat(out, 3, axis=2)
        return np.ascontiguousarray(out[:, :, :3])

    def close(self) -> None:
        self._tif.close()

    def __enter__(self) -> "TiffSlide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tiff_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) of a TIFF's full-resolution level from its directory, None if unreadable."""
    tf = _tifffile()
    try:
        with tf.TiffFile(path) as tif:
            page = tif.series[0].levels[0].keyframe
            return int(page.imagewidth), int(page.imagelength)
    except (tf.TiffFileError, ValueError, IndexError, OSError):
        return None


def _mask_tiles(chunks: Iterable[tuple[int, np.ndarray]], height: int, width: int,
                tile: int) -> Iterator[np.ndarray]:
    """Row chunks (top down) -> the TIFF's tiles in order, one tile-row buffered at a time."""
    gw = -(-width // tile)
    buf = np.zeros((tile, gw * tile), np.uint8)
    filled = done = 0
    for y0, rows in chunks:
        if y0 != done:
            raise InputError(f"mask rows arrived out of order: {y0} after {done}")
        i = 0
        while i < len(rows):
            k = min(tile - filled, len(rows) - i)
            buf[filled:filled + k, :width] = rows[i:i + k]
            filled, i, done = filled + k, i + k, done + k
            if filled == tile:
                yield from (buf[:, x:x + tile].copy() for x in range(0, gw * tile, tile))
                buf[:] = 0
                filled = 0
    if done != height:
        raise InputError(f"the mask stream ended at row {done} of {height}")
    if filled:
        yield from (buf[:, x:x + tile].copy() for x in range(0, gw * tile, tile))


def write_mask_tiff(path: str | Path, height: int, width: int, chunks: Iterable[tuple[int, np.ndarray]],
                    tile: int = MASK_TILE, description: str | None = None,
                    resolution: tuple[float, float] | None = None) -> Path:
    """Write a uint8 mask from its row chunks as a tiled, deflate-compressed TIFF at ``path``,
    via a temporary file renamed into place at the end (nothing is left behind on failure)."""
    tf = _tifffile()
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise WriteError(exc.errno, f"cannot write {path}: {exc.strerror or exc}; nothing was written there") from None
    try:
        with tf.TiffWriter(tmp, bigtiff=height * width >= BIGTIFF_BYTES) as w:
            w.write(_mask_tiles(chunks, height, width, tile), shape=(height, width), dtype=np.uint8,
                    tile=(tile, tile), compression="zlib", photometric="minisblack", description=description,
                    resolution=resolution, resolutionunit="CENTIMETER" if resolution else None, metadata=None,
                    maxworkers=1, buffersize=WRITE_BUFFER)  # tifffile's default buffers 512 MB of tiles
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(exc.errno, f"cannot write {path}: {exc.strerror or exc}; nothing was written "
                             "there") from None
        raise
    return path


class Preview:
    """A downscaled overlay of a streamed image and mask: each preview pixel is the mean of a
    ``factor`` x ``factor`` block, tinted by the fraction of the block in each class."""

    def __init__(self, height: int, width: int, colors, side: int = PREVIEW_SIDE, alpha: float = 0.45) -> None:
        self.factor = max(1, -(-max(height, width) // side))
        self.width, self.alpha = width, alpha
        self.colors = np.asarray(colors, np.float32)
        self._rows: list[np.ndarray] = []
        self._img = np.zeros((0, width, 3), np.uint8)
        self._mask = np.zeros((0, width), np.uint8)

    def add(self, image_rows: np.ndarray, mask_rows: np.ndarray) -> None:
        img = np.concatenate([self._img, image_rows]) if len(self._img) else image_rows
        mask = np.concatenate([self._mask, mask_rows]) if len(self._mask) else mask_rows
        n = len(img) // self.factor * self.factor
        if n:
            self._rows.append(self._reduce(img[:n], mask[:n]))
        self._img, self._mask = img[n:].copy(), mask[n:].copy()

    def _reduce(self, img: np.ndarray, mask: np.ndarray) -> np.ndarray:
        f = self.factor
        pad = -self.width % f
        if pad:
            img = np.pad(img, ((0, 0), (0, pad), (0, 0)), mode="edge")
            mask = np.pad(mask, ((0, 0), (0, pad)), mode="edge")
        h, w = img.shape[0] // f if img.shape[0] >= f else 1, img.shape[1] // f
        fy = img.shape[0] // h
        small = img.reshape(h, fy, w, f, 3).mean(axis=(1, 3), dtype=np.float32)
        tint = np.zeros_like(small)
        cover = np.zeros(small.shape[:2], np.float32)
        for c in range(1, int(mask.max()) + 1):
            frac = (mask == c).reshape(h, fy, w, f).mean(axis=(1, 3), dtype=np.float32)
            tint += frac[..., None] * self.colors[c % len(self.colors)]
            cover += frac
        out = small * (1 - self.alpha * cover[..., None]) + self.alpha * tint
        return out.clip(0, 255).round().astype(np.uint8)

    def image(self) -> np.ndarray:
        rows = list(self._rows)
        if len(self._img):
            rows.append(self._reduce(self._img, self._mask))
        return np.concatenate(rows)


def png_bytes(rgb: np.ndarray) -> bytes:
    """An HxWx3 uint8 RGB array as PNG bytes (8-bit truecolour, no filter, zlib level 6)."""
    h, w = rgb.shape[:2]
    raw = np.concatenate([np.zeros((h, 1), np.uint8), np.ascontiguousarray(rgb, np.uint8).reshape(h, w * 3)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b""))


def segment_slide(seg, src: str | Path, mask_path: str | Path, preview_path: str | Path | None = None,
                  options: TileOptions | None = None, progress=None, model_mpp: float | None = None) -> dict:
    """Predict a TIFF slide tile by tile; write its full-size mask (binary: 0/255) as a tiled TIFF
    and, optionally, a PNG preview. ``progress(rows_done, height)`` is called after each band.
    ``model_mpp``: the resolution the model was trained at (um per pixel): the window scale is
    then the slide's recorded resolution over it (instead of ``options.scale``).
    Returns what was done: size, windows run and skipped, seconds, windows per second."""
    from dataclasses import replace

    from edgeseg.runtime.files import atomic_write_bytes

    t0 = time.perf_counter()
    with TiffSlide(src) as slide:
        opt = options or TileOptions()
        if model_mpp is not None:
            if slide.microns_per_pixel is None:
                raise InputError(f"{slide.path.name} records no resolution (XResolution in cm or inch): give the "
                                 "scale instead (--tile-scale: model pixels per slide pixel)")
            opt = replace(opt, scale=round(slide.microns_per_pixel / float(model_mpp), 6))
        tp = TiledPredictor(_per_window(seg, slide.path.name), slide.height, slide.width, slide.read, opt)
        colors = (seg.info.get("colors") if hasattr(seg.info, "get") else None) or [(0, 0, 0), (255, 64, 64)]
        preview = Preview(slide.height, slide.width, colors) if preview_path is not None else None
        binary = seg.num_classes == 2

        def chunks():
            for y0, img, mask, _ in tp.rows():
                if preview is not None:
                    preview.add(img, mask)
                yield y0, mask * np.uint8(255) if binary else mask
                if progress is not None:
                    progress(y0 + len(mask), slide.height)

        mpp = slide.microns_per_pixel
        write_mask_tiff(mask_path, slide.height, slide.width, chunks(),
                        description=f"edgeseg mask of {Path(src).name}" + (" (0/255)" if binary else " (labels)"),
                        resolution=(1e4 / mpp, 1e4 / mpp) if mpp else None)
        if preview is not None:
            atomic_write_bytes(preview_path, png_bytes(preview.image()))
    seconds = time.perf_counter() - t0
    return {"height": slide.height, "width": slide.width, "microns_per_pixel": mpp, "window": list(tp.window),
            "windows": tp.total_windows, "tiles_run": tp.tiles, "tiles_skipped": tp.skipped,
            "seconds": round(seconds, 3), "tiles_per_s": round(tp.total_windows / seconds, 2) if seconds else None,
            "overlap": opt.overlap, "blend": opt.blend, "scale": opt.scale, "batch": opt.batch,
            "preview_factor": preview.factor if preview is not None else None}


__all__ = ["TiffSlide", "tiff_size", "write_mask_tiff", "Preview", "png_bytes", "segment_slide"]


def _per_window(seg, name: str):
    """[intensity] A slide is never in memory whole, so its windows are mapped one by one: right
    for window and min/max policies (per pixel), not for a percentile policy (bounds over the whole
    image), which is refused. Per-window flags are off; one window of glass is not a misfit."""
    policy = getattr(seg, "intensity", None)
    if policy is None:
        return seg
    if policy.kind == "percentile":
        raise InputError(f"{name}: the bundle's percentile intensity policy needs the whole image's bounds, which a "
                         "slide read tile by tile does not give; train with a window or min/max policy for slides")
    import copy
    from dataclasses import replace

    seg = copy.copy(seg)
    seg.intensity = replace(policy, flags=False)
    return seg
