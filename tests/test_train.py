import json

import numpy as np

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


def test_resume_continues_from_last_epoch(tmp_path, embedded):
    out = tmp_path / "m"
    cfg = dict(data=str(embedded), out=str(out), variant="tiny", size=64, batch_size=16, warmup_steps=1,
               progress=False)
    train(TrainConfig(epochs=1, **cfg))
    state = json.loads((tmp_path / ".m.resume" / "state.json").read_text())
    assert state["epoch"] == 1
    train(TrainConfig(epochs=2, **cfg))
    state = json.loads((tmp_path / ".m.resume" / "state.json").read_text())
    assert state["epoch"] == 2 and [h["epoch"] for h in state["history"]] == [1, 2]


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
    state = json.loads((tmp_path / ".ddp.resume/state.json").read_text())
    assert state["step"] == 6
