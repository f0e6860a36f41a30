"""Image/mask folder discovery and reading, for the layouts real datasets use.

A dataset is a folder with ``images/`` and ``masks/`` (any depth of sub-folders, e.g. one per
class). A mask belongs to an image when it sits at the same relative path and its stem is the
image's stem, or the stem plus ``_mask``; extra ``STEM_mask_N`` files are OR-ed in (BUSI).
Optional split files (``splits/NAME.txt`` or any path) list image names relative to
``images/`` without extension, one per line.

Masks may be {0,255}, {0,1}, RGB, 1-bit, or JPEG with compression noise (thresholded at 128);
multi-class masks hold label ids ``0..num_classes-1``.

DICOM files, DICOM series folders and NIfTI volumes are images too: a volume's slices become
samples ``VOLUME/slice_kkkk`` (edgeseg.data.medical_folders); 16-bit and float images keep their
values in :func:`read_source` for an intensity policy (edgeseg.runtime.intensity).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgeseg.data import medical_folders as MF
from edgeseg.errors import DataError
from edgeseg.runtime.files import decode_text
from edgeseg.runtime.preprocess import MAX_IMAGE_PIXELS

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
MAX_SPLIT_BYTES = 64 * 10**6
_MASK_SUFFIX = re.compile(r"^(?P<base>.*)_mask(?:_(?P<n>\d+))?$")


@dataclass(frozen=True)
class Sample:
    name: str  # relative to images/, without extension, '/'-separated
    image: Path
    masks: tuple[Path, ...]


def image_files(root: Path) -> list[Path]:
    """Every image file under ``root``. Linked sub-folders are followed (once each, no loops);
    a sub-folder that cannot be read or a link that leads nowhere is an error naming it, never a
    silently smaller data set."""
    import os

    found: list[Path] = []
    seen: set[str] = set()

    def fail(exc: OSError) -> None:
        raise DataError(f"cannot read {exc.filename}: {exc.strerror or exc} (fix its permissions or remove it; "
                        "edgeseg does not silently use part of a folder)")

    for top, dirs, files in os.walk(root, onerror=fail, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # a link back to a folder already walked
            dirs[:] = []
            continue
        seen.add(real)
        for name in files:
            p = Path(top) / name
            if p.suffix.lower() not in IMAGE_EXTS and not _medical_file(p):
                continue
            if not p.exists():
                raise DataError(f"{p} is a link to nothing ({os.readlink(p)}); remove or fix it")
            found.append(p)
    return sorted(found)


def _medical_file(p: Path) -> bool:
    """NIfTI (.nii, .nii.gz) and DICOM (.dcm, .dicom, or no extension with the DICM preamble)."""
    from edgeseg.data import medical as M

    return M.is_nifti(p) or (p.suffix.lower() in M.DICOM_SUFFIXES or not p.suffix) and M.is_dicom(p)


def _key(path: Path, root: Path) -> str:
    from edgeseg.data.medical import strip_suffix

    return strip_suffix(path.relative_to(root).as_posix())


def read_split(path: Path) -> list[str]:
    """Names in a split file: UTF-8 (a BOM, CRLF or CR line endings are fine; UTF-16/32 with
    their BOM are read too); other encodings and binary files are refused naming the file."""
    if not path.is_file():
        raise DataError(f"split file not found: {path}")
    if path.stat().st_size > MAX_SPLIT_BYTES:
        raise DataError(f"split file {path} is larger than {MAX_SPLIT_BYTES // 10**6} MB: not a list of names")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read split file {path}: {exc.strerror or exc}") from None
    text = decode_text(data, f"split file {path}", DataError, other_encodings=True)
    names = [ln.strip() for ln in text.splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise DataError(f"split file is empty: {path}")
    return names


def resolve_split(root: Path, split: str | None) -> Path | None:
    """``split`` may be a path to a file, or a name looked up as ``ROOT/splits/NAME.txt``."""
    if split is None:
        return None
    p = Path(split)
    if p.is_file():
        return p
    cand = root / "splits" / f"{split}.txt"
    if cand.is_file():
        return cand
    known = sorted(q.stem for q in (root / "splits").glob("*.txt")) if (root / "splits").is_dir() else []
    raise DataError(f"split {split!r} not found: neither a file nor {cand}; "
                    + (f"splits of {root.name}: {', '.join(known)}" if known else f"{root.name} has no splits/ folder"))


def has_split(root: str | Path, split: str | None) -> bool:
    """Whether ``split`` names a split file, or ``ROOT/splits/SPLIT.txt`` exists."""
    return split is not None and (Path(split).is_file() or (Path(root) / "splits" / f"{split}.txt").is_file())


class Samples(list):
    """A list of samples that also says which pairs were left out, and why."""

    skipped: list[tuple[str, str]]

    def __init__(self, items=(), skipped=None) -> None:
        super().__init__(items)
        self.skipped = list(skipped or [])


def _header_dims(path: Path) -> tuple[int, int] | None:
    try:
        with open(path, "rb") as f:
            return image_header_size(f.read(1 << 16))
    except OSError:
        return None


def _mismatch(sample: Sample) -> str | None:
    """A one-line reason when a mask's size (read from file headers) differs from its image's."""
    dims = _header_dims(sample.image)
    if dims is None:
        return None
    if dims[0] * dims[1] > MAX_IMAGE_PIXELS:  # a bad input, not a mismatch: refuse as read_image would
        _imread(sample.image, cv2.IMREAD_UNCHANGED)
    for m in sample.masks:
        md = _header_dims(m)
        if md is not None and md != dims:
            return (f"mask {m.name} is {md[0]}x{md[1]} but image {sample.image.name} is {dims[0]}x{dims[1]}")
    return None


def discover(root: str | Path, split: str | None = None, require_masks: bool = True,
             strict: bool = False) -> Samples:
    """Pair every image under ROOT/images with its mask(s) under ROOT/masks.

    With ``require_masks=False`` a folder of images alone (or ROOT itself holding images) is
    accepted and samples carry no masks.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root}")
    img_root = root / "images"
    mask_root = root / "masks"
    if not img_root.is_dir():
        if require_masks:
            raise DataError(f"{root} has no images/ folder (expected images/ and masks/ side by side)")
        img_root = root
    images = image_files(img_root)
    if img_root == root:
        images = [p for p in images if mask_root not in p.parents]
    if not images:
        raise DataError(f"no images (jpg, png, tif, bmp, dcm, nii) found in {img_root}")

    by_key: dict[str, Path] = {}
    items, volumes = MF.expand_images(images, img_root, _key)  # DICOM/NIfTI volumes -> VOLUME/slice_kkkk
    for k, p in items:
        if k in by_key:
            raise DataError(f"two images share the name {k!r}: {by_key[k].name} and {p.name}")
        by_key[k] = p

    masks: dict[str, list[Path]] = {}
    if mask_root.is_dir():
        for k, p in MF.expand_masks(image_files(mask_root), mask_root, _key, volumes, by_key):
            m = _MASK_SUFFIX.match(k)
            base = k
            if k not in by_key and m and m.group("base") in by_key:
                base = m.group("base")
            same = [q for q in masks.get(base, []) if _key(q, mask_root) == k]
            if same:
                raise DataError(f"two masks share the name {k!r}: {same[0].name} and {p.name}; keep one")
            masks.setdefault(base, []).append(p)
    elif require_masks:
        raise DataError(f"{root} has no masks/ folder")

    if require_masks:
        orphans = sorted(set(masks) - set(by_key))
        if orphans:
            raise DataError(f"{len(orphans)} mask(s) have no image, e.g. {orphans[0]!r} in {mask_root}")

    names = list(by_key)
    split_file = resolve_split(root, split)
    if split_file is not None:
        wanted = MF.expand_split(read_split(split_file), volumes)
        missing = [n for n in wanted if n not in by_key]
        if missing:
            raise DataError(f"{len(missing)} name(s) in {split_file} have no image, e.g. {missing[0]!r}")
        names = wanted

    samples = []
    for n in names:
        ms = tuple(sorted(masks.get(n, []), key=lambda p: (len(p.stem), p.stem)))
        if require_masks and not ms:
            raise DataError(f"image {n!r} has no mask in {mask_root} (looked for {n}.* and {n}_mask.*)")
        samples.append(Sample(n, by_key[n], ms))
    # A mask whose size differs from its image is never resized to fit (that would silently corrupt
    # the ground truth). Such pairs are left out with a warning naming them (real datasets have
    # a few, e.g. one BUSI `_mask_1`), or refused with --strict; a folder with no usable pair is
    # an error either way.
    skipped = []
    if require_masks:
        for smp in samples:
            why = _mismatch(smp)
            if why is not None:
                if strict:
                    raise DataError(why)
                skipped.append((smp.name, why))
                log.warning("left out %r: %s", smp.name, why)
        if skipped and len(skipped) == len(samples):
            raise DataError(f"no usable image/mask pair in {root}: {skipped[0][1]}")
    bad = {n for n, _ in skipped}
    return Samples([smp for smp in samples if smp.name not in bad], skipped)


