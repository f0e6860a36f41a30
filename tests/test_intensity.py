"""Intensity policies (edgeseg.runtime.intensity): parsing, mapping, flagging, and the same mapping
on both sides of the wall (a CT DICOM windowed by the toolkit and by a torch-free runtime)."""

import json
import shutil
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from conftest import blocking_imports

from edgeseg.runtime.errors import InputError
from edgeseg.runtime.intensity import (
    PRESETS,
    IntensityPolicy,
    apply,
    check,
    from_info,
    parse,
)


# ------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize("name,lw", sorted(PRESETS.items()))
def test_presets_are_windows(name, lw):
    p = parse(f"ct:{name}")
    assert (p.kind, p.level, p.width, p.preset) == ("window", *lw, name)
    assert (p.low, p.high) == (lw[0] - lw[1] / 2, lw[0] + lw[1] / 2)


@pytest.mark.parametrize("spec", ["ct:soft-tissue", "window:-600,1500", "percentile:0.5,99.5", "minmax:0,4095"])
def test_spec_and_dict_round_trip(spec):
    p = parse(spec)
    assert parse(p.spec()) == p
    assert IntensityPolicy.from_dict(json.loads(json.dumps(p.to_dict()))) == p


@pytest.mark.parametrize("spec,words", [
    ("ct:liver", "unknown CT window preset"), ("window:40", "two numbers"), ("window:40,-5", "width must be positive"),
    ("percentile:99,1", "low"), ("percentile:-1,50", "0..100"), ("minmax:a,b", "two numbers"),
    ("gamma:1,2", "unknown intensity policy"), ("soft", "unknown intensity policy"), ("minmax:0,inf", "finite"),
])
def test_bad_specs_are_refused(spec, words):
    with pytest.raises(InputError, match=words):
        parse(spec)


def test_bad_recorded_policy_is_refused():
    with pytest.raises(InputError):
        IntensityPolicy.from_dict({"kind": "minmax", "low": 5})
    with pytest.raises(InputError):
        IntensityPolicy.from_dict({"kind": "window", "level": 40, "width": 0})
    assert from_info({}) is None and from_info({"intensity": None}) is None


# ------------------------------------------------------------------------------ mapping
def test_window_maps_hounsfield_units():
    p = parse("ct:soft-tissue")  # -160 .. 240 HU
    hu = np.array([[-1000, -160, 40, 240, 3000]], np.int16)
    out = apply(hu, p)
    assert out.shape == (1, 5, 3) and out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [0, 0, 128, 255, 255]  # level maps to mid-grey (127.5 rounds up)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_minmax_on_16_bit_keeps_its_precision():
    p = parse("minmax:0,4095")
    img = np.array([[0, 1000, 1016, 4095]], np.uint16)
    out = apply(img, p)[0, :, 0]
    assert out.tolist() == [0, 62, 63, 255]  # 1000 and 1016 differ after mapping; /257 would merge them


def test_percentile_uses_each_image_range():
    p = parse("percentile:0,100")
    a = np.linspace(-5.0, 5.0, 11, dtype=np.float32).reshape(1, 11)
    assert apply(a, p)[0, [0, 10], 0].tolist() == [0, 255]
    assert (apply(a * 100, p) == apply(a, p)).all()  # scale-free


def test_channels_rgb_kept_alpha_dropped_gray_repeated():
    p = parse("minmax:0,255")
    rgb = np.random.default_rng(0).integers(0, 256, (4, 5, 3)).astype(np.uint8)
    assert (apply(rgb, p) == rgb).all()
    rgba = np.dstack([rgb, np.full((4, 5), 7, np.uint8)])
    assert (apply(rgba, p) == rgb).all()
    assert apply(rgb[:, :, :1], p).shape == (4, 5, 3)


@pytest.mark.parametrize("bad,words", [
    (np.full((3, 3), np.nan, np.float32), "NaN"), (np.zeros((3, 3), bool), "numbers"),
    (np.zeros((3, 3, 2), np.uint8), "HxW"), (np.zeros((0, 3), np.int16), "empty"),
    (np.zeros((3, 3), np.complex64), "numbers"),
])
def test_bad_pixels_are_refused(bad, words):
    with pytest.raises(InputError, match=words):
        apply(bad, parse("ct:lung"))


# ------------------------------------------------------------------------------ flagging
def test_flags_say_why():
    hu = np.full((8, 8), 40.0, np.float32)
    assert not check(hu, parse("ct:soft-tissue"))["flagged"]
    air = check(np.full((8, 8), -1000.0, np.float32), parse("ct:brain"))
    assert air["flagged"] and "inside" in air["reason"] and air["below"] == 1.0
    disp = check(np.full((8, 8), 100, np.uint8), parse("ct:soft-tissue"))
    assert disp["flagged"] and "8-bit" in disp["reason"]
    over = check(np.array([[0, 5000]], np.uint16), parse("minmax:0,4095"))
    assert over["flagged"] and over["above"] == 0.5 and "clipped" in over["reason"]
    assert check(np.ones((4, 4), np.float32), parse("percentile:1,99"))["flagged"]


