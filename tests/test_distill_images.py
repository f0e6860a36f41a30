"""Distillation on every image: images without masks train the teacher term only."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeseg.distill import UNLABELLED, DistillConfig, _with_unlabelled, make_loss
from edgeseg.errors import ConfigError
from edgeseg.model.variants import build_model
from edgeseg.runtime.preprocess import Preprocess


def _pair():
    teacher = build_model("tiny", 2, seed=0).eval()
    student = build_model("tiny", 2, seed=1)
    return teacher, student


def test_unlabelled_images_carry_only_the_teacher_term():
    teacher, student = _pair()
    cfg = DistillConfig(temperature=2.0, alpha=0.5)
    loss_fn = make_loss(teacher, cfg, None, 1.0, student)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    logits = student(pixel_values=x).logits
    with torch.no_grad():
        t = teacher(pixel_values=x).logits
    kl = F.kl_div(F.log_softmax(logits / 2, 1), F.softmax(t / 2, 1), reduction="none").sum(1).mean()
    y_none = torch.full((2, 64, 64), UNLABELLED, dtype=torch.uint8)
    assert loss_fn(logits, x, y_none).item() == pytest.approx((0.5 * 4 * kl).item(), rel=1e-5)
    # labelled images add the ground-truth term; a mixed batch takes it over its labelled images only
    y = torch.zeros((2, 64, 64), dtype=torch.uint8)
    y[:, 10:30, 10:30] = 1
    full = loss_fn(logits, x, y).item()
    mixed = y.clone()
    mixed[1] = UNLABELLED
    part = loss_fn(logits, x, mixed).item()
    assert full > (0.5 * 4 * kl).item() and part > (0.5 * 4 * kl).item()
    assert part != pytest.approx(full)


def test_extra_images_join_with_unlabelled_masks(embedded, tmp_path):
    import shutil

    folder = tmp_path / "extra"
    folder.mkdir()
    for p in sorted((embedded / "images").iterdir())[:3]:
        shutil.copy(p, folder / p.name)  # images only, no masks
    pp = Preprocess(height=64, width=64)
    xs = np.zeros((2, 64, 64, 3), np.uint8)
    ys = np.zeros((2, 64, 64), np.uint8)
    x2, y2 = _with_unlabelled(xs, ys, str(folder), pp)
    assert x2.shape == (5, 64, 64, 3) and y2.shape == (5, 64, 64)
    assert (y2[:2] == 0).all() and (y2[2:] == UNLABELLED).all()
    assert x2[2:].std() > 0  # real pixels, resized
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception):
        _with_unlabelled(xs, ys, str(tmp_path / "empty"), pp)
    with pytest.raises(ConfigError):
        DistillConfig(temperature=0)
