"""Budgets a clinician would sign (edgeseg.measure.budgets) and what compress does with them."""

import json

import numpy as np
import pytest

from edgeseg.compress.search import choose, pareto
from edgeseg.errors import ConfigError
from edgeseg.measure.budgets import Budgets, check, fidelity, image_dice, lost_lesions, miss_line, shortfall
from tests.conftest import run_cli


def blobs(*boxes, shape=(40, 40)):
    m = np.zeros(shape, np.uint8)
    for y0, y1, x0, x1 in boxes:
        m[y0:y1, x0:x1] = 1
    return m


def test_image_dice_conventions():
    a = blobs((0, 10, 0, 10))
    assert image_dice(a, a) == 1.0
    assert image_dice(np.zeros_like(a), np.zeros_like(a)) == 1.0  # nothing to find, nothing found
    assert image_dice(a, np.zeros_like(a)) == 0.0
    half = blobs((0, 10, 0, 5))
    assert image_dice(half, a) == pytest.approx(2 * 50 / 150)
    # multi-class: mean over the classes present in either mask
    m3 = a.copy()
    m3[20:30, 20:30] = 2
    assert image_dice(m3, m3, num_classes=3) == 1.0
    only1 = m3.copy()
    only1[only1 == 2] = 0
    assert image_dice(only1, m3, num_classes=3) == pytest.approx(0.5)


def test_lost_lesions_counts_teacher_components_without_any_overlap():
    teacher = blobs((2, 8, 2, 8), (20, 30, 20, 30), (32, 36, 2, 6))
    touching_one_pixel = blobs((2, 3, 2, 3), (25, 26, 25, 26))  # touches two, misses the third
    assert lost_lesions(touching_one_pixel, teacher) == (3, 1)
    assert lost_lesions(teacher, teacher) == (3, 0)
    assert lost_lesions(np.zeros_like(teacher), teacher) == (3, 3)
    assert lost_lesions(teacher, np.zeros_like(teacher)) == (0, 0)


def test_specks_below_the_models_resolution_are_not_lesions():
    """A lesion is at least ``min_lesion_px`` pixels of the model's input grid, scaled to the
    image: a 64 x 64 image seen through a 32 x 32 grid needs 4 x 9 = 36 pixels."""
    teacher = blobs((2, 8, 2, 8), (20, 25, 20, 25), (40, 41, 40, 41), shape=(64, 64))  # 36, 25, 1 px
    nothing = np.zeros_like(teacher)
    assert lost_lesions(nothing, teacher) == (3, 3)
    assert lost_lesions(nothing, teacher, min_area=25) == (2, 2)
    gt = [teacher]
    for grid, want in (((64, 64), (2, 2)), ((32, 32), (1, 1)), (None, (2, 2))):
        f = fidelity([nothing], [teacher], gt, ["a"], grid=grid, min_lesion_px=9)
        assert (f["lesions"], f["lost_lesions"]) == want and f["min_lesion_px"] == 9
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ConfigError, match="--min-lesion-px"):
            Budgets(min_lesion_px=bad)
    assert "9 px" in Budgets().describe()


def test_fidelity_figures_and_checks():
    gt = [blobs((0, 10, 0, 10)), blobs((10, 20, 10, 20), (30, 38, 30, 38)), blobs((5, 15, 5, 15))]
    teacher = [g.copy() for g in gt]
    cand = [gt[0].copy(), blobs((10, 20, 10, 20)), blobs((5, 15, 5, 10))]  # loses one lesion, halves another
    f = fidelity(cand, teacher, gt, ["a", "b", "c"], quantile=0.95)
    drops = np.array([0.0, 1 - image_dice(cand[1], gt[1]), 1 - image_dice(cand[2], gt[2])])
    assert f["mean_drop"] == pytest.approx(drops.mean())
    assert f["image_drop"] == pytest.approx(np.quantile(drops, 0.95))
    assert f["agreement"] == pytest.approx(np.mean([image_dice(c, t) for c, t in zip(cand, teacher)]))
    assert (f["lesions"], f["lost_lesions"]) == (4, 1)
    assert f["lost_where"] == [{"image": "b", "lost": 1, "of": 2}]
    assert f["worst_images"][0]["image"] == "c"
    missed = check(f, Budgets())
    assert {m["budget"] for m in missed} == {"max_dice_drop", "max_image_drop", "min_agreement", "max_lost_lesions"}
    assert check(f, Budgets(max_dice_drop=1, max_image_drop=1, min_agreement=0, max_lost_lesions=1)) == []
    assert check(f, Budgets(max_dice_drop=None, max_image_drop=None, min_agreement=None,
                            max_lost_lesions=None)) == []
    line = miss_line(next(m for m in missed if m["budget"] == "max_lost_lesions"), closest="x/fp32")
    assert line == ("over budget: lost lesions (teacher's lesions the model no longer touches) is 1, budget <= 0 "
                    "(closest candidate: x/fp32)")
    p95 = next(m for m in missed if m["budget"] == "max_image_drop")
    assert miss_line(p95).startswith(f"over budget: p95 per-image Dice drop is {f['image_drop']:.4f}, budget <= 0.0500")
    # an unmeasured figure misses its budget
    assert {m["budget"] for m in check({}, Budgets())} == {"max_dice_drop", "max_image_drop", "min_agreement",
                                                          "max_lost_lesions"}


@pytest.mark.parametrize("kw", [dict(max_image_drop=1.5), dict(min_agreement=-0.1), dict(image_quantile=0),
                                dict(max_lost_lesions=-1), dict(max_lost_lesions=0.5), dict(max_dice_drop=float("nan"))])
