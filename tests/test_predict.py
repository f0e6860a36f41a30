"""predict: streaming, complete-or-nothing, one output-folder policy, a record of the model."""

import json

import numpy as np
import pytest

import conftest
from conftest import write_img
from edgeseg.errors import ConfigError, DataError
from edgeseg.outputs import MARKER
from edgeseg.predict import predict_folder
from edgeseg.runners import model_id, open_model


def rgb(seed=0):
    return conftest.rgb(30, 40, seed)


@pytest.fixture()
def images(tmp_path):
    for i in range(3):
        write_img(tmp_path / f"in/im{i}.png", rgb(i))
    return tmp_path / "in"


@pytest.fixture(scope="module")
def seg(tiny_bundle):
    return open_model(tiny_bundle)


def test_writes_masks_and_records_the_model(seg, tiny_bundle, images, tmp_path):
    res = predict_folder(seg, images, tmp_path / "p", model_path=tiny_bundle, model_id=model_id(seg, tiny_bundle))
    assert res.images == 3 and sorted(p.name for p in (tmp_path / "p/masks").iterdir()) == [
        "im0.png", "im1.png", "im2.png"]
    rec = json.loads((tmp_path / "p" / MARKER).read_text())
    assert rec["kind"] == "predict" and rec["images"] == 3 and rec["model_id"] == model_id(seg, tiny_bundle)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".p.")]  # no temporary leftovers


def test_streams_one_image_at_a_time(seg, images, tmp_path, monkeypatch):
    """The first mask is predicted before the second image is read (memory flat in folder size)."""
    from edgeseg.data import folders as D

    events = []
    real_read, real_predict = D.read_image, seg.predict
    monkeypatch.setattr(D, "read_image", lambda p: events.append("read") or real_read(p))
    monkeypatch.setattr(seg, "predict", lambda im, **k: events.append("predict") or real_predict(im, **k))
    predict_folder(seg, images, tmp_path / "p")
    assert events == ["read", "predict"] * 3


def test_existing_output_needs_overwrite_and_is_replaced_whole(seg, images, tmp_path):
    predict_folder(seg, images, tmp_path / "p")
    with pytest.raises(ConfigError, match="--overwrite"):
        predict_folder(seg, images, tmp_path / "p")
    (images / "im1.png").unlink()
    predict_folder(seg, images, tmp_path / "p", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "p/masks").iterdir()) == ["im0.png", "im2.png"]  # no merge


def test_foreign_folder_never_touched(seg, images, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/report.docx").write_bytes(b"precious")
    for ow in (False, True):
        with pytest.raises(ConfigError, match="did not write"):
            predict_folder(seg, images, tmp_path / "mine", overwrite=ow)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["report.docx"]


@pytest.mark.parametrize("where", ["in", "in/masks", "."])
def test_output_that_is_or_holds_the_input_refused(seg, images, tmp_path, where):
    with pytest.raises(ConfigError, match="input"):
        predict_folder(seg, images, tmp_path / where, overwrite=True)
    assert sorted(p.name for p in images.iterdir()) == ["im0.png", "im1.png", "im2.png"]


def test_failure_midway_leaves_previous_result(seg, images, tmp_path):
    predict_folder(seg, images, tmp_path / "p")
    before = {p.name: p.read_bytes() for p in (tmp_path / "p/masks").iterdir()}
    (images / "im2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match="im2.png"):
        predict_folder(seg, images, tmp_path / "p", overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "p/masks").iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".p.")]


def test_names_differing_only_by_extension_refused(seg, images, tmp_path):
    write_img(images / "im0.jpg", rgb(9))
    with pytest.raises(DataError, match="same mask im0.png"):
        predict_folder(seg, images, tmp_path / "p")


def test_output_under_a_file_or_read_only(seg, images, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        predict_folder(seg, images, tmp_path / "f" / "p")
    with pytest.raises(ConfigError, match="is a file"):
        predict_folder(seg, images, tmp_path / "f")


def test_cli_summary_line(tiny_bundle, images, tmp_path):
    from conftest import run_cli

    r = run_cli("predict", tiny_bundle, images, "-o", tmp_path / "p", "-q")
    assert r.returncode == 0, r.stderr
    assert "predicted 3 image(s)" in r.stdout and "masks, overlays" in r.stdout
