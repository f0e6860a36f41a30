"""Tracked runs (edgeseg.track): the per-epoch CSV and curves every run writes, TensorBoard on
request, MLflow (local file store) and W&B (offline) runs read back with their own readers, never
a network, and one line for a backend that is not installed."""

import copy
import csv
import json
import logging
import math
import sys

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


@pytest.mark.slow  # an end-to-end run: in the full suite, not the fast subset
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


def _csv_series(out):
    """{column: [(epoch, value)]} of the run's CSV, for the numeric cells."""
    _, rows = _rows(out)
    return {k: [(int(r["epoch"]), float(r[k])) for r in rows if r[k] not in ("", None)] for k in COLUMNS[1:]}


@pytest.fixture
def no_internet(monkeypatch):
    """Every connection this process tries to a host other than localhost (and every DNS
    lookup of one) is refused and recorded."""
    import socket

    tried = []
    local = {"localhost", "127.0.0.1", "::1", None, ""}
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in local:
            tried.append(address)
            raise OSError(f"test: no network ({address})")
        return real_connect(sock, address)

    def getaddrinfo(host, *a, **kw):
        if host not in local:
            tried.append(host)
            raise socket.gaierror(f"test: no network ({host})")
        return real_getaddrinfo(host, *a, **kw)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return tried


@pytest.mark.slow  # an end-to-end run: in the full suite, not the fast subset
def test_mlflow_local_store_holds_each_epoch_once_and_the_params(tmp_path, embedded, monkeypatch, no_internet):
    from mlflow import MlflowClient

    from edgeseg.train.resume import settings_of

    cfg = _cfg(tmp_path, embedded, log=("mlflow",))
    out = train(cfg)
    store = out / LOG_DIR / "mlruns"
    assert store.is_dir()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # how a user reads a file store with MLflow 3
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    exp = client.get_experiment_by_name("edgeseg")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == out.name
    expected = _csv_series(out)
    assert set(run.data.metrics) == {k for k, v in expected.items() if v}
    for key, series in expected.items():
        if series:
            got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            assert [s for s, _ in got] == [1, 2], key  # one value per epoch
            assert [v for _, v in got] == pytest.approx([v for _, v in series], rel=1e-6), key
    assert run.data.params == {k: str(v) for k, v in settings_of(cfg).items()}
    assert no_internet == []


def _read_wandb_records(path):
    """The protobuf records of a W&B transaction log (the offline run's ``.wandb`` file): a
    7-byte header, then 32 KiB blocks of chunks (crc32c, length, type: 1 full, 2 first,
    3 middle, 4 last)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, buf, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            records.append(rec)
            buf = b""
    return records


def _wandb_items(items) -> dict:
    """{key: value} of a record's items (a key is either ``key`` or the path ``nested_key``)."""
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