def test_budgets_refuse_bad_values(kw):
    with pytest.raises(ConfigError):
        Budgets(**kw)


def point(name, p50, agreement, lost=0, drop=0.0, image_drop=0.0, size=1.0):
    return {"point": name, "p50_ms": p50, "size_mb": size,
            "fidelity": {"mean_drop": drop, "image_drop": image_drop, "agreement": agreement, "lost_lesions": lost,
                         "lesions": 10}}


def test_choose_fastest_meeting_every_budget_else_closest():
    pts = [point("fold/fp32", 10.0, 1.0, image_drop=0.01), point("p25/fp32", 6.0, 0.97),
           point("p50/fp32", 4.0, 0.90), point("p50/int8", 7.0, 0.96, lost=1)]
    d = choose(pts, Budgets())
    assert d["met"] and d["point"]["point"] == "p25/fp32" and d["lines"] == []
    assert [p["met"] for p in pts] == [True, True, False, False]
    assert [p["pareto"] for p in pts] == [True, True, True, False]  # p50/int8: slower and worse than p25/fp32
    # none meets: the closest is named, with each missed budget's value and the best any point reached
    tight = Budgets(min_agreement=0.99, max_image_drop=0.0)
    d = choose(pts, tight)
    assert not d["met"] and d["point"]["point"] == "p25/fp32"
    assert d["lines"] == ["over budget: mean agreement (Dice with the teacher's masks) is 0.9700, budget >= 0.9900 "
                          "(closest candidate: p25/fp32); best of 4 points: 1.0000 (fold/fp32)"]
    assert shortfall(pts[1]["fidelity"], tight) < shortfall(pts[0]["fidelity"], tight)
    assert shortfall(pts[1]["fidelity"], Budgets()) == 0
    assert choose([], Budgets())["point"] is None


def test_pareto_marks_dominated_points():
    pts = [point("a", 1.0, 0.9), point("b", 2.0, 0.95), point("c", 3.0, 0.94), point("d", 1.0, 0.9)]
    pareto(pts)
    assert [p["pareto"] for p in pts] == [True, True, False, True]  # equal points do not dominate each other


# ------------------------------------------------------------------ compress, end to end (CLI)
def _demo_args(embedded, out, *extra):
    d = str(embedded)
    rec = out.parent / "recipe.json"  # few timed runs: the test is about budgets, not speed
    rec.write_text(json.dumps({"runs": 3, "warmup": 1}))
    return ["compress", "--recipe", str(rec), str(embedded / "teacher"), "-o", str(out), "--calib", d, "--calib-split", "calibration",
            "--calib-count", "8", "--val", d, "--val-split", "val", "--train", d, "--train-split", "train",
            "--prune-ratio", "0.5", "--decoder-ratio", "0.75", "--distill-epochs", "0", "--no-int8",
            "--threads", "2", "-q", *extra]


@pytest.mark.slow
def test_compress_over_budget_exits_nonzero_without_bundle_then_accepted(embedded, tmp_path):
    """The demo teacher pruned by half without distillation misses the default budgets: exit 3,
    one line per missed budget, no bundle; the same run with --accept-over-budget reuses every
    stage and writes the bundle marked over budget."""
    out = tmp_path / "o"
    r = run_cli(*_demo_args(embedded, out))
    assert r.returncode == 3, r.stderr
    rep = json.loads((out / "report.json").read_text())
    missed = rep["budgets"]["point"]["missed"]
    assert missed and not rep["budgets"]["met"] and rep["bundle"] is None
    assert not (out / "bundle").exists()
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: over budget: ")]
    assert len(errors) == len(missed)
    for m, ln in zip(missed, errors):
        assert "budget" in ln and "(closest candidate: recipe/fp32" in ln
        assert (str(m["measured"]) if isinstance(m["measured"], int) else f"{m['measured']:.4f}") in ln
    assert "NO BUNDLE" in r.stderr and "NO BUNDLE" in (out / "report.md").read_text()
    # accepted: the stages are reused, the bundle says it is over budget, and so do report and terminal
    r2 = run_cli(*_demo_args(embedded, out, "--accept-over-budget"))
    assert r2.returncode == 0, r2.stderr
    assert "warning: OVER BUDGET" in r2.stderr and "--accept-over-budget" in r2.stderr
    from edgeseg.runtime.bundle import read_bundle

    b = read_bundle(out / "bundle").manifest["budgets"]
    assert b["over_budget"] is True and b["met"] is False and len(b["missed"]) == len(missed)
    assert b["measured"]["agreement"] == rep["budgets"]["point"]["fidelity"]["agreement"]
    assert b["limits"]["min_agreement"] == 0.95 and b["limits"]["max_lost_lesions"] == 0
    assert "OVER BUDGET" in (out / "report.md").read_text()
    # budgets loose enough to be met: exit 0 and a bundle marked met
    r3 = run_cli(*_demo_args(embedded, out, "--max-image-drop", "1", "--min-agreement", "0",
                             "--max-lost-lesions", "1000", "--max-dice-drop", "0.5"))
    # the mean-drop budget also steers the INT8 guard, so changing it is a recipe change (refused on resume)
    assert r3.returncode == 2 and "max_dice_drop: 0.01 -> 0.5" in r3.stderr
    r4 = run_cli(*_demo_args(embedded, tmp_path / "met", "--max-image-drop", "1", "--min-agreement",
                             "0", "--max-lost-lesions", "1000", "--max-dice-drop", "0.5"))
    assert r4.returncode == 0, r4.stderr
    b = read_bundle(tmp_path / "met/bundle").manifest["budgets"]
    assert b["met"] is True and b["over_budget"] is False and b["missed"] == []
    assert "budgets MET by recipe/fp32" in r4.stdout
