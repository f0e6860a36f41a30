"""Colour order is explicit in the runtime API, and drift names its likely cause."""

import warnings

import numpy as np
import pytest

from edgeseg.runtime import InputError, Segmenter
from edgeseg.runtime.drift import DriftGuard, channels_look_swapped, image_stats


def reddish(seed, h=120, w=160):
    """Endoscopy-like: red-dominant, textured."""
    rng = np.random.default_rng(seed)
    base = np.array([170, 80, 60]) + rng.normal(0, 8, 3)
    img = base + rng.normal(0, 18, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def stats():
    return image_stats([reddish(i) for i in range(12)])


class EchoRunner:
    """Logits that depend on the red channel only: a channel swap changes the mask."""

    name = "echo"

    def infer(self, batch):
        red = batch[:, 0:1]
        return {"logits": np.concatenate([-red, red], axis=1).astype(np.float32)}

    def close(self):
        pass


def segmenter(stats=None):
    info = {"preprocess": {"height": 32, "width": 32}, "classes": ["bg", "fg"],
            "outputs": [{"name": "logits", "kind": "logits"}]}
    if stats is not None:
        info["input_stats"] = stats
    return Segmenter.from_runner(EchoRunner(), info)


def test_bgr_input_declared_gives_the_rgb_result():
    seg = segmenter()
    img = reddish(1)
    bgr = np.ascontiguousarray(img[:, :, ::-1])
    assert np.array_equal(seg.predict(bgr, color="BGR"), seg.predict(img))
    assert not np.array_equal(seg.predict(bgr), seg.predict(img))  # undeclared BGR: another answer
    m1, p1 = seg.predict(bgr, probabilities=True, color="BGR")
    assert np.allclose(p1, seg.predict(img, probabilities=True)[1])


def test_swapped_channels_warn_once(stats):
    seg = segmenter(stats)
    bgr = np.ascontiguousarray(reddish(50)[:, :, ::-1])
    with pytest.warns(RuntimeWarning, match="color='BGR'"):
        seg.predict(bgr)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seg.predict(bgr)  # once per Segmenter, not per image
        segmenter(stats).predict(reddish(51))  # RGB as calibrated: silent
        segmenter(stats).predict(bgr, color="BGR")  # declared: silent


def test_cheap_check_needs_colourful_calibration():
    gray = [np.repeat(np.random.default_rng(i).integers(0, 255, (40, 40, 1), dtype=np.uint8), 3, 2)
            for i in range(6)]
    st = image_stats(gray)
    assert not channels_look_swapped(st, reddish(0))  # red and blue never differed: no opinion


def test_unknown_colour_order_refused():
    with pytest.raises(InputError, match="RGB, BGR"):
        segmenter().predict(reddish(0), color="HSV")


def test_drift_names_swapped_channels(stats):
    g = DriftGuard(stats)
    r = g.check(np.ascontiguousarray(reddish(60)[:, :, ::-1]))
    assert r["drifted"] and "swapped" in r["likely_cause"]
    assert g.check(reddish(61))["likely_cause"] is None  # not drifted: no cause


def test_drift_names_gray_and_size(stats):
    g = DriftGuard(stats)
    gray = np.repeat(reddish(62)[:, :, :1], 3, axis=2)
    assert "gray" in g.check(gray)["likely_cause"]
    big = np.kron(np.ascontiguousarray(reddish(63)[:, :, ::-1]), np.ones((8, 8, 1), np.uint8))
    cause = g.check(big)["likely_cause"]
    assert cause is not None and ("swapped" in cause or "size" in cause)
    dark = (reddish(64) // 4).astype(np.uint8)
    assert "intensity" in g.check(dark)["likely_cause"]


def test_segmenter_drift_takes_colour_order(stats):
    seg = segmenter(stats)
    bgr = np.ascontiguousarray(reddish(70)[:, :, ::-1])
    assert seg.drift(bgr)["drifted"] and not seg.drift(bgr, color="BGR")["drifted"]
