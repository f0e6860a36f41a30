"""Calibrated probabilities: ECE and reliability bins, the temperature fit, T in the bundle and
applied by the runtime (masks unchanged), and ECE + the reliability diagram in `edgeseg evaluate`."""

import json
import math

import numpy as np
import pytest

from conftest import rgb, run_cli
from edgeseg.runtime.confidence import ReliabilityBins, expected_calibration_error
from edgeseg.runtime.errors import BundleError, InputError
from edgeseg.runtime.temperature import fit_temperature, nll, temper_probs, temperature_of


def binary_probs(p1: np.ndarray) -> np.ndarray:
    p1 = np.asarray(p1, np.float32)
    return np.stack([1 - p1, p1])


def test_ece_perfectly_calibrated_is_zero():
    # 1000 pixels at foreground probability 0.8, exactly 800 of them foreground; 500 at 0.3 with 150
    p1 = np.r_[np.full(1000, 0.8), np.full(500, 0.3)]
    y = np.r_[np.ones(800), np.zeros(200), np.ones(150), np.zeros(350)].astype(np.int64)
    assert expected_calibration_error(binary_probs(p1), y) == pytest.approx(0.0, abs=1e-6)


def test_ece_overconfident_known_value():
    # top-class confidence 0.9 right 60% of the time (1000 px), 0.7 right 70% (1000 px):
    # |0.6 - 0.9| * 1/2 + |0.7 - 0.7| * 1/2 = 0.15, computed here without the module's bins
    p1 = np.r_[np.full(1000, 0.9), np.full(1000, 0.7)]
    y = np.r_[np.ones(600), np.zeros(400), np.ones(700), np.zeros(300)].astype(np.int64)
    conf = np.maximum(p1, 1 - p1)
    right = (p1 > 0.5).astype(int) == y
    by_hand = sum(abs(right[s].mean() - conf[s].mean()) * 0.5 for s in (slice(0, 1000), slice(1000, 2000)))
    assert by_hand == pytest.approx(0.15)
    assert expected_calibration_error(binary_probs(p1), y) == pytest.approx(by_hand, abs=1e-6)
    # three classes, images added one by one give the same as all at once
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], size=(2, 50)).transpose(2, 0, 1).astype(np.float32)
    lab = rng.integers(0, 3, (2, 50))
    one = ReliabilityBins().add(p, lab).ece()
    split = ReliabilityBins().add(p[:, :1], lab[:1]).add(p[:, 1:], lab[1:]).ece()
    assert one == pytest.approx(split)
    d = ReliabilityBins().add(p, lab).to_dict()
    assert d["bins"] == 15 and sum(d["count"]) == 100 and len(d["edges"]) == 16
    assert ReliabilityBins().ece() is None
    with pytest.raises(InputError):
        ReliabilityBins().add(p, lab[:1])


def _sample(logits: np.ndarray, t: float, rng) -> np.ndarray:
    s = logits / t
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return (p.cumsum(axis=1) > rng.random((len(p), 1))).argmax(axis=1)


@pytest.mark.parametrize("t_true", [0.5, 2.5])
def test_fit_recovers_known_temperature(t_true):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(60_000, 3)) * 3.0
    y = _sample(z, t_true, rng)
    t = fit_temperature(z, y)
    assert t == pytest.approx(t_true, rel=0.05)
    assert nll(z, y, t) <= min(nll(z, y, t * 1.1), nll(z, y, t / 1.1))  # a minimum of the NLL
    assert nll(z, y, t) < nll(z, y, 1.0)


def test_temper_probs_keeps_argmax_and_matches_softmax():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(4, 7, 9)) * 4
    p = np.exp(z - z.max(0)) / np.exp(z - z.max(0)).sum(0)
    for t in (0.3, 1.0, 3.0):
        q = temper_probs(p, t)
        s = z / t
        want = np.exp(s - s.max(0)) / np.exp(s - s.max(0)).sum(0)
        np.testing.assert_allclose(q, want, atol=1e-5)
        assert np.array_equal(q.argmax(0), p.argmax(0))


def test_temperature_of_reads_and_refuses():
    assert temperature_of({}, "b") == 1.0
    assert temperature_of({"temperature": {"value": 1.7}}, "b") == 1.7
    for bad in ({"value": 0}, {"value": float("nan")}, {"value": "2"}, {"value": True}, {}, [], {"value": 1e9}):
        with pytest.raises(BundleError, match="temperature"):
            temperature_of({"temperature": bad}, "b")


def _with_temperature(src, dst, t: float):
    from edgeseg.runtime.bundle import read_bundle, write_bundle

    b = read_bundle(src)
    return write_bundle(dst, {"model.onnx": b.model_file}, b.manifest.derive(temperature={"value": t}))