# --- [size limit] images are measured from their header before decoding -----------------
# A 20000 x 20000 RGB image decodes to 1.2 GB (and to several times that in float while it
# is resized), so images above MAX_IMAGE_PIXELS (100 MP, the runtime's own limit) are refused
# before any pixel is decoded: the models take 128-1024 px inputs, and anything that large
# must be downscaled or tiled first.


def _u16(b: bytes, big: bool = True) -> int:
    return int.from_bytes(b[:2], "big" if big else "little")


def _u32(b: bytes, big: bool = True) -> int:
    return int.from_bytes(b[:4], "big" if big else "little")


def image_header_size(head) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, BMP or TIFF header without decoding; None if unknown.

    ``head`` is the file's bytes (bytes or a memoryview: TIFF keeps its directory anywhere)."""
    try:
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            return _u32(head[16:20]), _u32(head[20:24])
        if head[:2] == b"BM" and len(head) >= 26:
            return abs(int.from_bytes(head[18:22], "little", signed=True)), \
                abs(int.from_bytes(head[22:26], "little", signed=True))
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            big = head[:2] == b"MM"
            off = _u32(head[4:8], big)
            n = _u16(head[off:off + 2], big)
            dims = {}
            for k in range(n):
                e = head[off + 2 + 12 * k: off + 14 + 12 * k]
                tag, typ = _u16(e[0:2], big), _u16(e[2:4], big)
                if tag in (256, 257):
                    dims[tag] = _u16(e[8:10], big) if typ == 3 else _u32(e[8:12], big)
            return (dims[256], dims[257]) if len(dims) == 2 else None
        if head[:2] == b"\xff\xd8":
            i = 2
            while i + 9 < len(head):
                if head[i] != 0xFF:
                    return None
                marker = head[i + 1]
                if marker == 0xFF:  # fill byte
                    i += 1
                    continue
                if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                    i += 2
                    continue
                if marker == 0xDA:  # start of scan before any frame header
                    return None
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    return _u16(head[i + 7:i + 9]), _u16(head[i + 5:i + 7])
                i += 2 + _u16(head[i + 2:i + 4])
    except (IndexError, KeyError, ValueError):
        return None
    return None
