"""Medical image readers: a path -> 2-D slices with their geometry (toolkit side, extra ``medical``).

- DICOM (pydicom): a single image, a multi-frame file (one slice per frame) or a series folder
  (slices sorted by ImagePositionPatient along the slice normal; mixed sizes, missing slices and
  duplicate positions are refused). The modality LUT (RescaleSlope/Intercept: CT in Hounsfield
  units) is applied before anything else; MONOCHROME1 is inverted over its stored range so that
  high values are bright, as in MONOCHROME2; colour frames (RGB ultrasound, YBR converted by
  pydicom) stay 8-bit RGB. PixelSpacing (mm, rows then columns) is carried as ``spacing``.
- NIfTI (nibabel): a 3-D volume is a stack of 2-D slices along ``axis`` (default: the last); the
  slice keeps the other two axes in order (rows = the first). Spacing from the header's zooms.

A slice of a volume is named by a :class:`SlicePath`: the volume's path plus ``.index``, so the
folder layer (edgeseg.data.folders) hands slices around like image files. Volumes are read once
and kept (the last two) while their slices are used. Writers live in edgeseg.data.medical_write.
Errors are one line (DataError; DependencyError naming the extra for a missing package).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgeseg.errors import DataError, DependencyError

log = logging.getLogger(__name__)

EXTRA_HINT = 'pip install "edgeseg[medical]"'
NIFTI_SUFFIXES = (".nii.gz", ".nii")
DICOM_SUFFIXES = (".dcm", ".dicom")
SLICE_NAME = "slice_{:04d}"  # a volume's slice k is named VOLUME/slice_kkkk


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise DependencyError(f"reading DICOM needs pydicom: {EXTRA_HINT}") from None
    return pydicom


def _nibabel():
    try:
        import nibabel
    except ImportError:
        raise DependencyError(f"reading NIfTI needs nibabel: {EXTRA_HINT}") from None
    return nibabel


class SlicePath(type(Path())):
    """The path of a volume that also names one of its 2-D slices (``index``; ``axis`` for NIfTI).
    Paths derived from it (parent, with_suffix ...) are plain paths to files (index None)."""

    index: int | None = None
    axis: int = -1

    @classmethod
    def of(cls, path: str | Path, index: int, axis: int = -1) -> SlicePath:
        p = cls(path)
        p.index, p.axis = int(index), int(axis)
        return p

    def __repr__(self) -> str:
        return f"SlicePath({str(self)!r}, index={self.index})"


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def has_dicom_magic(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def is_dicom(path: str | Path) -> bool:
    """A .dcm/.dicom file, or any file with the DICOM preamble (series often have no extension)."""
    p = Path(path)
    return p.is_file() and (p.suffix.lower() in DICOM_SUFFIXES or (not p.suffix and has_dicom_magic(p)))


def is_series_dir(path: str | Path) -> bool:
    p = Path(path)
    if not p.is_dir():
        return False
    files = [f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")]
    return bool(files) and all(is_dicom(f) for f in files)


def strip_suffix(name: str) -> str:
    """``a/b.nii.gz`` -> ``a/b``; other names lose their last suffix (as Path.with_suffix(''))."""
    low = name.lower()
    for suf in NIFTI_SUFFIXES:
        if low.endswith(suf):
            return name[: -len(suf)]
    base, dot, ext = name.rpartition(".")
    return base if dot and "/" not in ext and base and not base.endswith("/") else name


# --------------------------------------------------------------------------------------- DICOM
def read_dicom(path: str | Path, pixels: bool = True):
    """A DICOM dataset, or one DataError line (not DICOM, truncated, unreadable)."""
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    try:
        # headers only: large values (the pixels) are deferred, so whether they exist is still known
        return pydicom.dcmread(str(path), defer_size=None if pixels else "4 KB", force=False)
    except InvalidDicomError:
        raise DataError(f"not a DICOM file (no DICM preamble; corrupt?): {path}") from None
    except FileNotFoundError:
        raise DataError(f"not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on truncated or malformed data
        raise DataError(f"not a readable DICOM file (corrupt or truncated?): {path} ({type(exc).__name__})") from None


def _decoded(ds, path) -> np.ndarray:
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DataError(f"{path} holds no pixel data (a DICOM {ds.get('Modality', '')} object without an image, "
                        "e.g. a report or presentation state)")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    ts_name = getattr(ts, "name", None) or str(ts)
    try:
        return np.asarray(ds.pixel_array)
    except (RuntimeError, NotImplementedError) as exc:
        msg = str(exc)
        if "missing dependencies" in msg or "No pixel data decoders" in msg:
            needs = "; ".join(ln.strip() for ln in msg.splitlines()[1:] if ln.strip()) or "a decoder plugin"
            raise DependencyError(f"{path} is compressed with {ts_name} and no decoder for it is installed "
                                  f"({needs}); install one of them, or convert the file to an uncompressed "
                                  "transfer syntax") from None
        raise DataError(f"cannot decode the pixel data of {path} ({ts_name}; corrupt?): {msg.splitlines()[0]}") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's corruption
        raise DataError(f"cannot decode the pixel data of {path} ({ts_name}; corrupt or truncated?): "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _stored_range(ds) -> tuple[float, float]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0 ** bits - 1


def dicom_pixels(ds, path) -> np.ndarray:
    """(frames, rows, cols) float32 after the modality LUT (uint8 kept when nothing rescales), or
    (frames, rows, cols, 3) uint8 RGB for colour images."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    arr = _decoded(ds, path)
    photo = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if photo == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        photo = "RGB"
    if photo.startswith("MONOCHROME"):
        if frames == 1 or arr.ndim == 2:
            arr = arr.reshape((1, *arr.shape[-2:]))
        rescales = any(k in ds for k in ("RescaleSlope", "RescaleIntercept", "ModalityLUTSequence"))
        if arr.dtype == np.uint8 and not rescales and photo == "MONOCHROME2":
            return arr
        out = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
        if photo == "MONOCHROME1":  # high stored values are dark: invert over the mapped stored range
            lo, hi = (float(v) for v in apply_modality_lut(np.asarray(_stored_range(ds)), ds))
            out = np.float32(lo + hi) - out
        return out
    if arr.shape[-1] != 3:
        raise DataError(f"{path}: photometric interpretation {photo} with pixel shape {arr.shape} is not supported")
    if arr.ndim == 3:
        arr = arr[None]
    if arr.dtype != np.uint8:
        if arr.max() > 255:
            raise DataError(f"{path}: {photo} colour pixels above 8 bits are not supported")
        arr = arr.astype(np.uint8)
    return arr