def test_bundle_stores_and_runtime_applies_temperature(tiny_bundle, tmp_path):
    from edgeseg.runtime.preprocess import postprocess
    from edgeseg.runtime.segmenter import Segmenter

    sec = json.loads((tiny_bundle / "edgeseg.json").read_text())["temperature"]
    assert 0.05 <= sec["value"] <= 20 and sec["fitted_on"]["images"] >= 1
    assert sec["nll"]["after"] <= sec["nll"]["before"] + 1e-9  # the fit never makes NLL worse
    assert Segmenter(tiny_bundle).temperature == sec["value"]

    img = rgb(45, 70, seed=5)
    segs = {t: Segmenter(_with_temperature(tiny_bundle, tmp_path / f"t{t}", t)) for t in (1.0, 0.4, 3.0)}
    raw = segs[1.0].infer(segs[1.0].prepare([img]))["logits"][0]
    ref_mask, ref_p = postprocess(raw, 45, 70, True)  # what the runtime gave before temperatures existed
    m1, p1 = segs[1.0].predict(img, probabilities=True)
    assert np.array_equal(m1, ref_mask) and np.array_equal(p1, ref_p)  # T = 1: outputs as before
    assert np.array_equal(segs[1.0].predict(img), ref_mask)
    for t in (0.4, 3.0):
        seg = segs[t]
        assert seg.temperature == t
        m, p = seg.predict(img, probabilities=True)
        assert np.array_equal(m, ref_mask) and np.array_equal(seg.predict(img), ref_mask)  # argmax unchanged
        d = raw[1] - raw[0]
        want = postprocess(np.stack([np.zeros_like(d), d / t]), 45, 70, True)[1]
        np.testing.assert_allclose(p, want, atol=1e-5)
        assert not np.allclose(p, ref_p, atol=1e-3)
    # softer with T > 1, sharper with T < 1 (mean top-class confidence)
    conf = {t: segs[t].predict(img, probabilities=True)[1].max(0).mean() for t in segs}
    assert conf[3.0] < conf[1.0] < conf[0.4]


@pytest.mark.slow  # an end-to-end run: in the full suite, not the fast subset
def test_evaluate_writes_ece_and_reliability_diagram(tiny_bundle, embedded, tmp_path):
    from edgeseg.data import folders as D
    from edgeseg.runtime.segmenter import Segmenter

    j, png = tmp_path / "eval.json", tmp_path / "rel.png"
    r = run_cli("evaluate", tiny_bundle, embedded, "--json", j, "--reliability", png, "-q")
    assert r.returncode == 0, r.stderr
    assert "ECE" in r.stdout
    s = json.loads(j.read_text())["summary"]
    seg = Segmenter(tiny_bundle)
    rel = ReliabilityBins()
    for smp in D.discover(embedded):
        image, gt = D.load_pair(smp, 2)
        rel.add(seg.predict(image, probabilities=True)[1], gt)
    assert s["ece"] == pytest.approx(rel.ece(), abs=1e-9)
    assert s["temperature"] == seg.temperature and s["reliability"]["count"] == [int(c) for c in rel.count]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    # an existing diagram is replaced only with --overwrite
    r2 = run_cli("evaluate", tiny_bundle, embedded, "--reliability", png, "-q")
    assert r2.returncode != 0 and "--reliability" in r2.stderr and "Traceback" not in r2.stderr
    assert math.isfinite(s["ece"])


def test_calibration_report_per_model(tiny_bundle, embedded, tmp_path):
    from edgeseg.data import folders as D
    from edgeseg.measure.reliability import calibration_report, stage_calibration, stage_lines
    from edgeseg.runtime.segmenter import Segmenter

    samples = D.discover(embedded)[:4]
    plain = Segmenter(_with_temperature(tiny_bundle, tmp_path / "t1", 1.0))
    hot = Segmenter(_with_temperature(tiny_bundle, tmp_path / "t3", 3.0))
    rep = calibration_report({"plain": plain, "hot": hot}, samples)
    # same graph: the same raw ECE and fitted T; "as shipped" differs only through the recorded T
    assert rep["plain"]["ece_raw"] == pytest.approx(rep["hot"]["ece_raw"])
    assert rep["plain"]["temperature_fitted"] == pytest.approx(rep["hot"]["temperature_fitted"])
    assert rep["plain"]["ece"] == pytest.approx(rep["plain"]["ece_raw"]) and rep["hot"]["temperature"] == 3.0
    bins = ReliabilityBins()
    for s in samples:
        image, gt = D.load_pair(s, 2)
        bins.add(hot.predict(image, probabilities=True)[1], gt)
    assert rep["hot"]["ece"] == pytest.approx(bins.ece(), abs=1e-9)
    triples = [(s.name, *D.load_pair(s, 2)) for s in samples]  # compress hands (name, image, gt)
    assert stage_calibration(hot, triples) == pytest.approx(rep["hot"])
    lines = stage_lines([{"name": "teacher", "notes": {"calibration": rep["plain"]}}, {"name": "x", "notes": {}}])
    assert any(ln.startswith("| teacher |") for ln in lines) and not any(ln.startswith("| x |") for ln in lines)
    assert stage_lines([{"name": "x", "notes": {}}]) == []


class _ProbsRunner:
    """A stand-in graph that outputs probabilities (kind "probs") of fixed logits."""

    name = "fake"

    def __init__(self, logits):
        z = np.asarray(logits, np.float32)
        self.p = (np.exp(z - z.max(0)) / np.exp(z - z.max(0)).sum(0))[None]

    def infer(self, batch):
        return {"probs": np.repeat(self.p, len(batch), axis=0)}


def test_probability_outputs_tempered_masks_unchanged():
    from edgeseg.runtime.segmenter import Segmenter

    z = np.random.default_rng(3).normal(size=(3, 8, 8)) * 3
    info = {"preprocess": {"height": 8, "width": 8}, "classes": ["bg", "a", "b"],
            "outputs": [{"name": "probs", "kind": "probs"}]}
    plain = Segmenter.from_runner(_ProbsRunner(z), info)
    hot = Segmenter.from_runner(_ProbsRunner(z), {**info, "temperature": {"value": 2.0}})
    img = rgb(8, 8, seed=1)
    m1, p1 = plain.predict(img, probabilities=True)
    m2, p2 = hot.predict(img, probabilities=True)
    assert np.array_equal(m1, m2) and np.array_equal(hot.predict(img), m1)
    np.testing.assert_allclose(p2, temper_probs(p1, 2.0), atol=1e-6)
    assert p2.max(0).mean() < p1.max(0).mean()
