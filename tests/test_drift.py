"""The input-drift guard: statistics of the calibration images in the bundle, scores at the device.

Synthetic checks use the embedded image set (calibration split = the reference): its other
splits must pass, and recoloured, gray, inverted, darkened, blank and noise images must be
flagged. The real-data check (kvasir calibration vs kvasir test, BUSI ultrasound and MoNuSeg
H&E) needs ../shared/data and skips when it is absent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from conftest import EMBEDDED
from edgeseg.data import folders as D
from edgeseg.runtime.drift import FEATURES, MIN_THRESHOLD, DriftGuard, image_stats
from edgeseg.runtime.errors import InputError


def _images(root, split, limit=None):
    samples = D.discover(root, split, require_masks=False)
    return [D.read_image(s.image) for s in samples[:limit]]


@pytest.fixture(scope="module")
def calib():
    return _images(EMBEDDED, "calibration")


@pytest.fixture(scope="module")
def guard(calib):
    return DriftGuard(image_stats(calib))


@pytest.fixture(scope="module")
def held_out():
    return _images(EMBEDDED, "test") + _images(EMBEDDED, "val")


def _gray(x):
    return np.repeat(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)


DRIFTS = {
    "channels_swapped": lambda x, rng: np.ascontiguousarray(x[:, :, ::-1]),
    "green_cast": lambda x, rng: np.ascontiguousarray(x[:, :, [1, 0, 2]]),
    "gray": lambda x, rng: _gray(x),
    "inverted": lambda x, rng: 255 - x,
    "darkened": lambda x, rng: (x * 0.4).astype(np.uint8),
    "blank": lambda x, rng: np.zeros_like(x),
    "uniform_noise": lambda x, rng: rng.integers(0, 256, x.shape, dtype=np.uint8),
    "noise_added": lambda x, rng: np.clip(x + rng.normal(0, 60, x.shape), 0, 255).astype(np.uint8),
}


def test_stats_are_plain_json_with_threshold_from_leave_one_out(calib):
    stats = image_stats(calib)
    again = json.loads(json.dumps(stats, allow_nan=False))
    assert again == stats
    assert stats["count"] == len(calib) == 16
    assert len(stats["gray_hist"]) == 32 and abs(sum(stats["gray_hist"]) - 1) < 1e-5
    assert len(stats["channel_mean"]) == len(stats["channel_std"]) == 3
    assert stats["features"]["names"] == list(FEATURES)
    cs = stats["calibration_scores"]
    assert stats["threshold"] == pytest.approx(max(1.5 * cs["p95"], MIN_THRESHOLD), abs=1e-3)
    # the embedded images are pink-red mucosa: the recorded channel means say so
    assert stats["channel_mean"][0] > stats["channel_mean"][2]


def test_held_out_images_of_the_same_kind_pass(guard, held_out):
    results = [guard.check(im) for im in held_out]
    flagged = [r["score"] for r in results if r["drifted"]]
    assert len(flagged) <= 1, flagged  # 24 held-out images; the threshold is a 95th percentile x 1.5
    assert np.median([r["score"] for r in results]) < 0.6 * guard.threshold


@pytest.mark.parametrize("kind", list(DRIFTS))
def test_drifted_images_are_flagged(guard, held_out, kind):
    rng = np.random.default_rng(0)
    for im in held_out[:6]:
        r = guard.check(DRIFTS[kind](im, rng))
        assert r["drifted"], (kind, r)
        assert r["details"]["most_different"] in FEATURES
        assert set(r["details"]["z"]) == set(FEATURES)


@pytest.mark.parametrize("change", ["upscaled_2x", "downscaled_half", "jpeg_q50", "gray_2d_array"])
def test_harmless_changes_do_not_drift(guard, held_out, change):
    for im in held_out[:6]:
        if change == "upscaled_2x":
            x = cv2.resize(im, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
        elif change == "downscaled_half":
            x = cv2.resize(im, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
        elif change == "jpeg_q50":
            x = cv2.imdecode(cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 50])[1], cv2.IMREAD_UNCHANGED)
        else:  # a 2-D array is accepted like everywhere in the runtime (scored as gray: drifted here)
            assert guard.check(_gray(im)[:, :, 0])["drifted"]
            continue
        assert abs(guard.score(x) - guard.score(im)) < 0.5 * guard.threshold
        assert not guard.check(x)["drifted"]


def test_guard_from_json_round_trip_scores_the_same(calib, held_out):
    g1 = DriftGuard.from_images(calib)
    g2 = DriftGuard(json.loads(json.dumps(g1.stats)))
    for im in held_out[:4]:
        assert g2.score(im) == pytest.approx(g1.score(im), rel=1e-4)


def test_bad_inputs_to_the_guard(guard, calib):
    with pytest.raises(InputError, match="at least 4"):
        image_stats(calib[:3])
    with pytest.raises(InputError, match="uint8"):
        guard.score(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(InputError, match="HxWx3"):
        guard.check(np.zeros((10, 10, 4), np.uint8))
    bad = json.loads(json.dumps(guard.stats))
    bad["features"]["scale"][0] = 0
    with pytest.raises(InputError, match="invalid input statistics"):
        DriftGuard(bad)
    bad = dict(guard.stats, version=99)
    with pytest.raises(InputError, match="version 99"):
        DriftGuard(bad)
    with pytest.raises(InputError, match="invalid input statistics"):
        DriftGuard([1, 2, 3])


def test_constant_calibration_set_does_not_flag_itself():
    imgs = [np.full((30, 40, 3), (180, 90, 80), np.uint8) for _ in range(5)]
    g = DriftGuard(image_stats(imgs))
    assert g.threshold == MIN_THRESHOLD
    assert not g.check(imgs[0])["drifted"]
    assert g.check(np.full((30, 40, 3), 128, np.uint8))["drifted"]


def test_drift_module_is_numpy_only():
    code = textwrap.dedent("""
        import sys
        import edgeseg.runtime.drift
        bad = [m for m in ('torch', 'transformers', 'cv2', 'onnxruntime', 'scipy') if m in sys.modules]
        bad += [m for m in sys.modules if m.startswith('edgeseg.') and not m.startswith('edgeseg.runtime')]
        print(bad)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