def dicom_spacing(ds) -> tuple[float, float] | None:
    """(row spacing, column spacing) in mm from PixelSpacing (or ImagerPixelSpacing), else None."""
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        v = ds.get(key)
        if v is not None and len(v) == 2:
            sy, sx = float(v[0]), float(v[1])
            if np.isfinite([sy, sx]).all() and sy > 0 and sx > 0:
                return sy, sx
    return None


@dataclass(frozen=True)
class Volume:
    """A source of 2-D slices and the geometry needed to write masks back in it."""

    path: Path
    kind: str  # "dicom" (one file, maybe multi-frame), "dicom-series", "nifti"
    count: int  # number of slices
    height: int
    width: int
    spacing: tuple[float, float] | None  # (row, column) mm
    files: tuple[Path, ...] = ()  # dicom-series: the files, sorted along the slice normal
    axis: int = -1  # nifti: the slicing axis (non-negative once opened)
    affine: tuple | None = None  # nifti / dicom-series: the 4x4 voxel -> RAS mm matrix (rows)

    def slice_name(self, k: int) -> str:
        return SLICE_NAME.format(k)


def _series_headers(folder: Path) -> list:
    files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".") and f.name != "DICOMDIR")
    if not files:
        raise DataError(f"DICOM series folder {folder} holds no files")
    return [(f, read_dicom(f, pixels=False)) for f in files]


def _vec(ds, key: str, n: int, f: Path) -> np.ndarray:
    v = ds.get(key)
    if v is None or len(v) != n:
        raise DataError(f"{f} has no {key}: cannot place it in its series (slices are sorted by position)")
    return np.asarray([float(x) for x in v], np.float64)


