"""DICOM, NIfTI and 16-bit / float images: readers, geometry, masks written back, bad inputs.

Every file is built in-process (tests/medical_build.py); nothing is downloaded."""

import json
import shutil
import sys

import cv2
import medical_build as B
import numpy as np
import pytest
from badinput import Unchanged, cli, refused, rehash, worked

from edgeseg.data import folders as D
from edgeseg.data import medical as M
from edgeseg.errors import DataError, DependencyError
from edgeseg.runtime.intensity import parse


@pytest.fixture(scope="module")
def ct_bundle(tiny_bundle, tmp_path_factory):
    """The tiny bundle (embedded RGB images) with a soft-tissue CT window recorded."""
    b = tmp_path_factory.mktemp("ctb") / "bundle"
    shutil.copytree(tiny_bundle, b)
    return rehash(b, lambda m: m.update(intensity=parse("ct:soft-tissue").to_dict()))


# ------------------------------------------------------------------------------ DICOM readers
def test_single_dicom_in_hounsfield_units_with_spacing(tmp_path):
    hu, _ = B.ct_phantom()
    dcm = B.dicom(tmp_path / "a.dcm", B.hu_to_stored(hu), spacing=(0.7, 0.6))
    src = D.read_source(dcm)
    assert src.dtype == np.float32 and np.array_equal(src, hu)  # stored - 1024 = HU
    assert M.slice_spacing(dcm) == (0.7, 0.6)
    vol = M.open_volume(dcm)
    assert (vol.kind, vol.count, vol.height, vol.width) == ("dicom", 1, 40, 48)


def test_rescale_slope_applied(tmp_path):
    stored = np.arange(12, dtype=np.uint16).reshape(3, 4) * 10
    dcm = B.dicom(tmp_path / "s.dcm", stored, slope=2.0, intercept=-100.0)
    assert np.array_equal(D.read_source(dcm), stored * 2.0 - 100.0)


def test_monochrome1_is_inverted_over_its_stored_range(tmp_path):
    stored = np.array([[0, 100], [4000, 4095]], np.uint16)
    dcm = B.dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1", slope=1.0, intercept=0.0)
    # 12 bits stored: 0..4095 -> 4095..0 (high stored values are dark in MONOCHROME1)
    assert D.read_source(dcm).tolist() == [[4095, 3995], [95, 0]]


def test_rgb_ultrasound_frame_is_8_bit_rgb(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3)).astype(np.uint8)
    dcm = B.dicom(tmp_path / "us.dcm", rgb, photometric="RGB", modality="US")
    assert np.array_equal(D.read_source(dcm), rgb)
    assert np.array_equal(D.read_image(dcm), rgb)  # 8-bit: no policy needed


def test_multi_frame_file_is_a_volume_of_frames(tmp_path):
    frames = np.stack([B.hu_to_stored(B.ct_phantom(seed=k)[0]) for k in range(3)])
    dcm = B.dicom(tmp_path / "mf.dcm", frames)
    vol = M.open_volume(dcm)
    assert (vol.kind, vol.count) == ("dicom", 3)
    assert np.array_equal(M.read_slice(M.SlicePath.of(dcm, 2)), frames[2].astype(np.float32) - 1024)


def test_series_sorted_by_position_not_by_file_name(tmp_path):
    slices = [B.ct_phantom(seed=k)[0] for k in range(4)]
    files = B.series(tmp_path / "ser", slices, z0=-20.0, dz=2.5)
    assert sorted(f.name for f in files) != [f.name for f in files]  # names are out of order on purpose
    vol = M.open_volume(tmp_path / "ser")
    assert vol.kind == "dicom-series" and list(vol.files) == files and vol.spacing == (0.7, 0.6)
    data = M.volume_pixels(tmp_path / "ser")
    assert all(np.array_equal(data[k], slices[k]) for k in range(4))
    aff = np.asarray(vol.affine)
    assert np.allclose(aff[:3, 3], [10.0, 12.0, -20.0]) and np.allclose(np.diag(aff)[:3], [-0.6, -0.7, 2.5])


