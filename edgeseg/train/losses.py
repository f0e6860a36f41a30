"""Losses and schedules shared by ``edgeseg train`` and ``edgeseg distill``."""

from __future__ import annotations

import numpy as np


def seg_loss(logits, target, class_weights=None, dice_weight: float = 1.0):
    """Cross-entropy (optionally class-weighted) + soft Dice over foreground classes.

    ``logits`` are upsampled to the target size first, as HF does for its own loss.
    """
    import torch.nn.functional as F

    logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    ce = F.cross_entropy(logits, target.long(), weight=class_weights)
    if dice_weight <= 0:
        return ce
    prob = logits.softmax(1)
    onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2).float()
    inter = (prob * onehot).sum(dim=(0, 2, 3))
    denom = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return ce + dice_weight * (1 - dice[1:].mean())


def lr_factor(step: int, warmup: int, total: int, power: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1 - (step - warmup) / max(1, total - warmup)) ** power


def class_weights_for(ys: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse square root of pixel frequencies, normalised to min 1, capped at 10."""
    counts = np.bincount(ys.ravel(), minlength=num_classes).astype(np.float64) + 1
    w = (counts.sum() / counts) ** 0.5
    return np.minimum(w / w.min(), 10.0)
