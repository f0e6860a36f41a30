"""``edgeseg predict`` for DICOM and NIfTI inputs: masks written back in the source's geometry.

edgeseg.predict calls :func:`sources` to list what a path holds and :func:`predict_source` for
each DICOM/NIfTI entry (2-D image files keep predict's own path):

- a NIfTI volume ``scan.nii.gz`` -> ``OUT/scan_mask.nii.gz``: the slices along the chosen axis
  segmented one by one, stacked back, written with the source's affine and header (uint8 labels);
- a DICOM series folder ``series/`` (or a multi-frame file) -> ``OUT/series_mask.nii.gz`` in the
  series geometry (voxel -> RAS affine from ImagePositionPatient/Orientation and PixelSpacing);
- a single DICOM image ``x.dcm`` -> ``OUT/masks/x.png`` at its size (and an overlay), as any image;
- with ``dicom_seg``: ``OUT/NAME_seg.dcm``, a DICOM Segmentation (highdicom, extra ``dicom-seg``)
  referencing the source images, its algorithm identified by the model's name and version.

Source pixels go to the Segmenter as they are (its intensity policy maps them); without a policy
only 8-bit DICOM is accepted. Images that do not fit the policy are counted (``flagged``). The
output folder's marker (.edgeseg-output.json) records, per volume, its slices, flagged slices and
end-to-end seconds (read, map, predict every slice, write).
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np

from edgeseg.data import medical as M
from edgeseg.data import medical_folders as MF
from edgeseg.errors import DataError, DependencyError

log = logging.getLogger(__name__)


def sources(src: Path) -> list[tuple[str, Path]] | None:
    """(output name, path) of every input under ``src`` with DICOM series kept whole; None when
    ``src`` holds no DICOM/NIfTI at all (predict's 2-D path handles it)."""
    src = Path(src)
    if src.is_file():
        return [(M.strip_suffix(src.name), src)] if MF.is_medical_path(src) else None
    if not src.is_dir():
        return None
    from edgeseg.data.folders import image_files

    files = image_files(src)
    if not any(M.is_nifti(p) or M.is_dicom(p) for p in files):
        return None
    series = MF.series_dirs(files)
    if src in series:  # the folder is one series
        return [(src.name, src)]
    items: dict[str, Path] = {}
    for p in files:
        path = p.parent if p.parent in series else p
        name = path.relative_to(src).as_posix() if path.is_dir() else M.strip_suffix(p.relative_to(src).as_posix())
        if name in items and items[name] != path:
            raise DataError(f"two inputs would write the same mask {name}: {items[name].name} and {path.name}")
        items[name] = path
    return list(items.items())


def _model_input(seg, src: np.ndarray, path) -> np.ndarray:
    if seg.intensity is not None:
        return src
    if src.dtype != np.uint8:
        raise DataError(f"{path} holds {src.dtype} values {float(src.min()):g}..{float(src.max()):g} but this model "
                        f"records no intensity policy (it takes 8-bit images only): {MF.POLICY_HINT}")
    return MF.legacy_rgb(src, path)


def _segment(seg, src: np.ndarray, path) -> tuple[np.ndarray, bool]:
    """(mask, flagged) of one slice; the Segmenter's own warning is replaced by the count."""
    flagged = bool(seg.intensity is not None and seg.intensity_check(src)["flagged"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="image does not fit the bundle's intensity policy")
        return seg.predict(_model_input(seg, src, path)), flagged


def predict_source(seg, name: str, path: Path, tmp: Path, overlay: bool, dicom_seg: bool, model_name: str,
                   model_id: str | None, write_png, overlay_image, axis: int = -1) -> dict:
    """Predict one DICOM/NIfTI input into ``tmp``; returns {"slices", "flagged", "files"}."""
    vol = M.open_volume(path, axis)
    if vol.kind == "dicom" and vol.count == 1:
        src = M.read_slice(path, 0)
        mask, flagged = _segment(seg, src, path)
        files = [_png_mask(seg, mask, tmp / "masks" / f"{name}.png", write_png)]
        if overlay:
            shown = _display(seg, src, path)
            colors = seg.info.get("colors") or [(0, 0, 0), (255, 64, 64)]
            write_png(tmp / "overlays" / f"{name}.jpg", overlay_image(shown, mask, colors)[:, :, ::-1])
        if dicom_seg:
            files.append(write_dicom_seg([M.read_dicom(path, pixels=False)], mask[None], seg.classes,
                                         tmp / f"{name}_seg.dcm", model_name, model_id))
        return {"slices": 1, "flagged": int(flagged), "files": files}
    data = M.volume_pixels(path, vol.axis)
    masks, flagged = [], 0
    for k in range(data.shape[0]):
        m, f = _segment(seg, data[k], f"{path} slice {k}")
        masks.append(m)
        flagged += f
    stack = np.stack(masks)
    out = tmp / f"{name}_mask.nii.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    from edgeseg.data.medical_write import write_nifti_like, write_series_nifti

    if vol.kind == "nifti":
        write_nifti_like(path, np.moveaxis(stack, 0, vol.axis), out)
    else:
        write_series_nifti(vol, stack, out)
    files = [out.name]
    if dicom_seg:
        if vol.kind != "dicom-series":
            raise DataError(f"--dicom-seg for {path}: DICOM SEG is written for DICOM images and series only")
        files.append(write_dicom_seg([M.read_dicom(f, pixels=False) for f in vol.files], stack, seg.classes,
                                     tmp / f"{name}_seg.dcm", model_name, model_id))
    return {"slices": int(stack.shape[0]), "flagged": flagged, "files": files}


def _png_mask(seg, mask: np.ndarray, path: Path, write_png) -> str:
    write_png(path, (mask * 255).astype(np.uint8) if seg.num_classes == 2 else mask)
    return f"masks/{path.name}"


def _display(seg, src: np.ndarray, path) -> np.ndarray:
    """The 8-bit RGB the model saw (for overlays)."""
    if seg.intensity is None:
        return MF.legacy_rgb(src, path)
    from edgeseg.runtime.intensity import apply

    return apply(src, seg.intensity)


def write_dicom_seg(sources_ds: list, masks: np.ndarray, classes, out: Path, model_name: str,
                    model_id: str | None) -> str:
    """A DICOM Segmentation of ``masks`` ((frames, H, W) label ids, one frame per source image),
    one segment per foreground class, marked as made by this model (name and version)."""
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError:
        raise DependencyError('--dicom-seg needs highdicom: pip install "edgeseg[dicom-seg]"') from None
    from edgeseg import __version__

    algo = hd.AlgorithmIdentificationSequence(name=model_name[:64] or "edgeseg", family=codes.cid7162.ArtificialIntelligence,
                                              version=(model_id or __version__)[:64])
    present = [c for c in range(1, len(classes)) if (masks == c).any()] or [1]
    descs = [hd.seg.SegmentDescription(segment_number=i + 1, segment_label=str(classes[c])[:64],
                                       segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                                       segmented_property_type=codes.SCT.Lesion,
                                       algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                       algorithm_identification=algo)
             for i, c in enumerate(present)]
    labels = np.zeros(masks.shape, np.uint8)
    for i, c in enumerate(present):
        labels[masks == c] = i + 1
    try:
        seg_ds = hd.seg.Segmentation(
            source_images=sources_ds, pixel_array=labels if len(sources_ds) > 1 else labels[0],
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descs,
            series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="edgeseg", manufacturer_model_name=model_name[:64] or "edgeseg",
            software_versions=__version__, device_serial_number=(model_id or "none")[:64])
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DataError(f"cannot write a DICOM SEG for {sources_ds[0].filename if sources_ds else out.name}: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    seg_ds.save_as(str(out))
    return out.name


class Dispatch:
    """What edgeseg.predict asks per input: DICOM/NIfTI go through :func:`predict_source`, 2-D
    images are read for the Segmenter (source pixels when its bundle has an intensity policy), and
    images that do not fit the policy are counted."""

    def __init__(self, seg, src: Path, dicom_seg: bool = False, model_name: str = "", model_id: str | None = None,
                 axis: int = -1):
        if isinstance(axis, bool) or axis not in (-3, -2, -1, 0, 1, 2):
            raise DataError(f"--slice-axis must be 0, 1 or 2 (or -1 for the last), got {axis}")
        self.seg, self.dicom_seg, self.model_name, self.model_id = seg, dicom_seg, model_name, model_id
        self.axis = axis
        self.items = sources(src)
        self.flagged = 0
        self.slices = 0
        self.volumes: dict[str, dict] = {}
        if dicom_seg and not any(M.is_dicom(p) or M.is_series_dir(p) for _, p in self.items or []):
            raise DataError(f"--dicom-seg: no DICOM image or series in {src} (DICOM SEG references DICOM sources)")

    def handles(self, path: Path) -> bool:
        return MF.is_medical_path(path)

    def predict(self, name: str, path: Path, tmp: Path, overlay: bool, write_png, overlay_image) -> None:
        t0 = time.perf_counter()
        done = predict_source(self.seg, name, path, tmp, overlay, self.dicom_seg, self.model_name, self.model_id,
                              write_png, overlay_image, self.axis)
        self.flagged += done["flagged"]
        self.slices += done["slices"]
        if done["slices"] > 1:  # end-to-end time per volume: read, map, predict each slice, write
            self.volumes[name] = {"slices": done["slices"], "seconds": round(time.perf_counter() - t0, 3),
                                  "flagged": done["flagged"]}

    def read(self, path: Path) -> np.ndarray:
        """A 2-D image file as the Segmenter takes it."""
        from edgeseg.data import folders as D

        if self.seg.intensity is None:
            return D.read_image(path)
        src = D.read_source(path)
        self.flagged += bool(self.seg.intensity_check(src)["flagged"])
        return src

    def display(self, image: np.ndarray) -> np.ndarray:
        """The 8-bit RGB the model saw, for overlays."""
        return image if self.seg.intensity is None else _display(self.seg, image, "image")

    def record(self) -> dict:
        """Fields for the output folder's marker."""
        out = {"slices": self.slices} if self.slices else {}
        if self.volumes:
            out["volumes"] = self.volumes
        if self.seg.intensity is not None:
            out["intensity"] = {"policy": self.seg.intensity.describe(), "flagged": self.flagged}
        return out