@pytest.mark.parametrize("case,words", [
    ("mixed", "mixes image sizes"), ("missing", "missing slice"), ("duplicate", "same position"),
])
def test_bad_series_refused(tmp_path, case, words):
    hu = [B.ct_phantom(seed=k)[0] for k in range(4)]
    folder = tmp_path / "ser"
    files = B.series(folder, hu)
    if case == "mixed":
        ds = M.read_dicom(files[1])
        B.dicom(files[1], B.hu_to_stored(hu[1][:30, :30]), position=ds.ImagePositionPatient,
                series_uid=ds.SeriesInstanceUID)
    elif case == "missing":
        files[2].unlink()
    else:
        ds = M.read_dicom(files[1])
        B.dicom(folder / "dup.dcm", B.hu_to_stored(hu[1]), position=ds.ImagePositionPatient,
                series_uid=ds.SeriesInstanceUID)
    with pytest.raises(DataError, match=words):
        M.open_volume(folder)


# ------------------------------------------------------------------------------ NIfTI and 2-D formats
def test_nifti_slices_along_any_axis(tmp_path):
    vol, _ = B.ct_volume(3, 40, 48)
    nii = B.nifti(tmp_path / "v.nii.gz", vol)
    v = M.open_volume(nii)
    assert (v.count, v.height, v.width) == (3, 40, 48) and v.spacing == pytest.approx((0.8, 0.9))
    assert np.array_equal(M.read_slice(M.SlicePath.of(nii, 1)), vol[:, :, 1])
    v0 = M.open_volume(nii, axis=0)
    assert (v0.count, v0.height, v0.width) == (40, 48, 3) and v0.spacing == pytest.approx((0.9, 2.5))
    assert np.array_equal(M.read_slice(nii, 5, axis=0), vol[5])


def test_16_bit_and_float_sources_keep_their_values(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    v16 = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000)
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), v16)
    tif = tmp_path / "b.tif"
    tifffile.imwrite(tif, v16)
    flt = tmp_path / "c.tif"
    tifffile.imwrite(flt, v16.astype(np.float32) / 7)
    for p in (png, tif):
        assert D.read_source(p).dtype == np.uint16 and np.array_equal(D.read_source(p), v16)
    assert np.allclose(D.read_source(flt), v16 / 7)
    mapped = D.read_image(png, parse("minmax:0,57000"))
    assert mapped.dtype == np.uint8 and mapped[3, 4, 0] == 255 and mapped[0, 0, 0] == 0
    assert D.read_image(png).dtype == np.uint8  # without a policy: 16-bit scaled to 8-bit, as before
    with pytest.raises(DataError, match="intensity policy"):
        D.read_image(flt)
    rgba = np.zeros((4, 5, 4), np.uint16)
    rgba[..., 2] = 60000  # red in OpenCV's BGRA order
    cv2.imwrite(str(tmp_path / "r.png"), rgba)
    src = D.read_source(tmp_path / "r.png")
    assert src.shape == (4, 5, 4) and src[0, 0, 0] == 60000  # RGBA order
    assert D.read_image(tmp_path / "r.png", parse("minmax:0,60000"))[0, 0].tolist() == [255, 0, 0]


# ------------------------------------------------------------------------------ folders: volumes as slices
def _nifti_dataset(root, n=2, slices=3):
    for c in range(n):
        vol, lab = B.ct_volume(slices)
        B.nifti(root / f"images/case{c}.nii.gz", vol)
        B.nifti(root / f"masks/case{c}.nii.gz", lab)
    return root


def test_nifti_pairs_become_named_slices_and_splits_name_volumes(tmp_path):
    root = _nifti_dataset(tmp_path / "d")
    (root / "splits").mkdir()
    (root / "splits/val.txt").write_text("case1\ncase0/slice_0002\n")
    samples = D.discover(root)
    assert [s.name for s in samples][:3] == ["case0/slice_0000", "case0/slice_0001", "case0/slice_0002"]
    val = D.discover(root, "val")
    assert [s.name for s in val] == ["case1/slice_0000", "case1/slice_0001", "case1/slice_0002", "case0/slice_0002"]
    img, mask = D.load_pair(samples[1], intensity=parse("ct:soft-tissue"))
    _, lab = B.ct_volume(3)
    assert img.shape == (40, 48, 3) and np.array_equal(mask, lab[:, :, 1])
    assert D.fingerprint(samples)["count"] == 6