# --- [/size limit] ----------------------------------------------------------------------


def _imread(path: Path, flags: int) -> np.ndarray:
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    if buf.size == 0:
        raise DataError(f"empty file: {path}")
    size = image_header_size(memoryview(buf))
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise DataError(f"image too large: {path} is {size[0]}x{size[1]} pixels ({size[0] * size[1] / 1e6:.0f} "
                        f"MP); edgeseg reads images up to {MAX_IMAGE_PIXELS // 1_000_000} MP: downscale or tile it")
    img = cv2.imdecode(buf, flags)
    if img is None or img.size == 0:
        raise DataError(f"not a readable image (corrupt or truncated?): {path}")
    return img


def read_source(path: str | Path) -> np.ndarray:
    """An image's own pixels, any dtype: 8/16-bit or float PNG/TIFF (RGB order, alpha kept), a DICOM
    image or slice after its modality LUT, a NIfTI slice (edgeseg.data.medical). What a Segmenter
    whose bundle records an intensity policy takes, and what the policy maps (read_image)."""
    if MF.is_medical_path(path):
        return MF.read_source(path)
    img = _imread(Path(path), cv2.IMREAD_UNCHANGED)
    if img.dtype.kind == "f" and not np.isfinite(img).all():
        raise DataError(f"image has NaN or infinite pixels: {path}")
    return np.ascontiguousarray(img[:, :, ::-1] if img.ndim == 3 and img.shape[2] == 3 else
                                img[:, :, [2, 1, 0, 3]] if img.ndim == 3 and img.shape[2] == 4 else img)


