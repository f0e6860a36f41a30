"""export calibrates its guards on the user's images or refuses; checks its output before
working; ships no absolute paths of the machine that made the bundle."""

import json
import shutil

import pytest

from conftest import EMBEDDED, write_img
from edgeseg.errors import ConfigError
from edgeseg.export.pipeline import export_bundle, recorded_data
from edgeseg.model.checkpoint import CheckpointMeta, read_meta, save_checkpoint
from edgeseg.model.variants import build_model
from edgeseg.runtime.bundle import MANIFEST
from edgeseg.runtime.preprocess import Preprocess


@pytest.fixture(scope="module")
def foreign_ckpt(tmp_path_factory):
    """A model trained elsewhere: edgeseg metadata, but training data this machine cannot read."""
    meta = CheckpointMeta(preprocess=Preprocess(64, 64),
                          provenance={"data": "/nonexistent/hospital/kvasir", "val_split": "val",
                                      "train_split": "train", "train_set": {"sha256": "0" * 64, "count": 800}})
    return save_checkpoint(build_model("tiny").eval(), meta, tmp_path_factory.mktemp("f") / "ckpt")


def test_no_data_and_nothing_readable_recorded_is_refused(foreign_ckpt, tmp_path):
    with pytest.raises(ConfigError, match="--data"):
        export_bundle(foreign_ckpt, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_embedded_set_only_for_a_model_trained_on_it(tiny_ckpt, foreign_ckpt, tmp_path):
    assert recorded_data(read_meta(foreign_ckpt)) is None
    # tiny_ckpt was trained on the embedded set: found by its training set's fingerprint even when
    # the recorded path is from another machine
    meta = read_meta(tiny_ckpt)
    meta.provenance = {**meta.provenance, "data": "/elsewhere/calibration_data"}
    root, split = recorded_data(meta)
    assert root == EMBEDDED and split == "val"


def test_users_images_give_the_drift_statistics(foreign_ckpt, tmp_path):
    import numpy as np

    for i in range(6):
        img = np.random.default_rng(i).integers(0, 80, (50, 60, 3), dtype=np.uint8)
        write_img(tmp_path / f"mine/images/x{i}.png", img)
    path, rep = export_bundle(foreign_ckpt, tmp_path / "b", data=tmp_path / "mine", limit=0)
    m = json.loads((path / MANIFEST).read_text())
    assert rep["images"] == 6 and m["input_stats"]["count"] == 6


def test_no_absolute_paths_in_the_manifest(tiny_ckpt, tmp_path):
    path, _ = export_bundle(tiny_ckpt, tmp_path / "b", data=EMBEDDED.resolve(), split="val", limit=4)
    text = (path / MANIFEST).read_text()
    assert str(EMBEDDED.resolve()) not in text and str(tmp_path) not in text and "/work/" not in text
    prov = json.loads(text)["provenance"]
    assert prov["source_checkpoint"] == tiny_ckpt.name and len(prov["source_sha256"]) == 64


def test_output_checked_before_any_work(tiny_ckpt, tmp_path, monkeypatch):
    import edgeseg.export.pipeline as P

    monkeypatch.setattr(P, "export_onnx", lambda *a, **k: pytest.fail("exported before checking the output"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes/a.txt").write_text("mine")
    with pytest.raises(ConfigError, match="did not write"):
        export_bundle(tiny_ckpt, tmp_path / "notes", data=EMBEDDED, split="val", overwrite=True)
    with pytest.raises(ConfigError, match="input"):
        export_bundle(tiny_ckpt, tiny_ckpt / "bundle", data=EMBEDDED, split="val")


def test_existing_bundle_needs_overwrite(tiny_bundle, tiny_ckpt, tmp_path):
    b = shutil.copytree(tiny_bundle, tmp_path / "b")
    before = (b / MANIFEST).read_bytes()
    with pytest.raises(ConfigError, match="--overwrite"):
        export_bundle(tiny_ckpt, b, data=EMBEDDED, split="val", limit=4)
    assert (b / MANIFEST).read_bytes() == before
    export_bundle(tiny_ckpt, b, data=EMBEDDED, split="val", limit=4, overwrite=True)
    assert (b / MANIFEST).read_bytes() != before


def test_wrong_split_lists_the_splits(tiny_ckpt, tmp_path):
    from edgeseg.errors import DataError

    with pytest.raises(DataError, match="splits of calibration_data: calibration, test, train, val"):
        export_bundle(tiny_ckpt, tmp_path / "b", data=EMBEDDED, split="vall")