def test_series_with_per_slice_png_masks_and_dicom_with_png_mask(tmp_path):
    root = tmp_path / "d"
    pairs = [B.ct_phantom(seed=k) for k in range(3)]
    B.series(root / "images/ser", [p[0] for p in pairs])
    for k, (_, m) in enumerate(pairs):
        (root / "masks/ser").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / f"masks/ser/slice_{k:04d}.png"), m * 255)
    hu, m = B.ct_phantom(seed=9)
    B.dicom(root / "images/one.dcm", B.hu_to_stored(hu))
    cv2.imwrite(str(root / "masks/one.png"), m * 255)
    samples = D.discover(root)
    assert [s.name for s in samples] == ["one", "ser/slice_0000", "ser/slice_0001", "ser/slice_0002"]
    for s, (hu_k, m_k) in zip(samples[1:], pairs):
        src, mask = D.load_pair(s, source=True)
        assert np.array_equal(src, hu_k) and np.array_equal(mask, m_k)


def test_mask_volume_of_another_shape_refused(tmp_path):
    root = _nifti_dataset(tmp_path / "d", n=1)
    B.nifti(root / "masks/case0.nii.gz", np.zeros((40, 48, 2), np.uint8))
    with pytest.raises(DataError, match="mask volume case0.nii.gz is 2 slice"):
        D.discover(root)