# =========================================================================== in bundles
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from edgeseg.model.checkpoint import CheckpointMeta, save_checkpoint
    from edgeseg.model.variants import build_model
    from edgeseg.runtime.preprocess import Preprocess

    return save_checkpoint(build_model("tiny").eval(), CheckpointMeta(preprocess=Preprocess(64, 64)),
                           tmp_path_factory.mktemp("drift") / "ckpt")


@pytest.mark.slow
def test_export_records_stats_of_its_parity_images_and_segmenter_scores(ckpt, tmp_path, held_out):
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.runtime import Segmenter

    path, rep = export_bundle(ckpt, tmp_path / "b", data=EMBEDDED, split="val", limit=0)  # all 12 val images
    seg = Segmenter(path)
    stats = seg.bundle.manifest["input_stats"]
    assert stats["count"] == rep["images"] == 12
    assert stats["source"]["what"] == "parity images" and len(stats["source"]["sha256"]) == 64
    ok = seg.drift(held_out[0])
    assert set(ok) == {"score", "drifted", "threshold", "details", "likely_cause"} and not ok["drifted"]
    assert ok["likely_cause"] is None
    assert seg.drift(255 - held_out[0])["drifted"]


def test_export_with_too_few_images_records_no_stats(ckpt, tmp_path):
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.runtime import Segmenter
    from edgeseg.runtime.bundle import BundleError

    path, _ = export_bundle(ckpt, tmp_path / "b", data=EMBEDDED, split="val", limit=2)
    seg = Segmenter(path)
    assert "input_stats" not in seg.bundle.manifest and seg.drift_guard is None
    with pytest.raises(BundleError, match="no input statistics"):
        seg.drift(np.zeros((8, 8, 3), np.uint8))


@pytest.mark.slow
def test_compress_final_bundle_carries_calibration_stats(ckpt, tmp_path, calib):
    """End to end, kept small: no distillation, no INT8; the final manifest's statistics are
    those of the calibration images (not of the export stage's parity images)."""
    from edgeseg.compress.pipeline import Compressor, Recipe
    from edgeseg.runtime import Segmenter

    d = str(EMBEDDED)
    rec = Recipe(calib=d, calib_split="calibration", calib_count=10, val=d, val_split="val", distill_epochs=0,
                 int8=False, runs=2, warmup=1, threads=1, prune_ratio=0.25, decoder_ratio=0.25, search=False)
    Compressor(ckpt, tmp_path / "c", rec, progress=False, accept_over_budget=True).run()
    seg = Segmenter(tmp_path / "c/bundle")
    m = seg.bundle.manifest
    stats = m["input_stats"]
    assert stats["source"]["what"] == "calibration images"
    assert stats["count"] == m["calibration"]["count"] == 10
    assert stats["source"]["sha256"] == m["calibration"]["sha256"]
    export_stats = json.loads((tmp_path / "c/stages/export/edgeseg.json").read_text())["input_stats"]
    assert export_stats["source"]["what"] == "parity images"
    assert not seg.drift(calib[0])["drifted"] and seg.drift(_gray(calib[0]))["drifted"]


# =========================================================================== real data
@pytest.mark.slow
@pytest.mark.data
def test_real_data_other_datasets_drift_and_held_out_kvasir_does_not(shared_data):
    guard = DriftGuard(image_stats(_images(shared_data / "kvasir-seg", "calibration")))
    rates = {}
    for name, split, limit in [("kvasir-seg", "test", 40), ("busi-subset", "test", 24),
                               ("monuseg-train", "val", 6)]:
        flags = [guard.check(im)["drifted"] for im in _images(shared_data / name, split, limit)]
        rates[name] = float(np.mean(flags))
    assert rates["kvasir-seg"] <= 0.10, rates
    assert rates["busi-subset"] >= 0.90, rates
    assert rates["monuseg-train"] >= 0.90, rates
