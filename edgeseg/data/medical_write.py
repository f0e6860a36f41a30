"""Masks written back in a medical source's geometry: NIfTI label volumes (nibabel, extra ``medical``).

- :func:`write_nifti_like`: a label volume with the source NIfTI's affine and header (its data
  type set to uint8, its intensity scaling removed), the same NIfTI class (NIfTI-1 or -2);
- :func:`write_series_nifti`: a DICOM series' (or multi-frame file's) masks as NIfTI, voxel
  (column, row, slice) -> RAS mm from the series' positions and orientation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.data.medical import Volume, _nibabel, load_nifti


def write_nifti_like(source: str | Path, labels: np.ndarray, out: str | Path) -> Path:
    """``labels`` (the source's 3-D shape) -> ``out`` with the source's affine and header."""
    nib = _nibabel()
    src = load_nifti(source)
    hdr = src.header.copy()
    labels = np.asarray(labels, np.uint8).reshape(src.shape[:3])
    img = type(src)(labels, src.affine, header=hdr)
    img.header.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"], img.header["cal_max"] = 0, int(labels.max()) if labels.size else 0
    img.header["descrip"] = b"edgeseg mask"
    nib.save(img, str(out))
    return Path(out)


def write_series_nifti(vol: Volume, masks: np.ndarray, out: str | Path) -> Path:
    """(slices, rows, cols) masks of a DICOM series -> NIfTI (cols, rows, slices) in its geometry."""
    nib = _nibabel()
    if vol.affine is not None:
        affine = np.asarray(vol.affine, np.float64)
    else:  # a multi-frame file without per-frame positions: spacing only, no patient position
        sy, sx = vol.spacing or (1.0, 1.0)
        affine = np.diag([-sx, -sy, 1.0, 1.0])
    data = np.ascontiguousarray(np.asarray(masks, np.uint8).transpose(2, 1, 0))
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(np.uint8)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"edgeseg mask"
    nib.save(img, str(out))
    return Path(out)
