"""Uncertainty on the device: per-pixel maps, the per-image summary, the validation profile and
flag, Segmenter(uncertainty=True), and `edgeseg predict --uncertainty`."""

import json
import math

import numpy as np
import pytest

from conftest import rgb, run_cli
from edgeseg.runtime.errors import BundleError, InputError
from edgeseg.runtime.uncertainty import (Prediction, UncertaintyProfile, boundary_band, entropy_map, heat_map,
                                         margin_map, profile_of, profile_section, summarize)


def onehot(labels: np.ndarray, c: int) -> np.ndarray:
    return np.eye(c, dtype=np.float32)[labels].transpose(2, 0, 1)


@pytest.mark.parametrize("c", [2, 3, 5])
def test_uniform_is_max_and_onehot_is_zero(c):
    uniform = np.full((c, 4, 6), 1.0 / c, np.float32)
    np.testing.assert_allclose(entropy_map(uniform), 1.0, atol=1e-6)
    np.testing.assert_allclose(margin_map(uniform), 1.0, atol=1e-6)
    sure = onehot(np.random.default_rng(c).integers(0, c, (4, 6)), c)
    assert entropy_map(sure).max() == 0.0
    assert margin_map(sure).max() == 0.0


def test_maps_in_range_and_ordered():
    # binary: entropy normalised by log 2 of p = 0.9 is the textbook value; margin 1 - 0.8
    p = np.stack([np.full((2, 2), 0.1), np.full((2, 2), 0.9)]).astype(np.float32)
    h = -(0.1 * math.log(0.1) + 0.9 * math.log(0.9)) / math.log(2)
    np.testing.assert_allclose(entropy_map(p), h, rtol=1e-5)
    np.testing.assert_allclose(margin_map(p), 0.2, rtol=1e-5)
    # more confident -> less uncertain, for both maps (three classes: margin uses the top two)
    a = np.array([0.5, 0.3, 0.2], np.float32)[:, None, None]
    b = np.array([0.8, 0.1, 0.1], np.float32)[:, None, None]
    assert entropy_map(b)[0, 0] < entropy_map(a)[0, 0]
    np.testing.assert_allclose(margin_map(a), 0.8, rtol=1e-5)
    with pytest.raises(InputError):
        entropy_map(np.ones((4, 4), np.float32))


def test_boundary_band():
    m = np.zeros((9, 9), np.uint8)
    m[4, 4] = 1
    want = np.zeros((9, 9), bool)
    want[3:6, 3:6] = True
    assert np.array_equal(boundary_band(m, 1), want)
    assert not boundary_band(np.zeros((5, 5)), 2).any()
    assert not boundary_band(np.ones((5, 5)), 2).any()  # no edge inside the image


def test_summary_on_hand_built_probabilities():
    # 10 x 10, foreground = a 4 x 4 square; uncertain (p = 0.5) only on the square's top row
    labels = np.zeros((10, 10), np.int64)
    labels[3:7, 3:7] = 1
    p = onehot(labels, 2)
    p[:, 3, 3:7] = 0.5
    mask = labels.astype(np.uint8)
    s = summarize(mask, p, band=1)
    assert s["mean"] == pytest.approx(4 / 100)
    assert s["foreground"] == pytest.approx(4 / 16)
    assert s["foreground_fraction"] == pytest.approx(16 / 100)
    band = boundary_band(mask, 1)  # 6 x 6 ring minus the 2 x 2 core: 32 pixels, 4 of them uncertain
    assert band.sum() == 32
    assert s["boundary"] == pytest.approx(4 / 32)
    assert s["area_ratio"] == pytest.approx(0.04 / (0.04 + 0.16))
    assert s["score"] == s["foreground"]
    # an empty prediction: hesitant pixels -> score 1; fully sure -> 0; no foreground/boundary figure
    empty = np.zeros((10, 10), np.uint8)
    hesitant = onehot(np.zeros((10, 10), np.int64), 2)
    hesitant[:, 0, 0] = 0.5
    assert summarize(empty, hesitant)["score"] == 1.0
    sure = summarize(empty, onehot(np.zeros((10, 10), np.int64), 2))
    assert sure["score"] == 0.0 and sure["foreground"] is None and sure["boundary"] is None


