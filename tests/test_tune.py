"""edgeseg tune (edgeseg.train.tune): short trials on the tiny model, the results table, a study that
resumes, the time budget, and bad options refused with one line."""

import csv
import json

import pytest

from conftest import EMBEDDED, one_line_error, run_cli
from edgeseg.errors import ConfigError, DependencyError

BASE = ["--variant", "tiny", "--size", "64", "--epochs", "1", "--threads", "2", "-q"]


def _table(out):
    with open(out / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_tune_writes_results_and_a_second_call_continues_the_study(tmp_path):
    import optuna

    out = tmp_path / "study"
    r = run_cli("tune", EMBEDDED, "-o", out, "--trials", "2", "--sampler", "random", *BASE)
    assert r.returncode == 0, r.stderr
    rows = _table(out)
    assert [int(x["trial"]) for x in rows] == [0, 1] and all(x["state"] == "complete" for x in rows)
    assert set(rows[0]) >= {"val_dice", "lr", "batch_size", "augment_strength", "dice_weight", "checkpoint"}
    for x in rows:  # each trial is a real training run whose best validation Dice is the trial's value
        meta = json.loads((out / x["checkpoint"] / "edgeseg_checkpoint.json").read_text())
        assert meta["metrics"]["val"]["mean_dice"] == pytest.approx(float(x["val_dice"]))
        assert meta["training"]["lr"] == pytest.approx(float(x["lr"]))
        assert meta["training"]["batch_size"] == int(x["batch_size"]) in (4, 8, 16)
    best = json.loads((out / "best.json").read_text())
    assert best["val_dice"] == pytest.approx(max(float(x["val_dice"]) for x in rows))
    assert (out / "history.png").read_bytes()[:4] == b"\x89PNG" and "Best: trial" in (out / "trials.md").read_text()
    # the same study, continued: --trials counts the study's finished trials, so one more runs
    r = run_cli("tune", EMBEDDED, "-o", out, "--trials", "3", "--sampler", "random", *BASE)
    assert r.returncode == 0, r.stderr
    rows2 = _table(out)
    assert [int(x["trial"]) for x in rows2] == [0, 1, 2] and rows2[:2] == rows
    study = optuna.load_study(study_name="edgeseg-tune", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 3
    assert rows2[2]["lr"] not in (rows[0]["lr"], rows[1]["lr"])  # a resumed sampler does not redraw old points
    # other settings on the same study are refused, naming what differs
    r = run_cli("tune", EMBEDDED, "-o", out, "--trials", "4", "--sampler", "tpe", *BASE)
    one_line_error(r, "sampler")


@pytest.mark.slow
def test_time_budget_stops_starting_trials(tmp_path):
    from edgeseg.train.loop import TrainConfig
    from edgeseg.train.tune import TuneConfig, run_tune

    base = TrainConfig(data=str(EMBEDDED), out=str(tmp_path / "study"), variant="tiny", size=64, epochs=1,
                       progress=False, threads=2, warmup_steps=1)
    res = run_tune(TuneConfig(base=base, trials=50, time_budget_min=0.001))  # 60 ms: over after the first trial
    assert res["complete"] == 1 and res["trials"] == 1
    assert len(_table(tmp_path / "study")) == 1


def test_bad_options_one_line(tmp_path):
    out = tmp_path / "study"
    one_line_error(run_cli("tune", EMBEDDED, "-o", out, "--trials", "0", *BASE), "--trials")
    one_line_error(run_cli("tune", EMBEDDED, "-o", out, "--time-budget", "-1", *BASE), "--time-budget")
    one_line_error(run_cli("tune", EMBEDDED, "-o", out, "--sampler", "grid", *BASE), "--sampler")
    assert not out.exists()


def test_missing_optuna_is_one_line(tmp_path, monkeypatch):
    import builtins

    from edgeseg.train.loop import TrainConfig
    from edgeseg.train.tune import TuneConfig, run_tune

    real = builtins.__import__

    def no_optuna(name, *a, **kw):
        if name == "optuna" or name.startswith("optuna."):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_optuna)
    base = TrainConfig(data=str(EMBEDDED), out=str(tmp_path / "study"), variant="tiny", size=64, epochs=1)
    with pytest.raises(DependencyError, match=r"needs optuna.*edgeseg\[track\]"):
        run_tune(TuneConfig(base=base, trials=1))
    assert not (tmp_path / "study").exists()
    with pytest.raises(ConfigError, match="needs a budget"):
        TuneConfig(base=base, trials=None)


def test_augment_strength_scales_the_intensity_jitter():
    """The searched augmentation strength: 0 keeps every pixel value (flips and rotations only),
    larger strengths move them further."""
    import torch

    from edgeseg.train.augment import augment

    x = torch.randint(40, 200, (8, 32, 32, 3), dtype=torch.uint8)
    y = torch.zeros(8, 32, 32, dtype=torch.uint8)
    moved = []
    for strength in (0.0, 0.5, 1.5):
        out, _ = augment(x, y, torch.Generator().manual_seed(0), strength)
        same = torch.equal(out.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
        assert same == (strength == 0.0)
        moved.append((out.float().mean((1, 2, 3)) - x.float().mean((1, 2, 3))).abs().mean().item())
    assert moved[0] == 0 < moved[1] < moved[2]
