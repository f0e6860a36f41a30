"""Property-based tests (hypothesis): pre-/post-processing, metrics, manifest parsing, drift stats.

What ``tests/test_preprocess.py`` and ``tests/test_metrics.py`` already hold (postprocess back
to any size; Dice/IoU bounds, symmetry and the Dice-Jaccard identity) is not repeated here.
Sizes are small and ``max_examples`` modest so the whole file runs in seconds.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgeseg.runtime.bundle import MANIFEST, manifest_digest, read_bundle, write_bundle
from edgeseg.runtime.errors import BundleError, InputError
from edgeseg.runtime.metrics import (MetricAccumulator, binary_confusion, dice_score, hd95, image_metrics,
                                     multiclass_image_metrics, roc_auc)
from edgeseg.runtime.preprocess import Preprocess, preprocess, resize, resize_chw
from edgeseg.runtime.segmenter import Segmenter

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# sizes from 1 px to strongly elongated: any aspect ratio
sizes = st.one_of(
    st.tuples(st.integers(1, 120), st.integers(1, 120)),
    st.tuples(st.integers(1, 4), st.integers(100, 1500)),
    st.tuples(st.integers(100, 1500), st.integers(1, 4)),
)


# =========================================================================== pre/post-processing
@FAST
@given(hw=sizes, model=st.tuples(st.integers(8, 48), st.integers(8, 48)), seed=st.integers(0, 2**16))
def test_preprocess_gives_model_size_finite_tensor(hw, model, seed):
    img = np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)
    pp = Preprocess(height=model[0], width=model[1])
    x = preprocess(img, pp)
    assert x.shape == (3, *model) and x.dtype == np.float32 and np.isfinite(x).all()
    lo = (0 - np.max(pp.mean)) / np.min(pp.std)
    hi = (1 - np.min(pp.mean)) / np.min(pp.std)
    assert x.min() >= lo - 1e-4 and x.max() <= hi + 1e-4


@FAST
@given(hw=sizes, out=st.tuples(st.integers(1, 80), st.integers(1, 80)), value=st.floats(-1e3, 1e3),
       seed=st.integers(0, 2**16))
def test_resize_keeps_constants_and_stays_within_input_range(hw, out, value, seed):
    const = np.full((*hw, 3), value, np.float32)
    assert np.allclose(resize(const, *out), value, rtol=1e-5, atol=1e-3)
    x = np.random.default_rng(seed).normal(size=(2, *hw)).astype(np.float32)
    y = resize_chw(x, *out)
    assert y.shape == (2, *out)
    assert y.min() >= x.min() - 1e-4 and y.max() <= x.max() + 1e-4  # convex weights: no overshoot


class _FakeRunner:
    """A numpy 'model': logits at 1/4 of the input size, from the input's channels."""

    name = "fake"

    def __init__(self, kind: str, classes: int) -> None:
        self.kind, self.classes = kind, classes

    def infer(self, batch):
        n, _, h, w = batch.shape
        small = resize_chw(batch, max(1, h // 4), max(1, w // 4))
        logits = np.stack([small[:, c % 3] * (1 + c) - c for c in range(self.classes)], axis=1)
        if self.kind == "logits":
            return {"out": logits}
        e = np.exp(logits - logits.max(1, keepdims=True))
        probs = e / e.sum(1, keepdims=True)
        if self.kind == "probs":
            return {"out": probs}
        return {"out": probs.argmax(1).astype(np.uint8)}

    def close(self):
        pass


@FAST
@given(hw=sizes, kind=st.sampled_from(["logits", "probs", "mask"]), classes=st.integers(2, 4),
       model=st.sampled_from([(32, 32), (64, 32), (16, 48)]), seed=st.integers(0, 2**16))
def test_segmenter_maps_any_image_back_to_its_own_size(hw, kind, classes, model, seed):
    info = {"preprocess": Preprocess(*model).to_dict(), "classes": [f"c{i}" for i in range(classes)],
            "outputs": [{"name": "out", "kind": kind}]}
    seg = Segmenter.from_runner(_FakeRunner(kind, classes), info)
    img = np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)
    mask = seg.predict(img)
    assert mask.shape == hw and mask.dtype == np.uint8 and mask.max() < classes
    if kind != "mask":
        m2, prob = seg.predict(img, probabilities=True)
        assert (m2 == mask).all()
        assert prob.shape == (classes, *hw) and np.allclose(prob.sum(0), 1, atol=1e-4)
        assert (prob.argmax(0) == mask).mean() > 0.99  # ties may break either way
    gray = seg.predict(img[:, :, 0])  # gray input: promoted, same size out
    assert gray.shape == hw


# =========================================================================== metrics
mask_pairs = st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(
    lambda s: st.tuples(hnp.arrays(bool, s), hnp.arrays(bool, s)))


@settings(max_examples=120, deadline=None)
@given(mask_pairs)
def test_hd95_symmetric_nonnegative_and_empty_cases(pair):
    a, b = pair
    d = hd95(a, b)
    assert d == hd95(b, a)
    assert d >= 0
    assert hd95(a, a) == 0.0
    if not a.any() and not b.any():
        assert d == 0.0
    elif a.any() != b.any():
        assert d == math.inf
    else:
        assert math.isfinite(d) and d <= math.hypot(*a.shape)


@settings(max_examples=120, deadline=None)
@given(mask_pairs, st.floats(0.1, 5), st.floats(0.1, 5))
def test_hd95_scales_with_isotropic_spacing(pair, s, _):
    a, b = pair
    d = hd95(a, b)
    ds = hd95(a, b, spacing=(s, s))
    assert (math.isinf(d) and math.isinf(ds)) or ds == pytest.approx(d * s, rel=1e-9, abs=1e-12)


@settings(max_examples=120, deadline=None)
@given(mask_pairs)
def test_image_metrics_bounds_and_swap_symmetry(pair):
    p, g = pair
    m, r = image_metrics(p, g), image_metrics(g, p)
    for k in ("dice", "iou", "precision", "recall", "specificity", "accuracy"):
        assert 0.0 <= m[k] <= 1.0, k
    assert m["tp"] + m["fp"] + m["fn"] + m["tn"] == p.size
    assert m["accuracy"] == pytest.approx((m["tp"] + m["tn"]) / p.size)
    # swapping prediction and truth swaps fp/fn and precision/recall; Dice, IoU, accuracy stay
    assert (r["fp"], r["fn"]) == (m["fn"], m["fp"])
    assert r["precision"] == m["recall"] and r["recall"] == m["precision"]
    for k in ("dice", "iou", "accuracy", "hd95"):
        assert r[k] == m[k], k
    # empty conventions never give NaN
    assert not any(math.isnan(m[k]) for k in ("dice", "iou", "precision", "recall", "specificity", "accuracy"))


@settings(max_examples=120, deadline=None)
@given(st.integers(2, 60).flatmap(lambda n: st.tuples(
    hnp.arrays(np.float64, n, elements=st.floats(0, 1)), hnp.arrays(bool, n))))
def test_auc_bounds_and_complement(pg):
    prob, gt = pg
    a = roc_auc(prob, gt)
    if gt.all() or not gt.any():
        assert math.isnan(a)
        return
    assert 0.0 <= a <= 1.0
    assert roc_auc(-prob, gt) == pytest.approx(1.0 - a, abs=1e-12)  # exact reversal of the order
    assert roc_auc(prob, ~gt) == pytest.approx(1.0 - a, abs=1e-12)
    assert roc_auc(gt.astype(float), gt) == 1.0


@settings(max_examples=60, deadline=None)
@given(st.lists(mask_pairs, min_size=1, max_size=5))
def test_accumulator_mean_and_pooled_are_consistent(pairs):
    acc = MetricAccumulator()
    dices = []
    tot = np.zeros(4, np.int64)
    for p, g in pairs:
        acc.add(p, g)
        dices.append(dice_score(p, g))
        tot += binary_confusion(p, g)
    s = acc.summary()
    assert s["n_images"] == len(pairs)
    assert min(dices) - 1e-12 <= s["mean_dice"] <= max(dices) + 1e-12
    assert s["mean_dice"] == pytest.approx(np.mean(dices))
    tp, fp, fn, _ = tot
    pooled = 1.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    assert s["pooled_dice"] == pytest.approx(pooled)
    assert 0.0 <= s["pooled_dice"] <= 1.0


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 5).flatmap(lambda c: st.tuples(
    st.just(c), st.tuples(st.integers(1, 8), st.integers(1, 8)).flatmap(
        lambda s: st.tuples(hnp.arrays(np.int64, s, elements=st.integers(0, c - 1)),
                            hnp.arrays(np.int64, s, elements=st.integers(0, c - 1)))))))
