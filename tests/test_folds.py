"""edgeseg train --folds K (edgeseg.train.folds): K fold models, a table whose mean is the mean of
the fold results, resuming, and bad K refused with one line."""

import csv
import json

import numpy as np
import pytest

from conftest import EMBEDDED, one_line_error, run_cli
from edgeseg.errors import ConfigError
from edgeseg.train.folds import split_folds
from edgeseg.train.loop import TrainConfig

TRAIN_IMAGES = len((EMBEDDED / "splits" / "train.txt").read_text().split())


def test_split_folds_partitions_the_names():
    names = [f"n{i}" for i in range(10)]
    folds = split_folds(names, 3, seed=0)
    assert sorted(len(f) for f in folds) == [3, 3, 4]
    assert sorted(n for f in folds for n in f) == sorted(names)
    assert split_folds(names, 3, seed=0) == folds and split_folds(names, 3, seed=1) != folds
    with pytest.raises(ConfigError, match="at least 2"):
        split_folds(names, 1, 0)
    with pytest.raises(ConfigError, match="more than the 10 training images"):
        split_folds(names, 11, 0)


@pytest.mark.slow
def test_folds_train_k_models_and_a_table_of_their_results(tmp_path):
    out = tmp_path / "cv"
    r = run_cli("train", EMBEDDED, "-o", out, "--variant", "tiny", "--size", "64", "--epochs", "1", "--batch-size",
                "16", "--warmup-steps", "1", "--threads", "2", "--folds", "3", "--json", "-q")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert [row["fold"] for row in res["rows"]] == ["fold_1", "fold_2", "fold_3"]
    vals = []
    for i, row in enumerate(res["rows"], 1):
        meta = json.loads((out / f"fold_{i}" / "edgeseg_checkpoint.json").read_text())
        assert meta["metrics"]["val"]["mean_dice"] == row["val_dice"]
        held_out = (out / "splits" / f"fold_{i}_val.txt").read_text().split()
        trained = (out / "splits" / f"fold_{i}_train.txt").read_text().split()
        assert not set(held_out) & set(trained) and len(held_out) + len(trained) == TRAIN_IMAGES
        assert meta["metrics"]["val"]["n_images"] == len(held_out) == row["val_images"]
        assert (out / f"fold_{i}" / "logs" / "metrics.csv").is_file()  # each fold run is tracked too
        vals.append(row["val_dice"])
    assert res["mean_dice"] == pytest.approx(np.mean(vals)) and res["std_dice"] == pytest.approx(np.std(vals, ddof=1))
    with open(out / "folds.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [float(t["val_dice"]) for t in table] == pytest.approx(vals)
    assert json.loads((out / "folds.json").read_text())["mean_dice"] == pytest.approx(np.mean(vals))
    assert "mean" in (out / "folds.md").read_text() and (out / "folds.png").read_bytes()[:4] == b"\x89PNG"
    # the same command again: every fold is finished, nothing is trained, the same results
    before = (out / "fold_1" / "model.safetensors").stat().st_mtime_ns
    r2 = run_cli("train", EMBEDDED, "-o", out, "--variant", "tiny", "--size", "64", "--epochs", "1", "--batch-size",
                 "16", "--warmup-steps", "1", "--threads", "2", "--folds", "3", "--json", "-q")
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout)["mean_dice"] == res["mean_dice"]
    assert (out / "fold_1" / "model.safetensors").stat().st_mtime_ns == before
    # other settings on the same folder: refused naming what differs
    r3 = run_cli("train", EMBEDDED, "-o", out, "--variant", "tiny", "--size", "64", "--epochs", "2", "--folds", "3")
    one_line_error(r3, "epochs 1 -> 2")


@pytest.mark.parametrize("args, says", [(["--folds", "1"], "--folds"), (["--folds", "0"], "--folds"),
                                        (["--folds", str(TRAIN_IMAGES + 1)], "more than the"),
                                        (["--refit"], "--refit needs --folds")])
def test_bad_folds_refused_with_one_line_before_any_work(tmp_path, args, says):
    r = run_cli("train", EMBEDDED, "-o", tmp_path / "cv", "--variant", "tiny", "--size", "64", *args)
    one_line_error(r, says)
    assert not (tmp_path / "cv").exists()


@pytest.mark.slow
def test_refit_trains_on_all_training_images(tmp_path):
    from edgeseg.train.folds import run_folds

    cfg = TrainConfig(data=str(EMBEDDED), out=str(tmp_path / "cv"), variant="tiny", size=64, epochs=1, batch_size=16,
                      warmup_steps=1, progress=False, threads=2)
    res = run_folds(cfg, 2, refit=True)
    meta = json.loads((tmp_path / "cv" / "refit" / "edgeseg_checkpoint.json").read_text())
    assert res["refit"]["train_images"] == TRAIN_IMAGES == meta["provenance"]["train_set"]["count"]
    assert len(res["rows"]) == 2 and "refit" in (tmp_path / "cv" / "folds.csv").read_text()