@pytest.mark.slow  # a CLI child process: 13 s at a load of 7 on 2 cores
def test_wandb_offline_run_holds_each_epoch_once_never_online(tmp_path, embedded):
    """Through the CLI, in a child process bounded by a timeout (a hang fails the test): W&B set
    to go online, no API key, every proxy and the W&B server pointing at a closed local port. The
    run must still be an offline run folder holding one history row per epoch and the settings."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and "proxy" not in k.lower()}
    dead = "http://127.0.0.1:9"
    env.update(WANDB_MODE="online", WANDB_BASE_URL=dead, HTTP_PROXY=dead, HTTPS_PROXY=dead, http_proxy=dead,
               https_proxy=dead, WANDB_CONFIG_DIR=str(tmp_path / "cfg"), WANDB_CACHE_DIR=str(tmp_path / "cache"),
               WANDB_DATA_DIR=str(tmp_path / "data"))
    out = tmp_path / "m"
    cmd = [sys.executable, "-m", "edgeseg", "train", str(embedded), "-o", str(out), "--variant", "tiny", "--size",
           "64", "--epochs", "2", "--batch-size", "16", "--log", "wandb"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180, stdin=subprocess.DEVNULL,
                           check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("edgeseg train --log wandb did not finish in 180 s (waiting on the network or a prompt?)")
    assert r.returncode == 0, r.stderr
    assert "api key" not in (r.stdout + r.stderr).lower()
    runs = list((out / LOG_DIR / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, sorted(p.name for p in (out / LOG_DIR).rglob("*"))
    records = _read_wandb_records(next(runs[0].glob("run-*.wandb")))
    rows = [_wandb_items(rec.history.item) for rec in records if rec.WhichOneof("record_type") == "history"]
    assert [row["_step"] for row in rows] == [1, 2]  # one row per epoch
    assert [rec.history.step.num for rec in records if rec.WhichOneof("record_type") == "history"] == [1, 2]
    for key, series in _csv_series(out).items():
        assert [row.get(key) for row in rows if key in row] == pytest.approx([v for _, v in series], rel=1e-6), key
    config = {k: v for rec in records if rec.WhichOneof("record_type") == "run"
              for k, v in _wandb_items(rec.run.config.update).items()}
    assert (config["epochs"], config["variant"], config["batch_size"], config["size"]) == (2, "tiny", 16, 64)
    assert config["data"] == str(embedded.resolve()) and "out" not in config  # the run's settings


def test_a_backend_that_fails_is_one_line_after_the_others_wrote(tmp_path, monkeypatch):
    """wandb.init failing (as when its service does not start within the init timeout) is one
    DependencyError line; MLflow, asked too, still gets its run."""
    import wandb
    from mlflow import MlflowClient

    from edgeseg.track import RunLog

    def init(**kw):
        raise wandb.errors.CommError("Run initialization has timed out after 60.0 sec.\nPlease refer to the docs")

    monkeypatch.setattr(wandb, "init", init)
    history = [{"epoch": 1, "train_loss": 0.5, "val_dice": 0.25, "lr": 1e-3, "epoch_s": 1.0, "elapsed_s": 1.0}]
    with pytest.raises(DependencyError) as info:
        RunLog(tmp_path, ["wandb", "mlflow"], params={"epochs": 1}).finish(history)
    said = str(info.value)
    assert "\n" not in said and said.startswith("--log wandb: CommError: Run initialization has timed out")
    assert "--log mlflow" not in said and f"logs/metrics.csv are saved in {tmp_path}" in said
    client = MlflowClient(tracking_uri=(tmp_path / LOG_DIR / "mlruns").as_uri())
    run, = client.search_runs([client.get_experiment_by_name("edgeseg").experiment_id])
    assert run.data.metrics["val_dice"] == 0.25 and run.data.params == {"epochs": "1"}


@pytest.mark.parametrize("backend", ["mlflow", "wandb"])
def test_missing_backend_is_refused_before_any_work(tmp_path, embedded, monkeypatch, backend):
    monkeypatch.setitem(sys.modules, backend, None)  # how Python marks a module that cannot be imported
    with pytest.raises(DependencyError, match=rf'--log {backend} needs the {backend} package.*edgeseg\[{backend}\]'):
        _cfg(tmp_path, embedded, log=(backend,))
    assert not (tmp_path / "m").exists()
    with pytest.raises(ConfigError, match="unknown --log 'neptune'"):
        _cfg(tmp_path, embedded, log=("neptune",))


@pytest.mark.parametrize("backend", ["mlflow", "wandb"])
def test_cli_missing_backend_one_line(tmp_path, embedded, backend):
    """The CLI in a child process where BACKEND cannot be imported (installed or not here)."""
    import subprocess

    hide = f"import sys; sys.modules[{backend!r}] = None; from edgeseg.__main__ import main; main()"
    r = subprocess.run([sys.executable, "-c", hide, "train", str(embedded), "-o", str(tmp_path / "m"), "--variant",
                        "tiny", "--size", "64", "--epochs", "1", "--log", "tensorboard", "--log", backend],
                       capture_output=True, text=True, timeout=300, check=False)
    one_line_error(r, f'pip install "edgeseg[{backend}]"')
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