def test_multiclass_bounds_symmetry_and_identity(case):
    c, (p, g) = case
    per, rev = multiclass_image_metrics(p, g, c), multiclass_image_metrics(g, p, c)
    assert set(per) == set(range(1, c))
    for k in per:
        assert 0.0 <= per[k]["dice"] <= 1.0 and per[k]["dice"] == rev[k]["dice"]
    assert all(v["dice"] == 1.0 for v in multiclass_image_metrics(p, p, c).values())


# =========================================================================== manifest parsing
DELETE = object()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
FIELD_PATHS = [
    ("schema_version",), ("model",), ("files",), ("files", "model.onnx"), ("files", "extra.bin"),
    ("preprocess",), ("preprocess", "height"), ("preprocess", "width"), ("preprocess", "mean"),
    ("preprocess", "std"), ("preprocess", "scale"), ("preprocess", "resize"), ("preprocess", "layout"),
    ("classes",), ("classes", 0), ("outputs",), ("outputs", 0), ("outputs", 0, "kind"), ("outputs", 0, "name"),
    ("precision",), ("colors",), ("manifest_sha256",), ("metrics",), ("provenance",), ("stages",),
    ("input_stats",), ("input_stats", "threshold"), ("input_stats", "gray_hist"), ("input_stats", "features"),
    ("input_stats", "features", "scale"), ("input_stats", "version"), ("surprise",),
]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    from edgeseg.runtime.drift import image_stats

    root = tmp_path_factory.mktemp("manifest")
    (root / "model.bin").write_bytes(b"not really a model, read_bundle only hashes it")
    rng = np.random.default_rng(0)
    stats = image_stats([rng.integers(0, 256, (20, 30, 3), dtype=np.uint8) for _ in range(5)])
    manifest = {"model": "model.onnx", "preprocess": Preprocess(64, 64).to_dict(), "classes": ["bg", "fg"],
                "colors": [[0, 0, 0], [255, 0, 0]], "outputs": [{"name": "logits", "kind": "logits"}],
                "precision": "fp32", "input_stats": stats, "metrics": {}, "provenance": {}}
    bundle = write_bundle(root / "b", {"model.onnx": root / "model.bin"}, manifest)
    return bundle, json.loads((bundle / MANIFEST).read_text())


