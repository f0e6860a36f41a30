import json

import numpy as np
import pytest

from edgeseg.train.loop import TrainConfig, lr_factor, seg_loss, train


def test_lr_schedule_warms_up_then_decays():
    f = [lr_factor(s, 10, 100, 1.0) for s in range(100)]
    assert f[0] == 0.1 and f[9] == 1.0 and f[10] == 1.0
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] < 0.02


def test_loss_is_lower_for_right_answer():
    import torch

    y = torch.zeros(1, 8, 8, dtype=torch.long)
    y[:, 2:6, 2:6] = 1
    good = torch.stack([(y == 0).float(), (y == 1).float()], 1) * 8 - 4
    assert seg_loss(good, y) < seg_loss(-good, y)


def test_training_improves_and_records(tiny_ckpt):
    meta = json.loads((tiny_ckpt / "edgeseg_checkpoint.json").read_text())
    hist = meta["training"]["history"]
    assert len(hist) == 2 and all(np.isfinite(h["train_loss"]) for h in hist)
    assert meta["preprocess"]["height"] == 64
    assert meta["provenance"]["train_set"]["count"] == 40


def _cfg(tmp_path, embedded, **kw):
    base = dict(data=str(embedded), out=str(tmp_path / "m"), variant="tiny", size=64, batch_size=16,
                warmup_steps=1, progress=False, epochs=2)
    return TrainConfig(**{**base, **kw})


def test_stopped_run_resumes_from_its_state_inside_the_output(tmp_path, embedded, caplog):
    out = tmp_path / "m"
    train(_cfg(tmp_path, embedded, time_budget_min=1e-9))  # the budget stops it after epoch 1 of 2
    state = json.loads((out / ".resume" / "state.json").read_text())
    assert state["epoch"] == 1 and not (tmp_path / ".m.resume").exists()
    train(_cfg(tmp_path, embedded))  # same settings: resumes, finishes, removes its state
    assert "resuming" in caplog.text and "after epoch 1 of 2" in caplog.text
    meta = json.loads((out / "edgeseg_checkpoint.json").read_text())
    assert [h["epoch"] for h in meta["training"]["history"]] == [1, 2]
    assert not (out / ".resume").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_changed_settings_are_refused_naming_what_differs(tmp_path, embedded):
    from edgeseg.errors import ConfigError

    train(_cfg(tmp_path, embedded, time_budget_min=1e-9))
    with pytest.raises(ConfigError, match=r"lr 0.0006 -> 0.001.*variant 'tiny' -> 'b0'|variant"):
        train(_cfg(tmp_path, embedded, lr=1e-3, variant="b0"))
    state = json.loads((tmp_path / "m" / ".resume" / "state.json").read_text())
    assert state["epoch"] == 1  # the refused run touched nothing


def test_finished_run_is_not_silently_reused(tmp_path, embedded):
    from edgeseg.errors import ConfigError

    out = train(_cfg(tmp_path, embedded, epochs=1))
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="finished training run.*--overwrite"):
        train(_cfg(tmp_path, embedded, epochs=1, lr=1e-3))
    assert (out / "model.safetensors").read_bytes() == before
    train(_cfg(tmp_path, embedded, epochs=1, lr=1e-3, seed=1), overwrite=True)
    meta = json.loads((out / "edgeseg_checkpoint.json").read_text())
    assert meta["training"]["lr"] == 1e-3 and (out / "model.safetensors").read_bytes() != before