# ------------------------------------------------------------------------------ predict: masks in the source geometry
def test_nifti_in_nifti_mask_out_with_the_source_affine(ct_bundle, tmp_path):
    import nibabel as nib

    from edgeseg.runtime import Segmenter

    vol, _ = B.ct_volume(3, 40, 48)
    aff = np.array([[0, -0.8, 0, 20.0], [0.9, 0, 0, -5.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
    src = B.nifti(tmp_path / "in/scan.nii.gz", vol, affine=aff)
    worked(cli("predict", ct_bundle, src, "-o", tmp_path / "out"))
    out = nib.load(str(tmp_path / "out/scan_mask.nii.gz"))
    assert np.allclose(out.affine, nib.load(str(src)).affine) and out.shape == vol.shape
    assert out.get_data_dtype() == np.uint8 and out.header.get_zooms() == nib.load(str(src)).header.get_zooms()
    seg = Segmenter(ct_bundle)
    got = np.asarray(out.dataobj)
    for k in range(3):
        assert np.array_equal(got[:, :, k], seg.predict(vol[:, :, k].astype(np.float32)))
    marker = json.loads((tmp_path / "out/.edgeseg-output.json").read_text())
    assert marker["slices"] == 3 and marker["intensity"]["flagged"] == 0
    assert marker["volumes"]["scan"]["slices"] == 3 and marker["volumes"]["scan"]["seconds"] > 0


def test_nifti_along_another_axis(ct_bundle, tmp_path):
    import nibabel as nib

    from edgeseg.runtime import Segmenter

    vol, _ = B.ct_volume(3, 40, 48)
    src = B.nifti(tmp_path / "scan.nii.gz", vol)
    worked(cli("predict", ct_bundle, src, "-o", tmp_path / "out", "--slice-axis", 0))
    got = np.asarray(nib.load(str(tmp_path / "out/scan_mask.nii.gz")).dataobj)
    assert got.shape == vol.shape
    assert np.array_equal(got[7], Segmenter(ct_bundle).predict(vol[7].astype(np.float32)))
    refused(cli("predict", ct_bundle, src, "-o", tmp_path / "out2", "--slice-axis", 3), "--slice-axis")


def test_series_folder_to_nifti_mask_in_series_geometry(ct_bundle, tmp_path):
    import nibabel as nib

    from edgeseg.runtime import Segmenter

    slices = [B.ct_phantom(36, 44, seed=k)[0] for k in range(3)]
    B.series(tmp_path / "ser", slices)
    worked(cli("predict", ct_bundle, tmp_path / "ser", "-o", tmp_path / "out"))
    out = nib.load(str(tmp_path / "out/ser_mask.nii.gz"))
    assert out.shape == (44, 36, 3)  # (columns, rows, slices)
    assert np.allclose(out.affine, M.open_volume(tmp_path / "ser").affine)
    seg = Segmenter(ct_bundle)
    got = np.asarray(out.dataobj)
    for k in range(3):
        assert np.array_equal(got[:, :, k].T, seg.predict(slices[k].astype(np.float32)))
    # voxel (i, j, k) -> world: column i, row j of slice k lies at IPP + i*sx*row_cosine + j*sy*col_cosine (RAS)
    assert np.allclose(out.affine @ [2, 3, 1, 1], [10.0 - 2 * 0.6, 12.0 - 3 * 0.7, -20.0 + 2.5, 1])


def test_single_dicom_gets_png_mask_at_its_size_and_dicom_seg(ct_bundle, tmp_path):
    import pydicom

    hu, _ = B.ct_phantom(37, 45)
    B.dicom(tmp_path / "in/x.dcm", B.hu_to_stored(hu))
    worked(cli("predict", ct_bundle, tmp_path / "in", "-o", tmp_path / "out", "--dicom-seg"))
    m = cv2.imread(str(tmp_path / "out/masks/x.png"), cv2.IMREAD_UNCHANGED)
    assert m.shape == (37, 45) and (tmp_path / "out/overlays/x.jpg").is_file()
    seg = pydicom.dcmread(tmp_path / "out/x_seg.dcm")
    assert seg.Modality == "SEG" and seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "bundle" and len(algo.AlgorithmVersion) == 16  # the bundle's manifest id
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == \
        pydicom.dcmread(tmp_path / "in/x.dcm").SOPInstanceUID


def test_rgb_cine_and_png_in_one_folder(tiny_bundle, tmp_path):
    """An RGB ultrasound cine (multi-frame) needs no policy; a PNG beside it keeps predict's own path."""
    import nibabel as nib

    from edgeseg.runtime import Segmenter

    frames = np.random.default_rng(2).integers(0, 256, (3, 24, 32, 3)).astype(np.uint8)
    B.dicom(tmp_path / "in/cine.dcm", frames, photometric="RGB", modality="US")
    cv2.imwrite(str(tmp_path / "in/photo.png"), frames[0][:, :, ::-1])
    worked(cli("predict", tiny_bundle, tmp_path / "in", "-o", tmp_path / "out"))
    got = np.asarray(nib.load(str(tmp_path / "out/cine_mask.nii.gz")).dataobj)
    seg = Segmenter(tiny_bundle)
    assert got.shape == (32, 24, 3) and np.array_equal(got[:, :, 1].T, seg.predict(frames[1]))
    png = cv2.imread(str(tmp_path / "out/masks/photo.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(png > 0, seg.predict(frames[0]) > 0)


def test_dicom_seg_as_a_mask_is_refused_naming_the_alternatives(ct_bundle, tmp_path):
    hu, _ = B.ct_phantom()
    B.dicom(tmp_path / "in/x.dcm", B.hu_to_stored(hu))
    worked(cli("predict", ct_bundle, tmp_path / "in", "-o", tmp_path / "out", "--dicom-seg", "--no-overlay"))
    root = tmp_path / "d"
    shutil.copytree(tmp_path / "in", root / "images")
    (root / "masks").mkdir()
    shutil.copy(tmp_path / "out/x_seg.dcm", root / "masks/x.dcm")
    refused(cli("evaluate", ct_bundle, root, "-q"), "DICOM Segmentation", "NIfTI")


def test_dicom_seg_without_dicom_input_refused(ct_bundle, tmp_path):
    B.nifti(tmp_path / "v.nii.gz", B.ct_volume(2)[0])
    refused(cli("predict", ct_bundle, tmp_path / "v.nii.gz", "-o", tmp_path / "out", "--dicom-seg"), "--dicom-seg")
    assert not (tmp_path / "out").exists()


def test_ct_without_a_policy_is_refused_naming_it(tiny_bundle, tmp_path):
    B.nifti(tmp_path / "v.nii.gz", B.ct_volume(2)[0])
    refused(cli("predict", tiny_bundle, tmp_path / "v.nii.gz", "-o", tmp_path / "out"), "intensity")
    assert not (tmp_path / "out").exists()


def test_misfit_slices_are_counted(ct_bundle, tmp_path):
    vol = np.full((20, 30, 2), -1000, np.int16)  # all air: nothing inside the soft-tissue window
    B.nifti(tmp_path / "air.nii.gz", vol)
    r = cli("predict", ct_bundle, tmp_path / "air.nii.gz", "-o", tmp_path / "out", "--json")
    worked(r)
    assert json.loads(r.stdout.strip().splitlines()[-1])["intensity_flagged"] == 2


# ------------------------------------------------------------------------------ evaluate: HD95 in mm
def test_evaluate_uses_dicom_spacing_for_hd95(ct_bundle, tmp_path):
    from edgeseg.evaluate import evaluate
    from edgeseg.runtime import Segmenter
    from edgeseg.runtime.metrics import hd95

    root = tmp_path / "d"
    hu, m = B.ct_phantom()
    B.dicom(root / "images/a.dcm", B.hu_to_stored(hu), spacing=(2.0, 0.5))
    (root / "masks").mkdir()
    cv2.imwrite(str(root / "masks/a.png"), m * 255)
    seg = Segmenter(ct_bundle)
    summary, rows, masks = evaluate(seg, D.discover(root), keep_masks=True)
    assert summary["hd95_unit"] == "mm" and summary["intensity"]["flagged"] == 0
    want = hd95(masks["a"], m, spacing=(2.0, 0.5))
    assert rows[0]["hd95"] == pytest.approx(want)
    r = cli("evaluate", ct_bundle, root, "-q")
    worked(r)
    assert "hd95 (mm)" in r.stdout


def test_16_bit_pngs_reach_the_model_through_its_policy(tiny_bundle, tmp_path):
    """evaluate and the bench/compress scorer give the model the 16-bit values (its policy maps them),
    not the 8-bit reduction a policy-free model gets."""
    from edgeseg.evaluate import evaluate
    from edgeseg.measure.accuracy import score
    from edgeseg.runtime import Segmenter

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    rehash(b, lambda m: m.update(intensity=parse("minmax:0,4095").to_dict()))
    root = tmp_path / "d"
    img = (np.random.default_rng(3).random((40, 56, 3)) * 4095).astype(np.uint16)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    cv2.imwrite(str(root / "images/a.png"), img)
    cv2.imwrite(str(root / "masks/a.png"), (img[..., 0] > 2000).astype(np.uint8) * 255)
    seg = Segmenter(b)
    want = seg.predict(D.read_source(root / "images/a.png"))
    assert not np.array_equal(D.read_image(root / "images/a.png", seg.intensity),
                              D.read_image(root / "images/a.png"))  # mapped by the policy, not /257
    _, rows, masks = evaluate(seg, D.discover(root), keep_masks=True)
    assert np.array_equal(masks["a"], want)
    assert score(seg, D.discover(root)).dice[0] == pytest.approx(rows[0]["dice"])


# ------------------------------------------------------------------------------ bad inputs: one line, nothing written
def _no_pixels(tmp_path):
    return B.dicom(tmp_path / "in/nopix.dcm", None)


def _htj2k(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    p = B.dicom(tmp_path / "in/c.dcm", B.hu_to_stored(B.ct_phantom()[0]))
    ds = M.read_dicom(p)
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.201")  # HTJ2K: no decoder installed here
    ds.save_as(p, enforce_file_format=True)
    return p


def _truncated_dicom(tmp_path):
    p = B.dicom(tmp_path / "in/t.dcm", B.hu_to_stored(B.ct_phantom()[0]))
    p.write_bytes(p.read_bytes()[:400])
    return p


def _singular_nifti(tmp_path):
    import struct

    p = B.nifti(tmp_path / "in/s.nii", B.ct_volume(2)[0])
    raw = bytearray(p.read_bytes())
    raw[252:256] = struct.pack("<hh", 0, 1)  # qform_code 0, sform_code 1: the sform is the affine
    raw[296:312] = struct.pack("<4f", 0, 0, 0, 0)  # srow_y all zero: the affine has no inverse
    p.write_bytes(bytes(raw))
    return p


def _corrupt_nifti(tmp_path):
    p = B.nifti(tmp_path / "in/k.nii.gz", B.ct_volume(2)[0])
    p.write_bytes(p.read_bytes()[:200])
    return p


def _mixed_series(tmp_path):
    files = B.series(tmp_path / "in/ser", [B.ct_phantom(seed=k)[0] for k in range(3)])
    ds = M.read_dicom(files[0])
    B.dicom(files[0], B.hu_to_stored(B.ct_phantom(20, 20)[0]), position=ds.ImagePositionPatient,
            series_uid=ds.SeriesInstanceUID)
    return tmp_path / "in/ser"


def _gap_series(tmp_path):
    files = B.series(tmp_path / "in/ser", [B.ct_phantom(seed=k)[0] for k in range(4)])
    files[1].unlink()
    return tmp_path / "in/ser"


BAD = [(_no_pixels, "no pixel data"), (_htj2k, "no decoder"), (_truncated_dicom, "DICOM"),
       (_singular_nifti, "non-invertible affine"), (_corrupt_nifti, "NIfTI"),
       (_mixed_series, "mixes image sizes"), (_gap_series, "missing slice")]


@pytest.mark.parametrize("make,words", BAD, ids=[f.__name__.strip("_") for f, _ in BAD])
def test_bad_input_predict(ct_bundle, tmp_path, make, words):
    src = make(tmp_path)
    with Unchanged(tmp_path / "in"):
        refused(cli("predict", ct_bundle, src, "-o", tmp_path / "out"), words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("make,words", BAD, ids=[f.__name__.strip("_") for f, _ in BAD])
def test_bad_input_evaluate(ct_bundle, tmp_path, make, words):
    src = make(tmp_path)
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    is_file = src.is_file()
    shutil.move(str(src), str(root / "images" / src.name))
    (root / "masks").mkdir()
    if is_file:  # a mask, so that only the image is wrong
        cv2.imwrite(str(root / "masks" / f"{M.strip_suffix(src.name)}.png"), np.zeros((40, 48), np.uint8))
    refused(cli("evaluate", ct_bundle, root, "--json", tmp_path / "s.json", "-q"), words)
    assert not (tmp_path / "s.json").exists()


def test_missing_decoder_is_a_dependency_error(tmp_path):
    with pytest.raises(DependencyError, match="High-Throughput JPEG 2000.*no decoder.*pylibjpeg"):
        D.read_source(_htj2k(tmp_path))


def test_missing_extra_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)
    monkeypatch.setitem(sys.modules, "nibabel", None)
    p = tmp_path / "x.dcm"
    p.write_bytes(b"\0" * 128 + b"DICM")
    with pytest.raises(DependencyError, match=r'pip install "edgeseg\[medical\]"'):
        M.read_dicom(p)
    with pytest.raises(DependencyError, match=r'pip install "edgeseg\[medical\]"'):
        M.load_nifti(tmp_path / "x.nii.gz")


# ------------------------------------------------------------------------------ train
def test_train_on_ct_without_intensity_refused(tmp_path):
    root = _nifti_dataset(tmp_path / "d", n=1)
    refused(cli("train", root, "-o", tmp_path / "ck", "--variant", "tiny", "--size", 64, "--epochs", 1, "-q"),
            "--intensity")
    refused(cli("train", root, "-o", tmp_path / "ck", "--variant", "tiny", "--intensity", "ct:liver", "-q"),
            "unknown CT window preset")
    assert not (tmp_path / "ck").exists()


@pytest.mark.slow
def test_train_export_predict_nifti_with_a_window(tmp_path):
    """train --intensity on NIfTI pairs -> checkpoint and bundle record the policy -> predict a volume."""
    import nibabel as nib

    root = _nifti_dataset(tmp_path / "d", n=2)
    worked(cli("train", root, "-o", tmp_path / "ck", "--variant", "tiny", "--size", 64, "--epochs", 1,
               "--batch-size", 4, "--warmup-steps", 1, "--intensity", "ct:soft-tissue", "-q"))
    want = parse("ct:soft-tissue").to_dict()
    assert json.loads((tmp_path / "ck/edgeseg_checkpoint.json").read_text())["intensity"] == want
    worked(cli("export", tmp_path / "ck", "-o", tmp_path / "b", "--data", root))
    assert json.loads((tmp_path / "b/edgeseg.json").read_text())["intensity"] == want
    worked(cli("predict", tmp_path / "b", root / "images/case0.nii.gz", "-o", tmp_path / "p"))
    assert nib.load(str(tmp_path / "p/case0_mask.nii.gz")).shape == (40, 48, 3)
    worked(cli("evaluate", tmp_path / "ck", root, "-q"))  # the torch model applies the same policy
