"""Small DICOM and NIfTI files built in-process for the medical tests (no network, no sample downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"


def dicom(path: Path, pixels: np.ndarray | None, *, position=(0.0, 0.0, 0.0), slope=1.0, intercept=-1024.0,
          spacing=(0.7, 0.6), photometric="MONOCHROME2", series_uid=None, study_uid=None, frame_uid=None,
          instance=1, modality="CT", transfer_syntax=None, orientation=(1, 0, 0, 0, 1, 0)) -> Path:
    """A CT-like DICOM file: ``pixels`` stored (uint16 / int16 gray, (F,H,W) multi-frame, or HxWx3 uint8
    RGB); None writes no pixel data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    sop_class = US_IMAGE_STORAGE if photometric == "RGB" else CT_IMAGE_STORAGE
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "P1", "20000101", "O"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = frame_uid or generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "A1"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, instance
    ds.Manufacturer = "edgeseg-tests"
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
    ds.SliceThickness = 1.0
    if pixels is not None:
        arr = np.asarray(pixels)
        ds.PhotometricInterpretation = photometric
        if photometric == "RGB":
            ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
            ds.BitsAllocated = ds.BitsStored = 8
            ds.HighBit, ds.PixelRepresentation = 7, 0
        else:
            ds.SamplesPerPixel = 1
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12 if arr.dtype == np.uint16 else 16, \
                11 if arr.dtype == np.uint16 else 15
            ds.PixelRepresentation = 1 if arr.dtype == np.int16 else 0
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU"
        if (photometric == "RGB" and arr.ndim == 4) or (photometric != "RGB" and arr.ndim == 3):
            ds.NumberOfFrames = arr.shape[0]
        ds.Rows, ds.Columns = arr.shape[-3:-1] if photometric == "RGB" else arr.shape[-2:]
        ds.PixelData = np.ascontiguousarray(arr).tobytes()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return Path(path)


def hu_to_stored(hu: np.ndarray, intercept: float = -1024.0) -> np.ndarray:
    return np.clip(np.asarray(hu) - intercept, 0, 4095).astype(np.uint16)


def ct_phantom(h: int = 40, w: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(HU image, binary mask): air around a soft-tissue body with a brighter lesion."""
    rng = np.random.default_rng(seed)
    hu = np.full((h, w), -1000.0)
    yy, xx = np.mgrid[:h, :w]
    body = ((yy - h / 2) / (h * 0.42)) ** 2 + ((xx - w / 2) / (w * 0.42)) ** 2 < 1
    hu[body] = 40 + rng.normal(0, 10, body.sum())
    lesion = ((yy - h / 2 + 3) ** 2 + (xx - w / 2 - 4) ** 2) < (min(h, w) / 6) ** 2
    hu[lesion] = 160 + rng.normal(0, 10, lesion.sum())
    return np.round(hu), lesion.astype(np.uint8)


def series(folder: Path, slices: list[np.ndarray], z0: float = -20.0, dz: float = 2.5, **kw) -> list[Path]:
    """One DICOM series (HU slices) in ``folder``, files named out of order on purpose."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    uid, study, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    for k, hu in enumerate(slices):
        name = f"IM{(len(slices) - k) * 7 % 97:04d}.dcm"
        out.append(dicom(folder / name, hu_to_stored(hu), position=(-10.0, -12.0, z0 + k * dz), series_uid=uid,
                         study_uid=study, frame_uid=frame, instance=k + 1, **kw))
    return out


def nifti(path: Path, data: np.ndarray, affine=None, zooms=None) -> Path:
    import nibabel as nib

    aff = np.diag([0.8, 0.9, 2.5, 1.0]) if affine is None else np.asarray(affine, float)
    if affine is None:
        aff[:3, 3] = [-12.0, 7.5, 30.0]
    img = nib.Nifti1Image(np.asarray(data), aff)
    if zooms is not None:
        img.header.set_zooms(zooms)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return Path(path)


def ct_volume(n: int = 3, h: int = 40, w: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """(HU volume (h, w, n) int16, label volume (h, w, n) uint8): slices along the last axis."""
    pairs = [ct_phantom(h, w, seed=k) for k in range(n)]
    return (np.stack([p[0] for p in pairs], axis=-1).astype(np.int16),
            np.stack([p[1] for p in pairs], axis=-1).astype(np.uint8))