def open_series(folder: str | Path) -> Volume:
    """A series folder: every file one slice of one series, sorted along the slice normal; refused
    (one line) when sizes, orientations or series differ, positions repeat or slices are missing."""
    folder = Path(folder)
    heads = _series_headers(folder)
    uids = {str(ds.get("SeriesInstanceUID", "")) for _, ds in heads}
    if len(uids) > 1:
        raise DataError(f"{folder} holds {len(uids)} DICOM series; put each series in its own folder")
    sizes: dict[tuple[int, int], list[Path]] = {}
    for f, ds in heads:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise DataError(f"{folder}: {f.name} is a multi-frame file inside a series folder; give it on its own")
        sizes.setdefault((int(ds.get("Rows", 0)), int(ds.get("Columns", 0))), []).append(f)
    if len(sizes) > 1:
        desc = ", ".join(f"{c}x{r} ({len(v)} file(s), e.g. {v[0].name})" for (r, c), v in sizes.items())
        raise DataError(f"series {folder} mixes image sizes: {desc}; a series has one size")
    (rows, cols), = sizes
    iop = _vec(heads[0][1], "ImageOrientationPatient", 6, heads[0][0])
    for f, ds in heads[1:]:
        if not np.allclose(_vec(ds, "ImageOrientationPatient", 6, f), iop, atol=1e-4):
            raise DataError(f"series {folder} mixes slice orientations ({f.name} differs from {heads[0][0].name})")
    normal = np.cross(iop[:3], iop[3:])
    pos = [(float(np.dot(_vec(ds, "ImagePositionPatient", 3, f), normal)), f, ds) for f, ds in heads]
    pos.sort(key=lambda t: t[0])
    if len(pos) > 1:
        gaps = np.diff([p for p, _, _ in pos])
        dup = int(np.argmin(gaps))
        if gaps[dup] < 1e-3:
            raise DataError(f"series {folder}: {pos[dup][1].name} and {pos[dup + 1][1].name} lie at the same "
                            f"position ({pos[dup][0]:.3f} mm along the slice normal); remove the duplicate")
        step = float(np.min(gaps))
        big = int(np.argmax(gaps))
        if gaps[big] > 1.5 * step:
            raise DataError(f"series {folder} has missing slice(s) between {pos[big][1].name} and "
                            f"{pos[big + 1][1].name} (gap {gaps[big]:.3f} mm, step {step:.3f} mm)")
    first = pos[0][2]
    spacing = dicom_spacing(first)
    return Volume(folder, "dicom-series", len(pos), rows, cols, spacing, tuple(f for _, f, _ in pos),
                  affine=_series_affine(iop, [_vec(ds, "ImagePositionPatient", 3, f) for _, f, ds in pos], spacing))


def _series_affine(iop, ipps, spacing) -> tuple:
    """voxel (column i, row j, slice k) -> RAS mm, the NIfTI convention (DICOM is LPS: x, y negated)."""
    sy, sx = spacing or (1.0, 1.0)
    a = np.eye(4)
    a[:3, 0] = iop[:3] * sx
    a[:3, 1] = iop[3:] * sy
    a[:3, 2] = (ipps[-1] - ipps[0]) / (len(ipps) - 1) if len(ipps) > 1 else np.cross(iop[:3], iop[3:])
    a[:3, 3] = ipps[0]
    a[:2] *= -1
    return tuple(tuple(float(x) for x in row) for row in a)


def open_dicom(path: str | Path) -> Volume:
    ds = read_dicom(path, pixels=False)
    if str(ds.get("Modality", "")) == "SEG":
        raise DataError(f"{path} is a DICOM Segmentation (SEG): edgeseg does not read SEG masks yet; export it as a "
                        "NIfTI label volume or per-slice PNGs (masks/NAME.nii.gz, masks/NAME/slice_kkkk.png)")
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DataError(f"{path} holds no pixel data (a DICOM {ds.get('Modality', '')} object without an image, "
                        "e.g. a report or presentation state)")
    n = int(ds.get("NumberOfFrames", 1) or 1)
    return Volume(Path(path), "dicom", n, int(ds.get("Rows", 0)), int(ds.get("Columns", 0)), dicom_spacing(ds))


# --------------------------------------------------------------------------------------- NIfTI
def load_nifti(path: str | Path):
    nib = _nibabel()
    try:
        img = nib.load(str(path))
        _ = img.shape, img.affine
    except FileNotFoundError:
        raise DataError(f"not found: {path}") from None
    except Exception as exc:  # noqa: BLE001 - nibabel: ImageFileError, EOFError, zlib errors on corrupt files
        raise DataError(f"not a readable NIfTI file (corrupt or truncated?): {path} ({type(exc).__name__})") from None
    aff = np.asarray(img.affine, np.float64)
    if not np.isfinite(aff).all() or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise DataError(f"{path} has a non-invertible affine (voxel -> world matrix): its geometry is unusable; "
                        "fix the header (sform/qform)")
    return img