# ------------------------------------------------------------------------------ both sides of the wall
@pytest.fixture(scope="module")
def ct_bundle(tiny_bundle, tmp_path_factory):
    """The tiny bundle with a soft-tissue window recorded (re-sealed, so only the policy differs)."""
    from badinput import rehash

    b = tmp_path_factory.mktemp("ct") / "bundle"
    shutil.copytree(tiny_bundle, b)
    return rehash(b, lambda m: m.update(intensity=parse("ct:soft-tissue").to_dict()))


def test_segmenter_maps_source_pixels_and_warns_on_misfit(ct_bundle):
    from edgeseg.runtime import Segmenter

    seg = Segmenter(ct_bundle)
    hu = np.full((30, 40), -1000.0, np.float32)
    hu[8:22, 10:30] = 60.0
    mapped = apply(hu, seg.intensity)
    # the policy is applied to every image: HU in, same result as the 8-bit image a bundle without one takes
    plain = Segmenter(ct_bundle)
    plain.intensity = None
    assert (seg.predict(hu) == plain.predict(mapped)).all()
    assert (seg.prepare([hu]) == plain.prepare([mapped])).all()
    with pytest.warns(RuntimeWarning, match="does not fit"):
        seg.predict(np.full((30, 40), 3000.0, np.float32))
    assert seg.intensity_check(hu)["flagged"] is False


def test_hu_window_identical_in_toolkit_and_torch_free_runtime(ct_bundle, tmp_path):
    """A CT DICOM: the toolkit reads and windows it (edgeseg.data); a subprocess where torch cannot
    be imported applies the modality LUT with pydicom and the bundle's policy with the runtime.
    Same 8-bit image, same mask."""
    import medical_build as B

    from edgeseg.data import folders as D
    from edgeseg.runtime import Segmenter

    hu, _ = B.ct_phantom(36, 44)
    dcm = B.dicom(tmp_path / "ct.dcm", B.hu_to_stored(hu), slope=1.0, intercept=-1024.0)
    policy = Segmenter(ct_bundle).intensity
    toolkit_img = D.read_image(dcm, policy)
    toolkit_mask = Segmenter(ct_bundle).predict(D.read_source(dcm))
    code = blocking_imports('torch', 'transformers', 'torch_pruning', 'cv2') + textwrap.dedent(f"""
        import numpy as np, pydicom
        from pydicom.pixels import apply_modality_lut
        from edgeseg.runtime import Segmenter
        from edgeseg.runtime.intensity import apply
        ds = pydicom.dcmread({str(dcm)!r})
        hu = apply_modality_lut(ds.pixel_array, ds)
        seg = Segmenter({str(ct_bundle)!r})
        np.save({str(tmp_path / 'img.npy')!r}, apply(hu, seg.intensity))
        np.save({str(tmp_path / 'mask.npy')!r}, seg.predict(hu))
        assert not [k for k in sys.modules if k.split('.')[0] in ('torch', 'transformers', 'cv2')]
        print('ok')
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    assert np.array_equal(np.load(tmp_path / "img.npy"), toolkit_img)
    assert np.array_equal(np.load(tmp_path / "mask.npy"), toolkit_mask)
    # the stored values went through RescaleIntercept (-1024) before the window: HU in, window applied
    expected = np.clip(np.floor((hu - (-160.0)) * 255.0 / 400.0 + 0.5), 0, 255).astype(np.uint8)
    assert np.array_equal(toolkit_img[..., 0], expected)


def test_no_policy_bundle_behaves_as_before(tiny_bundle):
    from edgeseg.runtime import Segmenter

    seg = Segmenter(tiny_bundle)
    assert seg.intensity is None and seg.intensity_check(np.zeros((4, 4), np.uint8)) is None
    with pytest.raises(InputError, match="uint8.*float32.*--intensity"):
        seg.predict(np.zeros((20, 30), np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert seg.predict(np.zeros((20, 30, 3), np.uint8)).shape == (20, 30)


@pytest.mark.parametrize("spec", ["ct:soft-tissue", "percentile:1,99"])
def test_tiled_prediction_maps_windows_as_the_whole_image(tiny_bundle, tmp_path, spec):
    """Segmenter.predict(source, tiled=True) with a policy = tiled prediction of the whole image
    mapped first (a percentile policy's bounds are the whole image's, not each window's)."""
    from badinput import rehash

    from edgeseg.runtime import Segmenter

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    rehash(b, lambda m: m.update(intensity=parse(spec).to_dict()))
    seg = Segmenter(b)
    rng = np.random.default_rng(4)
    hu = np.full((150, 210), -1000.0, np.float32)
    hu[20:130, 30:190] = 40 + rng.normal(0, 30, (110, 160))
    hu[60:90, 100:150] += 150 * np.linspace(0, 1, 50)[None, :]
    plain = Segmenter(b)
    plain.intensity = None
    want = plain.predict(apply(hu, seg.intensity), tiled=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no per-window misfit warnings
        got = seg.predict(hu, tiled=True)
    assert np.array_equal(got, want) and got.shape == hu.shape
    assert seg.intensity == parse(spec)  # the Segmenter's own policy is untouched
