"""edgeseg explain: Grad-CAM overlays on the demo teacher (calibration_data/teacher), compared with
a pruned student; models without gradients refused with one line."""

import json
import shutil

import cv2
import numpy as np
import pytest

from conftest import EMBEDDED, one_line_error, run_cli
from edgeseg.data import folders as D
from edgeseg.explain import correlation, grad_cam
from edgeseg.model.checkpoint import load_checkpoint

TEACHER = EMBEDDED / "teacher"
# demo images on which the teacher predicts a polyp-like region
NAMES = ["sample_003", "sample_004", "sample_005", "sample_006", "sample_008"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("explain_images")
    for n in NAMES:
        shutil.copy(EMBEDDED / "images" / f"{n}.jpg", d / f"{n}.jpg")
    return d


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    out = tmp_path_factory.mktemp("explain_student") / "pruned"
    r = run_cli("prune", TEACHER, "-o", out, "--ratio", "0.5", "--decoder-ratio", "0.5", "--calib", EMBEDDED,
                "--calib-split", "calibration", "--calib-count", "4")
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("stage, method", [(2, "gradcam"), (4, "gradcam"), (4, "hirescam")])
def test_cam_is_concentrated_where_the_model_predicts(images, stage, method):
    """Non-trivial maps, denser inside the predicted region than outside it: per image at stage 2
    (1/8 of the input); at stage 4 (1/32: a 4 x 4 grid at 128 px) some maps are blank (nothing
    argues for the class there) and the rest are denser inside on average."""
    model, meta = load_checkpoint(TEACHER)
    inside, outside = [], []
    for n in NAMES:
        image = D.read_image(images / f"{n}.jpg")
        ex = grad_cam(model, meta, image, stage=stage, method=method)
        assert ex.cam.shape == image.shape[:2] and ex.mask.shape == image.shape[:2]
        assert ex.target == 1 and ex.region_pixels > 0
        region = ex.mask == 1
        assert region.any() and (~region).any() and ex.cam.min() >= 0
        if ex.cam.max() == 0:  # blank: recorded as such, never a made-up map
            assert stage == 4 and ex.record()["concentration"] is None
            continue
        assert ex.cam.max() == pytest.approx(1.0) and ex.cam.std() > 0.01
        inside.append(ex.cam[region].mean())
        outside.append(ex.cam[~region].mean())
        if stage == 2:
            assert inside[-1] > 2 * outside[-1], n
    assert len(inside) >= len(NAMES) // 2 + 1
    assert np.mean(inside) > np.mean(outside)


@pytest.mark.slow  # an end-to-end run: in the full suite, not the fast subset
def test_explain_cli_writes_overlays_and_compares_a_pruned_student(images, pruned, tmp_path):
    out = tmp_path / "ex"
    r = run_cli("explain", TEACHER, images, "-o", out, "--stage", "2", "--compare", pruned, "-q", "--threads", "2")
    assert r.returncode == 0, r.stderr
    assert "teacher-student CAM correlation" in r.stdout
    d = json.loads((out / "explain.json").read_text())
    assert d["stage"] == 2 and d["images"] == len(NAMES) and [row["name"] for row in d["rows"]] == NAMES
    for row in d["rows"]:
        img = cv2.imread(str(images / f"{row['name']}.jpg"))
        ov = cv2.imread(str(out / "overlays" / f"{row['name']}.png"))
        assert ov.shape == img.shape and not np.array_equal(ov, img)  # the heat map is drawn on the image
        side = cv2.imread(str(out / "compare" / f"{row['name']}.png"))
        assert side.shape[1] == 2 * img.shape[1] + 4 and side.shape[0] > img.shape[0]
        assert -1 <= row["correlation"] <= 1 and 0 <= row["mask_dice"] <= 1
        assert row["concentration"] > 1 and row["student"]["target"] == row["target"]
    m = d["means"]
    assert m["correlation"] == pytest.approx(np.mean([row["correlation"] for row in d["rows"]]), abs=1e-4)
    # a second run into the same folder needs --overwrite
    one_line_error(run_cli("explain", TEACHER, images, "-o", out, "-q"), "--overwrite")


def test_compare_with_itself_correlates_perfectly(images):
    model, meta = load_checkpoint(TEACHER)
    image = D.read_image(images / f"{NAMES[0]}.jpg")
    a, b = grad_cam(model, meta, image, 3), grad_cam(model, meta, image, 3)
    assert correlation(a.cam, b.cam) == pytest.approx(1.0)
    assert correlation(a.cam, 1.0 - a.cam) == pytest.approx(-1.0)
    assert correlation(np.zeros((4, 4)), a.cam[:4, :4]) is None  # a constant map has no correlation


@pytest.mark.slow  # an end-to-end run: in the full suite, not the fast subset
def test_models_without_gradients_are_refused_with_one_line(images, tmp_path):
    onnx = tmp_path / "student.onnx"
    onnx.write_bytes(b"not used: refused by its kind before it is read")
    r = run_cli("explain", TEACHER, images, "-o", tmp_path / "ex", "--compare", onnx)
    one_line_error(r, "has no gradients")
    r = run_cli("explain", onnx, images, "-o", tmp_path / "ex")
    one_line_error(r, "has no gradients")
    r = run_cli("explain", TEACHER, images, "-o", tmp_path / "ex", "--stage", "5")
    one_line_error(r, "--stage")
    r = run_cli("explain", TEACHER, images, "-o", tmp_path / "ex", "--target-class", "tumour")
    one_line_error(r, "--target-class")
    r = run_cli("explain", TEACHER, images, "-o", tmp_path / "ex", "--method", "lime")
    one_line_error(r, "--method")
    assert not (tmp_path / "ex").exists()
