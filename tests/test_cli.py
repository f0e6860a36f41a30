import csv
import json
import shutil

import cv2
import numpy as np
import pytest

from conftest import one_line_error, run_cli, write_img


def test_evaluate_writes_json_and_csv(tiny_bundle, embedded, tmp_path):
    r = run_cli("evaluate", tiny_bundle, embedded, "--split", "val", "--json", tmp_path / "s.json",
                "--csv", tmp_path / "rows.csv", "-q")
    assert r.returncode == 0, r.stderr
    assert "dice" in r.stdout and "hd95" in r.stdout
    summary = json.loads((tmp_path / "s.json").read_text())["summary"]
    rows = list(csv.DictReader(open(tmp_path / "rows.csv")))
    assert summary["n_images"] == len(rows) == 12
    assert abs(np.mean([float(r["dice"]) for r in rows]) - summary["mean_dice"]) < 1e-9


def test_predict_masks_at_original_size(tiny_bundle, embedded, tmp_path):
    r = run_cli("predict", tiny_bundle, embedded / "images", "-o", tmp_path / "p", "--probs")
    assert r.returncode == 0, r.stderr
    src = cv2.imread(str(embedded / "images/sample_003.jpg"))
    m = cv2.imread(str(tmp_path / "p/masks/sample_003.png"), cv2.IMREAD_UNCHANGED)
    assert m.shape == src.shape[:2] and set(np.unique(m)) <= {0, 255}
    assert (tmp_path / "p/overlays/sample_003.jpg").is_file()
    assert (tmp_path / "p/probs/sample_003.png").is_file()


def test_missing_data(tiny_ckpt, tmp_path):
    one_line_error(run_cli("evaluate", tiny_ckpt, tmp_path / "nope"), "not found")


@pytest.mark.slow
def test_not_a_segformer(tmp_path, embedded):
    (tmp_path / "m").mkdir()
    (tmp_path / "m/config.json").write_text(json.dumps({"model_type": "vit"}))
    one_line_error(run_cli("evaluate", tmp_path / "m", embedded), "not a SegFormer")


def test_tampered_bundle(tiny_bundle, embedded, tmp_path):
    d = shutil.copytree(tiny_bundle, tmp_path / "b")
    data = bytearray((d / "model.onnx").read_bytes())
    data[100] ^= 0xFF
    (d / "model.onnx").write_bytes(bytes(data))
    one_line_error(run_cli("evaluate", d, embedded), "sha256")


def test_unknown_option(tiny_ckpt, embedded):
    one_line_error(run_cli("evaluate", tiny_ckpt, embedded, "--frobnicate"), "no such option")


def test_mask_of_wrong_size(tiny_ckpt, tmp_path):
    write_img(tmp_path / "d/images/a.png", np.zeros((20, 30, 3), np.uint8))
    write_img(tmp_path / "d/masks/a.png", np.zeros((21, 30), np.uint8))
    one_line_error(run_cli("evaluate", tiny_ckpt, tmp_path / "d"), "30x21")


def test_corrupt_image_in_predict_leaves_nothing(tiny_bundle, tmp_path):
    write_img(tmp_path / "in/good.png", np.zeros((20, 30, 3), np.uint8))
    (tmp_path / "in/bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    one_line_error(run_cli("predict", tiny_bundle, tmp_path / "in", "-o", tmp_path / "out"), "bad.jpg")
    assert not (tmp_path / "out").exists()


def test_bad_classes_and_format(tiny_ckpt, embedded, tmp_path):
    one_line_error(run_cli("train", embedded, "-o", tmp_path / "x", "--classes", "bg"), "--classes")
    one_line_error(run_cli("export", tiny_ckpt, "-o", tmp_path / "y", "--format", "tflite"), "--format")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_train_size_must_be_multiple_of_32(embedded, tmp_path):
    one_line_error(run_cli("train", embedded, "-o", tmp_path / "x", "--size", "50"), "multiple of 32")


def test_usage_errors_are_one_line_and_name_the_help(tiny_ckpt):
    line = one_line_error(run_cli("evaluate", tiny_ckpt), "missing argument")
    assert "edgeseg evaluate --help" in line
    one_line_error(run_cli("frobnicate"), "no such command")
    one_line_error(run_cli("train", "x", "--lr", "abc"), "--lr")


def test_version_and_python_dash_m():
    import subprocess
    import sys

    from edgeseg import __version__

    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"edgeseg {__version__}"
    r = subprocess.run([sys.executable, "-m", "edgeseg", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "compress" in r.stdout and "Usage: edgeseg" in r.stdout
