import json

import numpy as np

from edgeseg.train import TrainConfig, lr_factor, seg_loss, train


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