def open_nifti(path: str | Path, axis: int = -1) -> Volume:
    img = load_nifti(path)
    shape = tuple(img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise DataError(f"{path} is a {len(img.shape)}-D NIfTI {img.shape}; edgeseg segments 3-D volumes "
                        "slice by slice (extract one volume of a time series first)")
    if axis not in (-3, -2, -1, 0, 1, 2):
        raise DataError(f"slice axis must be 0, 1 or 2 (or -1 for the last), got {axis}")
    ax = axis % 3
    rest = [i for i in range(3) if i != ax]
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    spacing = (zooms[rest[0]], zooms[rest[1]]) if all(z > 0 for z in zooms) else None
    return Volume(Path(path), "nifti", shape[ax], shape[rest[0]], shape[rest[1]], spacing, axis=ax,
                  affine=tuple(tuple(float(x) for x in row) for row in np.asarray(img.affine)))


@lru_cache(maxsize=2)
def _nifti_data(path: str, mtime: float, labels: bool) -> np.ndarray:
    img = load_nifti(path)
    try:
        raw = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - truncated gzip, short data: any of several kinds
        raise DataError(f"cannot read the voxels of {path} (truncated or corrupt?): {type(exc).__name__}") from None
    if raw.ndim == 4:
        raw = raw[..., 0]
    if raw.ndim == 2:
        raw = raw[..., None]
    if labels:
        if raw.dtype.kind == "f" and (not np.isfinite(raw).all() or not np.array_equal(raw, np.round(raw))):
            raise DataError(f"label volume {path} holds non-integer values; masks hold label ids")
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            raise DataError(f"label volume {path} holds labels outside 0..255 ({raw.min()}..{raw.max()})")
        data = raw.astype(np.uint8)
    else:
        data = raw.astype(np.float32)
        if not np.isfinite(data).all():
            raise DataError(f"{path} has NaN or infinite voxels; fill them before segmenting")
    data.setflags(write=False)
    return data


@lru_cache(maxsize=2)
def _dicom_data(path: str, mtime: float) -> tuple[np.ndarray, Volume]:
    p = Path(path)
    if p.is_dir():
        vol = open_series(p)
        slices = [dicom_pixels(read_dicom(f), f)[0] for f in vol.files]
        data = np.stack(slices)
    else:
        ds = read_dicom(p)
        data = dicom_pixels(ds, p)
        vol = Volume(p, "dicom", data.shape[0], data.shape[1], data.shape[2], dicom_spacing(ds))
    data.setflags(write=False)
    return data, vol


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        raise DataError(f"not found: {path}") from None


def open_volume(path: str | Path, axis: int = -1) -> Volume:
    """The geometry of a DICOM file / series folder or NIfTI volume (headers only where possible)."""
    p = Path(path)
    if is_nifti(p):
        return open_nifti(p, axis)
    if p.is_dir():
        return open_series(p)
    return open_dicom(p)


def volume_pixels(path: str | Path, axis: int = -1, labels: bool = False) -> np.ndarray:
    """All slices of a source as (n, rows, cols[, 3]): float32 (HU for CT), uint8 for colour
    DICOM and label volumes. Read-only; the last two volumes read are kept in memory."""
    p = Path(path)
    if is_nifti(p):
        data = _nifti_data(str(p), _mtime(p), labels)
        ax = axis % 3
        return np.moveaxis(data, ax, 0)
    data, _ = _dicom_data(str(p), _mtime(p))
    if labels:
        if data.ndim != 3 or (data.dtype.kind == "f" and not np.array_equal(data, np.round(data))):
            raise DataError(f"{p} is not a label image (masks hold integer label ids)")
        return data.astype(np.uint8)
    return data


def read_slice(path: str | Path, index: int | None = None, axis: int = -1, labels: bool = False) -> np.ndarray:
    """One 2-D slice: (rows, cols) float32 / uint8, or (rows, cols, 3) uint8 RGB."""
    if index is None:
        index = getattr(path, "index", None)
        axis = getattr(path, "axis", axis)
    data = volume_pixels(path, axis, labels)
    if index is None:
        if data.shape[0] != 1:
            raise DataError(f"{path} holds {data.shape[0]} slices; name one (it is read as a volume of slices)")
        index = 0
    if not 0 <= index < data.shape[0]:
        raise DataError(f"{path} has {data.shape[0]} slice(s), slice {index} asked for")
    return data[index]


def slice_spacing(path: str | Path) -> tuple[float, float] | None:
    """(row, column) pixel spacing in mm of a DICOM/NIfTI source or slice; None for other files."""
    p = Path(path)
    if not (is_nifti(p) or is_dicom(p) or p.is_dir()):
        return None
    return _volume_cached(str(p), _mtime(p), getattr(path, "axis", -1)).spacing


@lru_cache(maxsize=64)
def _volume_cached(path: str, mtime: float, axis: int) -> Volume:
    return open_volume(path, axis)
