"""Tests for edgeseg.runtime.metrics: hand-computed cases, empty conventions, references."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the package is not installed in the dev venv
    sys.path.insert(0, str(ROOT))

from edgeseg.runtime.errors import InputError  # noqa: E402
from edgeseg.runtime.metrics import (  # noqa: E402
    CONVENTIONS,
    MetricAccumulator,
    binary_confusion,
    dice_score,
    euclidean_distance_transform,
    hd95,
    image_metrics,
    iou_score,
    mask_boundary,
    multiclass_image_metrics,
    roc_auc,
)

ndimage = pytest.importorskip("scipy.ndimage")
sk_metrics = pytest.importorskip("sklearn.metrics")

# 4x4 case: tp at (0,0),(1,0),(1,1); fp at (0,1),(3,3); fn at (1,2); the other 10 are tn.
PRED = np.array([[1, 1, 0, 0],
                 [1, 1, 0, 0],
                 [0, 0, 0, 0],
                 [0, 0, 0, 1]], dtype=np.uint8)
GT = np.array([[1, 0, 0, 0],
               [1, 1, 1, 0],
               [0, 0, 0, 0],
               [0, 0, 0, 0]], dtype=bool)


# --------------------------------------------------------------------------- hand-computed
def test_confusion_and_ratios_by_hand():
    assert binary_confusion(PRED, GT) == (3, 2, 1, 10)
    m = image_metrics(PRED, GT)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 2, 1, 10)
    assert m["dice"] == pytest.approx(6 / 9)
    assert m["iou"] == pytest.approx(3 / 6)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(10 / 12)
    assert m["accuracy"] == pytest.approx(13 / 16)
    assert math.isnan(m["auc"])  # no probabilities given
    assert dice_score(PRED, GT) == pytest.approx(2 / 3)
    assert iou_score(PRED, GT) == pytest.approx(0.5)


def test_hd95_single_pixels_by_hand():
    a = np.zeros((5, 6), bool)
    b = np.zeros((5, 6), bool)
    a[0, 0] = True
    b[3, 4] = True
    assert hd95(a, b) == pytest.approx(5.0)  # 3-4-5 triangle
    assert hd95(a, b, spacing=(2.0, 1.0)) == pytest.approx(math.sqrt(6**2 + 4**2))
    assert hd95(b, a, spacing=(0.5, 3.0)) == pytest.approx(math.sqrt(1.5**2 + 12**2))


def test_hd95_shifted_square_by_hand():
    # 3x3 square vs. the same square one column to the right: every boundary pixel of one is
    # at most one pixel from the other's boundary (the centre pixel is not boundary).
    a = np.zeros((7, 7), bool)
    a[2:5, 1:4] = True
    b = np.roll(a, 1, axis=1)
    assert hd95(a, b) == pytest.approx(1.0)
    assert hd95(a, b, spacing=(1.0, 0.25)) == pytest.approx(0.25)
    assert hd95(a, a) == 0.0


def test_boundary_definition():
    m = np.zeros((5, 5), bool)
    m[1:4, 1:4] = True
    expected = m.copy()
    expected[2, 2] = False  # only the centre has four foreground neighbours
    assert np.array_equal(mask_boundary(m), expected)
    full = np.ones((3, 4), bool)  # outside the image is background: the frame is boundary
    frame = full.copy()
    frame[1, 1:3] = False
    assert np.array_equal(mask_boundary(full), frame)


def test_auc_by_hand():
    # positives 0.35, 0.8; negatives 0.1, 0.4: 3 of the 4 pairs are ordered correctly
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    # a tie counts one half
    assert roc_auc(np.array([0.5, 0.5, 0.9]), np.array([0, 1, 1])) == pytest.approx((0.5 + 1) / 2)
    m = image_metrics(GT, GT, prob=GT.astype(float))
    assert m["auc"] == pytest.approx(1.0)
    assert image_metrics(GT, GT, prob=1.0 - GT)["auc"] == pytest.approx(0.0)


# --------------------------------------------------------------------------- conventions
def test_conventions_text_documents_the_cases():
    for word in ("Dice", "Precision", "Recall", "Specificity", "AUC", "HD95", "inf"):
        assert word in CONVENTIONS


def test_both_empty():
    z = np.zeros((4, 5), bool)
    m = image_metrics(z, z, prob=np.random.default_rng(0).random((4, 5)))
    for k in ("dice", "iou", "precision", "recall", "specificity", "accuracy"):
        assert m[k] == 1.0, k
    assert m["hd95"] == 0.0
    assert math.isnan(m["auc"])  # one class only
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (0, 0, 0, 20)


def test_gt_empty_pred_not():
    z = np.zeros((4, 4), bool)
    m = image_metrics(GT, z)  # 4 false positives
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    assert m["precision"] == 0.0
    assert m["recall"] == 1.0  # nothing to miss
    assert m["specificity"] == pytest.approx(12 / 16)
    assert m["hd95"] == math.inf


def test_pred_empty_gt_not():
    z = np.zeros((4, 4), bool)
    m = image_metrics(z, GT)  # 4 false negatives
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    assert m["precision"] == 1.0  # no false positive was made
    assert m["recall"] == 0.0
    assert m["specificity"] == 1.0
    assert m["accuracy"] == pytest.approx(12 / 16)
    assert m["hd95"] == math.inf


def test_no_negatives_in_gt():
    full = np.ones((3, 3), bool)
    part = np.zeros((3, 3), bool)
    part[0] = True
    m = image_metrics(part, full)
    assert m["specificity"] == 1.0  # tn + fp == 0
    assert m["recall"] == pytest.approx(3 / 9)
    assert m["precision"] == 1.0
    assert image_metrics(full, full)["specificity"] == 1.0


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("fn", [binary_confusion, dice_score, iou_score, hd95, image_metrics])
def test_shape_mismatch_raises(fn):
    with pytest.raises(InputError, match="shape"):
        fn(np.zeros((4, 4), bool), np.zeros((4, 5), bool))


def test_other_bad_inputs_raise():
    with pytest.raises(InputError, match="shape"):
        roc_auc(np.zeros(5), np.zeros(6, bool))
    with pytest.raises(InputError, match="binary"):
        binary_confusion(np.full((2, 2), 2), np.zeros((2, 2)))
    with pytest.raises(InputError):
        roc_auc(np.array([0.1, np.nan]), np.array([0, 1]))
    with pytest.raises(InputError, match="spacing"):
        hd95(GT, GT, spacing=(0.0, 1.0))
    with pytest.raises(InputError, match="spacing"):
        hd95(GT, GT, spacing=(1.0,))
    with pytest.raises(InputError):
        image_metrics(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 2), bool))
    with pytest.raises(InputError, match="labels outside"):
        multiclass_image_metrics(np.full((2, 2), 3), np.zeros((2, 2), int), num_classes=3)
    with pytest.raises(InputError, match="shapes differ"):
        multiclass_image_metrics(np.zeros((2, 2), int), np.zeros((2, 3), int), num_classes=3)
    with pytest.raises(InputError, match="probs"):
        multiclass_image_metrics(np.zeros((2, 2), int), np.zeros((2, 2), int), 3, probs=np.zeros((2, 2, 2)))
    assert issubclass(InputError, ValueError)


# --------------------------------------------------------------------------- references
@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    gt = rng.random((30, 40)) < rng.uniform(0.1, 0.9)
    tied = rng.integers(0, 6, gt.shape) / 5.0 + 0.1 * gt  # few distinct values: many ties
    smooth = rng.random(gt.shape) + 0.3 * gt
    for prob in (tied, smooth, np.round(smooth, 1)):
        assert roc_auc(prob, gt) == pytest.approx(sk_metrics.roc_auc_score(gt.ravel(), prob.ravel()), abs=1e-12)


def _blobs(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=rng.uniform(2.0, 5.0))
    return noise > np.quantile(noise, rng.uniform(0.5, 0.95))


def _hd95_reference(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float]) -> float:
    cross = ndimage.generate_binary_structure(2, 1)
    ba = a & ~ndimage.binary_erosion(a, structure=cross, border_value=0)
    bb = b & ~ndimage.binary_erosion(b, structure=cross, border_value=0)
    d_ab = ndimage.distance_transform_edt(~bb, sampling=spacing)[ba]
    d_ba = ndimage.distance_transform_edt(~ba, sampling=spacing)[bb]
    return max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (2.5, 0.5), (0.7, 1.3)])
@pytest.mark.parametrize("seed", range(6))
def test_hd95_matches_scipy_reference(seed, spacing):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(20, 90)), int(rng.integers(20, 90)))
    a, b = _blobs(rng, shape), _blobs(rng, shape)
    assert hd95(a, b, spacing=spacing) == pytest.approx(_hd95_reference(a, b, spacing), rel=1e-9)
    assert hd95(a, b, spacing=spacing) == pytest.approx(hd95(b, a, spacing=spacing), rel=1e-12)


def test_hd95_matches_brute_force_pairs():
    rng = np.random.default_rng(7)
    for _ in range(10):
        a, b = _blobs(rng, (25, 31)), _blobs(rng, (25, 31))
        sp = np.array([1.7, 0.6])
        pa = np.argwhere(mask_boundary(a)) * sp
        pb = np.argwhere(mask_boundary(b)) * sp
        d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
        ref = max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))
        assert hd95(a, b, spacing=tuple(sp)) == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("seed", range(20))
def test_edt_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(1, 50, 2))
    feat = rng.random(shape) < rng.choice([0.005, 0.05, 0.5])
    feat.flat[rng.integers(feat.size)] = True
    sp = tuple(rng.uniform(0.2, 3.0, 2))
    ref = ndimage.distance_transform_edt(~feat, sampling=sp)
    np.testing.assert_allclose(euclidean_distance_transform(feat, sp), ref, rtol=1e-12, atol=1e-12)
    assert np.isinf(euclidean_distance_transform(np.zeros(shape, bool))).all()


# --------------------------------------------------------------------------- properties
mask_pairs = st.tuples(st.integers(1, 6), st.integers(1, 6)).flatmap(
    lambda s: st.tuples(hnp.arrays(bool, s), hnp.arrays(bool, s)))


@settings(max_examples=200, deadline=None)
@given(mask_pairs)
def test_dice_iou_bounds_and_symmetry(pair):
    a, b = pair
    d, j = dice_score(a, b), iou_score(a, b)
    assert 0.0 <= j <= d <= 1.0
    assert d == pytest.approx(dice_score(b, a)) and j == pytest.approx(iou_score(b, a))
    assert j == pytest.approx(d / (2.0 - d))  # identity between Dice and Jaccard
    assert dice_score(a, a) == 1.0 and iou_score(a, a) == 1.0
    tp, fp, fn, tn = binary_confusion(a, b)
    assert tp + fp + fn + tn == a.size
    assert tp == np.sum(a & b) and fp == np.sum(a & ~b) and fn == np.sum(~a & b)
    assert (d == 1.0) == (np.array_equal(a, b))


# --------------------------------------------------------------------------- aggregation
def test_pooled_vs_mean_two_images():
    acc = MetricAccumulator()
    full = np.ones((2, 2), bool)
    acc.add(full, full, name="perfect")  # tp=4: dice 1, hd95 0, specificity 1 (no negatives)
    p = np.array([[1, 0], [0, 0]], bool)
    g = np.array([[0, 1], [0, 0]], bool)
    acc.add(p, g, name="miss")  # tp=0 fp=1 fn=1 tn=2: dice 0, hd95 1
    s = acc.summary()
    assert s["n_images"] == 2
    assert s["mean_dice"] == pytest.approx(0.5) and s["median_dice"] == pytest.approx(0.5)
    assert s["mean_iou"] == pytest.approx(0.5)
    assert s["mean_precision"] == pytest.approx(0.5)
    assert s["mean_specificity"] == pytest.approx((1 + 2 / 3) / 2)
    assert s["mean_accuracy"] == pytest.approx((1 + 2 / 4) / 2)
    assert s["mean_hd95"] == pytest.approx(0.5) and s["hd95_inf"] == 0
    assert math.isnan(s["mean_auc"]) and s["auc_n"] == 0
    # pooled over tp=4, fp=1, fn=1, tn=2
    assert s["pooled_dice"] == pytest.approx(8 / 10)
    assert s["pooled_iou"] == pytest.approx(4 / 6)
    assert s["pooled_precision"] == pytest.approx(4 / 5)
    assert s["pooled_recall"] == pytest.approx(4 / 5)
    assert s["pooled_specificity"] == pytest.approx(2 / 3)
    assert s["pooled_accuracy"] == pytest.approx(6 / 8)
    rows = acc.rows()
    assert [r["name"] for r in rows] == ["perfect", "miss"]
    assert rows[1]["dice"] == 0.0 and rows[1]["fp"] == 1


def test_accumulator_infinite_hd95_and_auc():
    acc = MetricAccumulator(spacing=(2.0, 2.0))
    a = np.zeros((5, 5), bool)
    a[0, 0] = True
    b = np.zeros((5, 5), bool)
    b[0, 3] = True
    acc.add(a, b, prob=np.where(b, 0.9, 0.1))  # hd95 = 3 px * 2.0, auc 1
    acc.add(np.zeros((5, 5), bool), b)  # missed object: hd95 inf, no prob
    acc.add(a, b, spacing=(1.0, 1.0))  # per-image spacing override: 3.0
    s = acc.summary()
    assert s["hd95_inf"] == 1
    assert s["mean_hd95"] == pytest.approx((6.0 + 3.0) / 2)
    assert s["mean_auc"] == pytest.approx(1.0) and s["auc_n"] == 1
    assert [r["name"] for r in acc.rows()] == ["image_0", "image_1", "image_2"]
    assert acc.rows()[1]["hd95"] == math.inf


def test_multiclass():
    pred = np.array([[0, 1, 1],
                     [2, 2, 0],
                     [0, 2, 1]])
    gt = np.array([[0, 1, 0],
                   [2, 2, 2],
                   [0, 0, 1]])
    per = multiclass_image_metrics(pred, gt, num_classes=3)
    assert set(per) == {1, 2}
    # class 1: pred {(0,1),(0,2),(2,2)}, gt {(0,1),(2,2)} -> tp 2, fp 1, fn 0, tn 6
    assert (per[1]["tp"], per[1]["fp"], per[1]["fn"], per[1]["tn"]) == (2, 1, 0, 6)
    # class 2: pred {(1,0),(1,1),(2,1)}, gt {(1,0),(1,1),(1,2)} -> tp 2, fp 1, fn 1, tn 5
    assert (per[2]["tp"], per[2]["fp"], per[2]["fn"], per[2]["tn"]) == (2, 1, 1, 5)
    assert per[2]["dice"] == pytest.approx(4 / 6)
    assert set(multiclass_image_metrics(pred, gt, 3, ignore_background=False)) == {0, 1, 2}

    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(3), size=(3, 3)).transpose(2, 0, 1)
    per = multiclass_image_metrics(pred, gt, 3, probs=probs)
    assert per[1]["auc"] == pytest.approx(sk_metrics.roc_auc_score((gt == 1).ravel(), probs[1].ravel()))

    acc = MetricAccumulator(num_classes=3)
    acc.add(pred, gt, name="a")
    acc.add(gt, gt, name="b")
    s = acc.summary()
    assert s["n_images"] == 2 and set(s["per_class"]) == {1, 2}
    # class 1: dice 4/5 then 1; class 2: dice 4/6 then 1
    assert s["per_class"][1]["mean_dice"] == pytest.approx((4 / 5 + 1) / 2)
    assert s["per_class"][2]["mean_dice"] == pytest.approx((4 / 6 + 1) / 2)
    assert s["mean_dice"] == pytest.approx(((4 / 5 + 1) / 2 + (4 / 6 + 1) / 2) / 2)
    # pooled class 2: tp 2+3, fp 1, fn 1 -> 10 / 12
    assert s["per_class"][2]["pooled_dice"] == pytest.approx(10 / 12)
    assert s["pooled_dice"] == pytest.approx((s["per_class"][1]["pooled_dice"] + 10 / 12) / 2)
    rows = acc.rows()
    assert [(r["name"], r["class"]) for r in rows] == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]


def test_runtime_module_imports_only_numpy():
    code = ("import sys; import edgeseg.runtime.metrics; "
            "bad = [m for m in ('torch', 'transformers', 'scipy', 'sklearn', 'cv2') if m in sys.modules]; "
            "bad += [m for m in sys.modules if m.startswith('edgeseg.') and not m.startswith('edgeseg.runtime')]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