def _set(m, path, value):
    node = m
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        if isinstance(node, dict):
            node.pop(path[-1], None)
        else:
            del node[path[-1]]
    else:
        node[path[-1]] = value


def _opened(bundle):
    """Everything a device does with a manifest before it runs the model; only our errors may escape."""
    from edgeseg.runtime.segmenter import _drift_guard

    for verify in (True, False):
        try:
            b = read_bundle(bundle, verify=verify)
        except BundleError:
            continue
        try:
            preprocess(np.zeros((5, 7, 3), np.uint8), b.preprocess)  # the recorded pre-processing is usable
            _drift_guard(b.manifest, bundle)
        except (BundleError, InputError):
            pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(FIELD_PATHS), value=st.one_of(st.just(DELETE), json_values), rehash=st.booleans())
def test_random_manifest_values_only_raise_bundle_error(template, path, value, rehash):
    bundle, good = template
    m = json.loads(json.dumps(good))
    _set(m, path, value)
    if rehash:
        m["manifest_sha256"] = manifest_digest(m)
    (bundle / MANIFEST).write_text(json.dumps(m))
    try:
        _opened(bundle)
    finally:
        (bundle / MANIFEST).write_text(json.dumps(good))


@settings(max_examples=60, deadline=None)
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                     json_values.map(lambda v: json.dumps(v).encode())))
def test_arbitrary_manifest_bytes_only_raise_bundle_error(template, raw):
    bundle, good = template
    (bundle / MANIFEST).write_bytes(raw)
    try:
        with pytest.raises(BundleError):
            read_bundle(bundle)
    finally:
        (bundle / MANIFEST).write_text(json.dumps(good))


def test_template_manifest_is_valid(template):
    bundle, _ = template
    b = read_bundle(bundle)
    assert b.preprocess.height == 64


# =========================================================================== drift statistics
@settings(max_examples=25, deadline=None)
@given(n=st.integers(4, 7), seed=st.integers(0, 2**16), hw=sizes)
def test_drift_stats_are_json_and_scores_finite_for_any_size(n, seed, hw):
    from edgeseg.runtime.drift import DriftGuard, image_stats

    rng = np.random.default_rng(seed)
    imgs = [rng.integers(0, 256, (int(rng.integers(1, 60)), int(rng.integers(1, 60)), 3), dtype=np.uint8)
            for _ in range(n)]
    stats = json.loads(json.dumps(image_stats(imgs), allow_nan=False))  # plain, finite JSON
    g = DriftGuard(stats)
    probe = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    r = g.check(probe)
    assert math.isfinite(r["score"]) and r["score"] >= 0 and r["threshold"] >= 2.0
    assert r["drifted"] == (r["score"] > r["threshold"])