def read_image(path: str | Path, intensity=None) -> np.ndarray:
    """Any image file -> HxWx3 uint8 RGB. With an ``intensity`` policy (edgeseg.runtime.intensity)
    its source pixels are mapped by it. Without: 16-bit is scaled to 8-bit, gray expanded, alpha
    dropped, float refused; DICOM/NIfTI pixels that are not 8-bit (HU ...) come back as they are
    (:func:`read_source`), for a Segmenter whose bundle's policy maps them (others refuse them)."""
    if intensity is not None:
        return MF.apply_policy(read_source(path), intensity, path)
    if MF.is_medical_path(path):
        return MF.legacy_rgb(read_source(path), path)
    path = Path(path)
    img = _imread(path, cv2.IMREAD_UNCHANGED)
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        if not np.isfinite(img).all():
            raise DataError(f"image has NaN or infinite pixels: {path}")
        raise DataError(f"{path} has floating-point pixels: they need an intensity policy ({MF.POLICY_HINT})")
    elif img.dtype != np.uint8:
        raise DataError(f"unsupported pixel type {img.dtype} in {path}")
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    if img.shape[2] == 4:
        img = img[:, :, :3]
    elif img.shape[2] != 3:
        raise DataError(f"image must have 1, 3 or 4 channels, {path} has {img.shape[2]}")
    return np.ascontiguousarray(img[:, :, ::-1])


def read_mask(path: str | Path, num_classes: int = 2) -> np.ndarray:
    """A mask file (or a slice of a label volume) -> HxW uint8 label ids (binary: 0/1)."""
    medical = MF.is_medical_path(path)
    m = MF.read_label(path) if medical else _imread(Path(path), cv2.IMREAD_UNCHANGED)
    if m.ndim == 3:
        m = m[:, :, :3].max(axis=2) if num_classes == 2 else m[:, :, 0]
    if m.dtype != np.uint8:
        if m.dtype == np.uint16 and m.max() < 256:
            m = m.astype(np.uint8)
        else:
            raise DataError(f"mask {path} has pixel type {m.dtype}; expected 8-bit")
    values = np.unique(m)
    if num_classes == 2:
        if not medical and _is_jpeg(Path(path)):  # lossy by content, whatever the extension says (a PNG named .jpg is lossless)
            # JPEG noise around {0, 255}: threshold at half; a {0, 1} mask saved as JPEG: at 1
            return (m >= (1 if m.max() <= 2 else 128)).astype(np.uint8)
        if set(values.tolist()) <= {0, 1}:
            return m.astype(np.uint8)
        if set(values.tolist()) <= {0, 255}:
            return (m == 255).astype(np.uint8)
        raise DataError(
            f"mask {path} is not binary: values {values[:8].tolist()}"
            f"{'...' if values.size > 8 else ''}; for label-id masks pass the class names (--classes)"
        )
    if values.max() >= num_classes:
        raise DataError(f"mask {path} has label {int(values.max())} but only {num_classes} classes are declared")
    return m.astype(np.uint8)


def _is_jpeg(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(3) == b"\xff\xd8\xff"


def load_pair(sample: Sample, num_classes: int = 2, intensity=None,
              source: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask): the image as read_image(..., intensity) gives it, or with ``source`` its own
    pixels (read_source: what a Segmenter with an intensity policy takes)."""
    image = read_source(sample.image) if source else read_image(sample.image, intensity)
    mask = None
    for mp in sample.masks:
        m = read_mask(mp, num_classes)
        if m.shape != image.shape[:2]:
            raise DataError(
                f"mask {mp.name} is {m.shape[1]}x{m.shape[0]} but image {sample.image.name} is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        mask = m if mask is None else (np.maximum(mask, m) if num_classes == 2 else np.where(m > 0, m, mask))
    if mask is None:
        raise DataError(f"image {sample.name!r} has no mask")
    return image, mask


def fingerprint(samples: list[Sample]) -> dict:
    """sha256 over the bytes of every image (in order): identifies a calibration/validation set."""
    h = hashlib.sha256()
    seen: set[str] = set()  # a volume's bytes count once, however many of its slices are used
    for s in samples:
        h.update(s.name.encode())
        if str(s.image) not in seen:
            seen.add(str(s.image))
            MF.hash_source(h, s.image)
    return {"sha256": h.hexdigest(), "count": len(samples)}
