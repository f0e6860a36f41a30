"""Tracked runs (edgeseg.track): the per-epoch CSV and curves every run writes, TensorBoard on
request, and one line for a backend that is not installed."""

import copy
import csv
import json
import logging
import math

import pytest

from conftest import one_line_error, run_cli
from edgeseg.errors import ConfigError, DependencyError
from edgeseg.track import COLUMNS, CSV_FILE, LOG_DIR, PNG_FILE
from edgeseg.train.loop import TrainConfig, train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rows(out):
    with open(out / LOG_DIR / CSV_FILE, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def _cfg(tmp_path, embedded, **kw):
    base = dict(data=str(embedded), out=str(tmp_path / "m"), variant="tiny", size=64, batch_size=16,
                warmup_steps=1, progress=False, epochs=2, threads=2)
    return TrainConfig(**{**base, **kw})


def test_every_training_run_writes_csv_and_curves(tiny_ckpt):
    """The session's tiny checkpoint (2 epochs) carries its log: the columns, one row per epoch,
    the same numbers as the history in the checkpoint, and a PNG."""
    fields, rows = _rows(tiny_ckpt)
    assert tuple(fields) == COLUMNS
    hist = json.loads((tiny_ckpt / "edgeseg_checkpoint.json").read_text())["training"]["history"]
    assert [int(r["epoch"]) for r in rows] == [h["epoch"] for h in hist] == [1, 2]
    for r, h in zip(rows, hist):
        for k in COLUMNS:
            v = float(r[k])
            assert math.isfinite(v) and v == pytest.approx(h[k], rel=1e-6), k
        for k in ("val_dice", "val_iou", "val_precision", "val_recall", "val_f1"):
            assert 0.0 <= float(r[k]) <= 1.0
        assert float(r["epoch_s"]) > 0 and float(r["lr"]) >= 0
    assert float(rows[0]["lr"]) > float(rows[1]["lr"])  # the poly decay, as the scheduler left it
    assert float(rows[1]["elapsed_s"]) >= float(rows[0]["elapsed_s"])
    assert (tiny_ckpt / LOG_DIR / PNG_FILE).read_bytes()[:8] == PNG_MAGIC


def test_tensorboard_events_readable_and_a_resumed_run_logs_each_epoch_once(tmp_path, embedded):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "m"
    train(_cfg(tmp_path, embedded, log=("tensorboard",), time_budget_min=1e-9))  # stops after epoch 1 of 2
    assert [int(r["epoch"]) for r in _rows(out)[1]] == [1]
    train(_cfg(tmp_path, embedded, log=("tensorboard",)))  # resumes: epoch 2
    _, rows = _rows(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    ea = EventAccumulator(str(out / LOG_DIR / "tensorboard"))
    ea.Reload()
    tags = ea.Tags()["scalars"]
    assert {"train/train_loss", "val/dice", "val/iou", "val/precision", "val/recall", "val/f1", "train/lr",
            "train/epoch_s"} <= set(tags)
    dice = ea.Scalars("val/dice")
    assert [e.step for e in dice] == [1, 2]
    assert [e.value for e in dice] == pytest.approx([float(r["val_dice"]) for r in rows], rel=1e-5)
    assert not (out / ".resume").exists()  # the finished run kept its logs, dropped its resume state


def test_distill_keeps_its_log(tiny_ckpt, embedded, tmp_path):
    from edgeseg.distill import DistillConfig, distill
    from edgeseg.model.checkpoint import load_checkpoint

    teacher, meta = load_checkpoint(tiny_ckpt)
    cfg = TrainConfig(data=str(embedded), out=str(tmp_path / "s"), size=64, epochs=1, batch_size=16,
                      warmup_steps=1, progress=False, classes=tuple(meta.classes), threads=2)
    out = distill(copy.deepcopy(teacher).train(), teacher, meta, cfg, DistillConfig(), tiny_ckpt)
    fields, rows = _rows(out)
    assert tuple(fields) == COLUMNS and [int(r["epoch"]) for r in rows] == [1]


def test_without_matplotlib_csv_only_and_one_line(tmp_path, embedded, monkeypatch, caplog):
    import edgeseg.measure.report as report

    def missing():
        raise DependencyError("plots need matplotlib, which is not installed: pip install edgeseg[plot]")

    monkeypatch.setattr(report, "require_matplotlib", missing)
    with caplog.at_level(logging.WARNING, logger="edgeseg.track"):
        out = train(_cfg(tmp_path, embedded, epochs=1))
    assert [int(r["epoch"]) for r in _rows(out)[1]] == [1]
    assert not (out / LOG_DIR / PNG_FILE).exists()
    said = [r for r in caplog.records if "matplotlib" in r.getMessage()]
    assert len(said) == 1 and CSV_FILE in said[0].getMessage()


@pytest.mark.parametrize("backend", ["mlflow", "wandb"])
def test_missing_backend_is_refused_before_any_work(tmp_path, embedded, monkeypatch, backend):
    import edgeseg.track as track

    real = track.find_spec
    monkeypatch.setattr(track, "find_spec", lambda name: None if name == backend else real(name))
    with pytest.raises(DependencyError, match=f"--log {backend} needs the {backend} package.*pip install {backend}"):
        _cfg(tmp_path, embedded, log=(backend,))
    assert not (tmp_path / "m").exists()
    with pytest.raises(ConfigError, match="unknown --log 'neptune'"):
        _cfg(tmp_path, embedded, log=("neptune",))


def test_cli_missing_backend_one_line(tmp_path, embedded):
    from importlib.util import find_spec

    missing = [b for b in ("mlflow", "wandb") if find_spec(b) is None]
    if not missing:
        pytest.skip("mlflow and wandb are both installed here: nothing missing to report")
    r = run_cli("train", embedded, "-o", tmp_path / "m", "--variant", "tiny", "--size", "64", "--epochs", "1",
                "--log", "tensorboard", "--log", missing[0])
    one_line_error(r, f"pip install {missing[0]}")
    assert not (tmp_path / "m").exists()


def test_confusion_matrix_counts_pixels_by_true_and_predicted_class():
    import numpy as np

    from edgeseg.measure.confusion import ConfusionMatrix

    cm = ConfusionMatrix(["bg", "a", "b"])
    gt = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [2, 2, 0]])
    cm.add(pred, gt)
    d = cm.to_dict()
    assert d["counts"] == [[1, 1, 0], [0, 1, 1], [1, 0, 1]] and d["pixels"] == 6
    assert d["normalised"][0] == [0.5, 0.5, 0.0]
    cm2 = ConfusionMatrix(["bg", "a", "b"])
    cm2.add(np.zeros((2, 2), int), np.zeros((2, 2), int))
    assert cm2.to_dict()["normalised"][1] == [None, None, None]  # a class absent from the ground truth


def test_evaluate_writes_the_confusion_matrix(tiny_bundle, embedded, tmp_path):
    png, summary_json = tmp_path / "cm.png", tmp_path / "summary.json"
    r = run_cli("evaluate", tiny_bundle, embedded, "--split", "val", "--confusion", png, "--json", summary_json,
                "--quiet")
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == PNG_MAGIC
    conf = json.loads(png.with_suffix(".json").read_text())
    summary = json.loads(summary_json.read_text())["summary"]
    assert conf == summary["confusion"]
    # binary: rows/columns (background, foreground) are the pooled tn, fp / fn, tp of the metrics
    assert conf["counts"] == [[summary["tn"], summary["fp"]], [summary["fn"], summary["tp"]]]
    for row in conf["normalised"]:
        assert row[0] is None or sum(row) == pytest.approx(1.0)
    # an existing file is not replaced without --overwrite: one line, before any work
    r = run_cli("evaluate", tiny_bundle, embedded, "--split", "val", "--confusion", png, "--quiet")
    one_line_error(r, "--confusion")
