"""DICOM and NIfTI in the folder layout of edgeseg.data.folders: volumes become named slices.

The layout is today's (``images/`` and ``masks/`` side by side, same relative names, split files);
what is new is that one image entry may hold many slices:

- ``images/CASE.nii.gz`` (a volume), ``images/CASE.dcm`` with several frames, or ``images/CASE/``
  holding one DICOM series: slice k is the sample ``CASE/slice_kkkk``; a split file may name
  ``CASE`` (all its slices) or single slices;
- its masks: ``masks/CASE.nii.gz`` (a label volume of the same shape), ``masks/CASE.dcm`` /
  ``masks/CASE/`` (DICOM label images) or per-slice PNGs ``masks/CASE/slice_kkkk.png``;
- a single-frame DICOM ``images/X.dcm`` is one image, its mask ``masks/X.png`` as for any image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.data import medical as M
from edgeseg.errors import DataError


def series_dirs(files: list[Path]) -> set[Path]:
    """Folders whose files are all DICOM slices of one positioned series (two or more files)."""
    by_dir: dict[Path, list[Path]] = {}
    for p in files:
        if M.is_dicom(p):
            by_dir.setdefault(p.parent, []).append(p)
    out = set()
    for d, fs in by_dir.items():
        if len(fs) < 2 or not M.is_series_dir(d):
            continue
        ds = M.read_dicom(fs[0], pixels=False)
        if "ImagePositionPatient" in ds and int(ds.get("NumberOfFrames", 1) or 1) == 1:
            out.add(d)
    return out


def expand_images(files: list[Path], root: Path, key) -> tuple[list[tuple[str, Path]], dict[str, list[str]]]:
    """(key, path) for every image under ``root`` with volumes split into slices, and
    {volume key: its slice keys}. ``key(path, root)`` names a plain file."""
    series = series_dirs(files)
    items: list[tuple[str, Path]] = []
    volumes: dict[str, list[str]] = {}
    done: set[Path] = set()
    for p in files:
        src = p.parent if p.parent in series else p
        if src in done:
            continue
        done.add(src)
        if not (src.is_dir() or M.is_nifti(src) or M.is_dicom(src)):
            items.append((key(p, root), p))
            continue
        vkey = src.relative_to(root).as_posix() if src.is_dir() else key(src, root)
        vol = M.open_volume(src)
        if vol.kind == "dicom" and vol.count == 1:  # one image: named like any image file
            items.append((vkey, src))
            continue
        keys = [f"{vkey}/{vol.slice_name(k)}" for k in range(vol.count)]
        volumes[vkey] = keys
        items.extend((k, M.SlicePath.of(src, i)) for i, k in enumerate(keys))
    return items, volumes


def expand_masks(files: list[Path], root: Path, key, volumes: dict[str, list[str]],
                 images: dict[str, Path]) -> list[tuple[str, Path]]:
    """(key, path) of every mask: a label volume (or DICOM series) named like an image volume is
    split into its slices, after checking it has the image volume's shape."""
    items, vols = expand_images(files, root, key)
    by_vol: dict[str, list[tuple[str, Path]]] = {}
    for k, p in items:
        base = k.rsplit("/", 1)[0] if isinstance(p, M.SlicePath) else None
        if base is not None and base in vols and base in volumes:
            by_vol.setdefault(base, []).append((k, p))
        elif k in volumes and not isinstance(p, M.SlicePath):  # a one-slice label file for a volume
            by_vol.setdefault(k, []).append((f"{k}/{M.SLICE_NAME.format(0)}", M.SlicePath.of(p, 0)))
        else:
            by_vol.setdefault("", []).append((k, p))
    out = list(by_vol.pop("", []))
    for vkey, pairs in by_vol.items():
        first_img = images[volumes[vkey][0]]
        iv = M.open_volume(first_img, getattr(first_img, "axis", -1))
        mv = M.open_volume(pairs[0][1])
        if (mv.count, mv.height, mv.width) != (iv.count, iv.height, iv.width):
            raise DataError(f"mask volume {pairs[0][1].name} is {mv.count} slice(s) of {mv.width}x{mv.height} but image "
                            f"{first_img.name} is {iv.count} slice(s) of {iv.width}x{iv.height}")
        out.extend(pairs)
    return out


def expand_split(names: list[str], volumes: dict[str, list[str]]) -> list[str]:
    """A split's names with each volume name replaced by its slices."""
    out: list[str] = []
    for n in names:
        out.extend(volumes.get(n, [n]))
    return out


# ------------------------------------------------------------------- reading for edgeseg.data.folders
POLICY_HINT = "train with --intensity, e.g. ct:soft-tissue, window:LEVEL,WIDTH, percentile:0.5,99.5 or minmax:MIN,MAX"


def is_medical_path(path) -> bool:
    """A slice of a volume, a NIfTI file, a DICOM file or a DICOM series folder."""
    if isinstance(path, M.SlicePath) and path.index is not None:
        return True
    p = Path(path)
    return M.is_nifti(p) or p.is_dir() or (p.suffix.lower() in M.DICOM_SUFFIXES or not p.suffix) and M.is_dicom(p)


def read_source(path) -> np.ndarray:
    """A DICOM image / NIfTI or DICOM slice's pixels: float32 (HU for CT) or uint8 (RGB)."""
    return M.read_slice(path)


def read_label(path) -> np.ndarray:
    """A mask slice from a label volume or DICOM label image: (H, W) uint8 label ids."""
    m = M.read_slice(path, labels=True)
    if m.ndim != 2:
        raise DataError(f"mask {path} is a colour image; masks hold label ids")
    return m


def legacy_rgb(src: np.ndarray, path) -> np.ndarray:
    """Without an intensity policy: 8-bit DICOM pixels (e.g. ultrasound) as 8-bit RGB, like any 8-bit
    image; other pixels (HU, 16-bit, float) as they are, for a Segmenter whose policy maps them
    (the runtime refuses them, naming --intensity, when its bundle has none)."""
    if src.dtype != np.uint8:
        return src
    return np.ascontiguousarray(np.repeat(src[:, :, None], 3, axis=2) if src.ndim == 2 else src)


def apply_policy(src: np.ndarray, policy, path) -> np.ndarray:
    """Source pixels -> uint8 RGB under ``policy`` (an IntensityPolicy or its dict), the runtime's function."""
    from edgeseg.runtime.errors import InputError
    from edgeseg.runtime.intensity import IntensityPolicy, apply

    try:
        pol = policy if isinstance(policy, IntensityPolicy) else IntensityPolicy.from_dict(policy)
        return apply(src, pol)
    except InputError as exc:
        raise DataError(f"{path}: {exc}") from None


def hash_source(h, path) -> None:
    """Feed an image file's bytes (a series folder: each file's, in name order) to the hash ``h``."""
    p = Path(path)
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    for f in files:
        h.update(f.read_bytes())