def test_foreign_or_input_output_folder_refused_before_work(tmp_path, embedded):
    from edgeseg.errors import ConfigError

    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="did not write"):
        train(_cfg(tmp_path, embedded, out=str(foreign)))
    with pytest.raises(ConfigError, match="did not write"):
        train(_cfg(tmp_path, embedded, out=str(foreign)), overwrite=True)
    assert (foreign / "mine.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="input"):
        train(_cfg(tmp_path, embedded, out=str(embedded / "runs")))


@pytest.mark.slow
def test_data_parallel_under_torchrun(tmp_path, embedded):
    """Two CPU processes (gloo) train one model: rank 0 alone validates and writes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("edgeseg")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(exe), "train", str(embedded), "-o", str(tmp_path / "ddp"), "--variant", "tiny",
                        "--size", "64", "--epochs", "2", "--batch-size", "8", "-q"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((tmp_path / "ddp/edgeseg_checkpoint.json").read_text())
    assert meta["training"]["world_size"] == 2
    assert [h["epoch"] for h in meta["training"]["history"]] == [1, 2]
    # each rank sees half the images per epoch: 40 train images, batch 8 -> 3 steps per epoch
    assert meta["training"]["steps"] == 6 and not (tmp_path / "ddp/.resume").exists()


@pytest.mark.slow  # an end-to-end run: in the full suite, not the fast subset
def test_patience_stops_a_run_that_no_longer_improves(tmp_path, embedded, caplog):
    """A learning rate too small to change any mask: validation Dice never beats epoch 1, so with
    --patience 1 the run stops after epoch 2 of 5, says why, and leaves nothing to resume."""
    out = tmp_path / "m"
    with caplog.at_level("WARNING", logger="edgeseg.train.loop"):
        train(_cfg(tmp_path, embedded, epochs=5, lr=1e-12, patience=1))
    meta = json.loads((out / "edgeseg_checkpoint.json").read_text())
    assert [h["epoch"] for h in meta["training"]["history"]] == [1, 2]
    assert meta["training"]["best_epoch"] == 1
    assert "no better validation score for 1 epoch(s) after epoch 1" in meta["training"]["stopped_early"]
    assert "stopping after epoch 2 of 5" in caplog.text
    assert not (out / ".resume").exists()  # finished: a rerun is refused, not resumed
    # without patience the same run goes on to its last epoch
    train(_cfg(tmp_path, embedded, epochs=3, lr=1e-12, out=str(tmp_path / "n")))
    meta = json.loads((tmp_path / "n" / "edgeseg_checkpoint.json").read_text())
    assert len(meta["training"]["history"]) == 3 and "stopped_early" not in meta["training"]


@pytest.mark.parametrize("kw", [dict(patience=-1), dict(scale_jitter=1.0), dict(scale_jitter=-0.1)])
def test_bad_patience_or_scale_jitter_is_refused(tmp_path, embedded, kw):
    from edgeseg.errors import ConfigError

    with pytest.raises(ConfigError, match="--patience|--scale-jitter"):
        _cfg(tmp_path, embedded, **kw)


def test_zoom_keeps_each_label_under_its_pixel():
    """Random crops resized back: the image's red channel encodes the label, so wherever the
    zoomed mask says 1 the zoomed image must be red (up to one boundary pixel of interpolation)."""
    import torch

    from edgeseg.train.augment import augment, zoom

    g = torch.Generator().manual_seed(0)
    y = torch.zeros(6, 64, 64, dtype=torch.uint8)
    for i in range(6):
        y[i, 10 + i:40 + i, 5 + 3 * i:30 + 3 * i] = 1
    y[:, 50:, 50:] = 255  # unlabelled pixels stay unlabelled
    x = torch.zeros(6, 64, 64, 3, dtype=torch.uint8)
    x[..., 0] = (y == 1).to(torch.uint8) * 255
    same_x, same_y = zoom(x, y, g, 0.0)
    assert same_x is x and same_y is y
    zx, zy = zoom(x, y, g, 0.4)
    assert zx.shape == x.shape and zx.dtype == torch.uint8 and zy.shape == y.shape and zy.dtype == y.dtype
    assert set(torch.unique(zy).tolist()) <= {0, 1, 255}
    changed = [not torch.equal(zy[i], y[i]) for i in range(6)]
    assert sum(changed) >= 4  # crops really happened
    red = zx[..., 0] > 127
    inside = (zy == 1)
    assert (red == inside).float().mean() > 0.97  # disagreements only on the blurred borders
    ax, ay = augment(x, y, g, 1.0, 0.3)  # the whole chain keeps shapes and label values
    assert ax.shape == x.shape and set(torch.unique(ay).tolist()) <= {0, 1, 255}


def test_a_run_recorded_before_patience_and_zoom_resumes(tmp_path, embedded, caplog):
    """An unfinished run whose state predates --patience and --scale-jitter trained without zoom
    and stopped by no rule: it resumes with any patience (a stopping rule, like the time budget),
    and is refused with zoom switched on (it would learn something else)."""
    from edgeseg.errors import ConfigError

    out = tmp_path / "m"
    train(_cfg(tmp_path, embedded, time_budget_min=1e-9))
    sf = out / ".resume" / "state.json"
    st = json.loads(sf.read_text())
    assert "patience" not in st["settings"]  # a stopping rule is not a setting of what is learned
    st["settings"].pop("scale_jitter")
    sf.write_text(json.dumps(st))
    with pytest.raises(ConfigError, match=r"scale-jitter 0.0 -> 0.3"):
        train(_cfg(tmp_path, embedded, scale_jitter=0.3))
    train(_cfg(tmp_path, embedded, patience=2))
    assert "after epoch 1 of 2" in caplog.text and not (out / ".resume").exists()