def test_profile_percentile_and_flag():
    scores = np.linspace(0.0, 0.99, 100)
    sec = profile_section([{"score": float(v)} for v in scores])
    assert sec["images"] == 100 and sec["threshold"] == pytest.approx(np.percentile(scores, 95))
    prof = UncertaintyProfile(json.loads(json.dumps(sec)))  # survives the JSON round trip
    assert prof.percentile(-1.0) == 0.0 and prof.percentile(2.0) == 100.0
    assert prof.percentile(0.505) == pytest.approx(51.0)  # 0.00 .. 0.50 are surer: 51 of 100
    assert prof.flagged(0.99) and not prof.flagged(0.5)
    assert prof.flagged(sec["threshold"] + 1e-9) and not prof.flagged(sec["threshold"])
    for bad in ({}, {**sec, "values": []}, {**sec, "threshold": float("nan")}, {**sec, "values": ["x"]},
                {**sec, "summary": "other"}):
        with pytest.raises(BundleError, match="uncertainty"):
            profile_of({"uncertainty": bad}, "b")
    assert profile_of({}, "b") is None


def test_heat_map_colours():
    hm = heat_map(np.array([[0.0, 0.5, 1.0, np.nan]], np.float32))
    assert hm.shape == (1, 4, 3) and hm.dtype == np.uint8
    assert hm[0, 0].sum() < hm[0, 1].sum() < hm[0, 2].sum()  # brighter when less sure


def test_bundle_records_distribution_and_segmenter_flags(tiny_bundle):
    from edgeseg.runtime.segmenter import Segmenter

    seg = Segmenter(tiny_bundle)
    sec = seg.info["uncertainty"]
    assert sec["summary"] == "score" and sec["images"] == len(sec["values"]) >= 1
    assert seg.uncertainty_profile is not None
    img = rgb(48, 60, seed=3)
    plain = seg.predict(img)
    mask, probs = seg.predict(img, probabilities=True)
    assert isinstance(plain, np.ndarray) and plain.dtype == np.uint8  # off: the types as before
    res = seg.predict(img, uncertainty=True)
    assert isinstance(res, Prediction) and res.probabilities is None
    assert np.array_equal(res.mask, plain) and np.array_equal(mask, plain)
    np.testing.assert_allclose(res.uncertainty, entropy_map(probs), atol=1e-6)
    assert res.summary == pytest.approx(summarize(plain, probs))
    assert res.percentile == pytest.approx(seg.uncertainty_profile.percentile(res.summary["score"]))
    assert res.flagged == (res.summary["score"] > sec["threshold"])
    with_p = seg.predict(img, probabilities=True, uncertainty=True)
    np.testing.assert_array_equal(with_p.probabilities, probs)
    batch = seg.predict_batch([img, rgb(30, 30, seed=4)], uncertainty=True)
    assert [type(r) for r in batch] == [Prediction, Prediction]
    # a profile where every validation image was surer: this image is flagged at percentile 100
    seg.uncertainty_profile = UncertaintyProfile(profile_section([{"score": -1.0}, {"score": -0.5}]))
    res2 = seg.predict(img, uncertainty=True)
    assert res2.flagged is True and res2.percentile == 100.0


def test_predict_cli_writes_heat_maps(tiny_bundle, embedded, tmp_path):
    out = tmp_path / "pred"
    r = run_cli("predict", tiny_bundle, embedded / "images", "-o", out, "--uncertainty", "-q")
    assert r.returncode == 0, r.stderr
    masks = sorted(p.stem for p in (out / "masks").rglob("*.png"))
    heat = sorted(p.stem for p in (out / "uncertainty").rglob("*.png"))
    assert masks and heat == masks
    assert (out / "overlays").is_dir()  # next to the overlays
    summary = json.loads((out / "uncertainty" / "summary.json").read_text())["images"]
    assert sorted(summary) == sorted(p.relative_to(out / "masks").with_suffix("").as_posix()
                                     for p in (out / "masks").rglob("*.png"))
    row = next(iter(summary.values()))
    assert 0.0 <= row["score"] <= 1.0 and 0.0 <= row["percentile"] <= 100.0 and isinstance(row["flagged"], bool)
    import cv2

    hm = cv2.imread(str(next((out / "uncertainty").rglob("*.png"))))
    assert hm is not None and hm.ndim == 3


def test_off_costs_nothing(tiny_bundle, monkeypatch):
    """With uncertainty off (the default) no uncertainty code runs and no probabilities are made."""
    import edgeseg.runtime.segmenter as S

    seg = S.Segmenter(tiny_bundle)
    img = rgb(40, 50, seed=9)
    want = seg.predict(img)

    def boom(*a, **k):
        raise AssertionError("uncertainty computed while off")

    monkeypatch.setattr(S, "assess", boom)
    asked = []
    finish = seg.finish
    monkeypatch.setattr(seg, "finish", lambda outs, sizes, probabilities=False: asked.append(probabilities)
                        or finish(outs, sizes, probabilities))
    assert np.array_equal(seg.predict(img), want)
    assert asked == [False]
