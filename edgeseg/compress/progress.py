"""What ``edgeseg compress`` says while it runs: nothing long is mute.

- :class:`Narrator`: human-readable lines and progress bars on stderr (tqdm), all hidden with
  ``-q``; every line also goes to the log. No JSON ever reaches the terminal from here.
- :class:`Estimate`: rough durations of each stage *on this machine*, from the teacher's
  measured time per image (one forward pass on a validation image, after one warm-up), the
  number of images each stage scores and times, and the recipe. It feeds the up-front plan line
  ("the whole run: about N min") and the line each stage prints as it starts. Distillation's
  figure is refined when that stage starts by timing a few real training steps
  (:func:`time_train_steps`) and extrapolating to the whole run. The figures are estimates:
  the line says "about", and each stage's end line says how long it really took.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger("edgeseg.compress.pipeline")

WHAT = {  # what each stage does, for its start line
    "teacher": "score and time the teacher on the validation images (the reference)",
    "fold": "fold the decode head and BatchNorm (exact rewrite), then score and time it",
    "prune": "remove Mix-FFN channels and decoder width, then score and time the pruned model",
    "distill": "train the pruned model towards the teacher's outputs",
    "export": "export to ONNX and check it against PyTorch on real images",
    "quantize": "calibrate INT8 ranges, let the accuracy guard choose the blocks kept in float",
    "bundle": "write the final bundle and the report",
}


def fmt_seconds(s: float | None) -> str:
    """'45 s', '3.2 min', '1.5 h'; '?' for None."""
    if s is None or not math.isfinite(s):
        return "?"
    if s < 90:
        return f"{max(s, 1):.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


class Narrator:
    """Stage lines and progress bars for one run; ``enabled=False`` (``-q``) hides both."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def say(self, msg: str) -> None:
        log.info("%s", msg)
        if self.enabled:
            print(msg, file=sys.stderr, flush=True)

    def bar(self, iterable=None, total: int | None = None, desc: str = "", unit: str = "img"):
        """A tqdm bar on stderr that disappears when done (none with ``-q``)."""
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not self.enabled, file=sys.stderr,
                    leave=False, dynamic_ncols=True)

    @contextmanager
    def stage(self, index: int, count: int, name: str, estimate_s: float | None, label: str = ""):
        """``stage 3/6 prune: <what it does> (about 40 s)`` as it starts; ``... done in 38 s``
        (with the result line the caller adds) when it ends."""
        about = "" if estimate_s is None else f" (about {fmt_seconds(estimate_s)})"
        self.say(f"stage {index}/{count} {label}{name}: {WHAT.get(name, name)}{about}")
        t0 = time.perf_counter()
        yield
        self.last_elapsed = time.perf_counter() - t0


@dataclass
class Estimate:
    """Rough stage durations, in seconds, from the teacher's measured time per image."""

    per_image_s: float  # the teacher: one prediction (pre-processing + model + post-processing)
    val_images: int
    train_images: int
    calib_images: int
    recipe: object  # edgeseg.compress.recipe.Recipe
    train_step_s: float | None = None  # measured when distillation starts

    def scoring(self, factor: float = 1.0) -> float:
        """Score every validation image and time (warm-up + runs) calls of a model that runs at
        ``factor`` x the teacher's speed."""
        r = self.recipe
        return factor * self.per_image_s * (self.val_images + r.warmup + r.runs)

    def distill_steps(self) -> int:
        r = self.recipe
        return math.ceil(self.train_images / r.batch_size) * r.distill_epochs

    def distill(self) -> float:
        r = self.recipe
        # a training step: teacher forward + student forward and backward (~3 forwards) per image,
        # unless measured; each epoch scores the validation images once
        step = self.train_step_s if self.train_step_s is not None else 4 * r.batch_size * self.per_image_s
        return self.distill_steps() * step + (r.distill_epochs + 2) * self.val_images * self.per_image_s

    def stage(self, name: str) -> float:
        r = self.recipe
        if name == "teacher":
            return self.scoring()
        if name == "fold":
            return 2 + self.scoring(0.8)
        if name == "prune":
            guard_steps = 4 if r.target_macs is not None and r.max_dice_drop is not None else 0
            return 5 + guard_steps * self.val_images * self.per_image_s + self.scoring(0.6)
        if name == "distill":
            return self.distill()
        if name == "export":  # ONNX export, parity on up to 16 images (torch + ONNX Runtime), scoring
            return 10 + 16 * self.per_image_s + self.scoring(0.5)
        if name == "quantize":  # calibration, one all-INT8 candidate scored, the chosen one timed
            return 10 + 2 * self.calib_images * self.per_image_s + self.val_images * self.per_image_s + \
                self.scoring(0.5)
        if name == "bundle":
            return 3
        raise KeyError(name)


def per_image_seconds(seg, image) -> float:
    """Seconds one ``seg.predict(image)`` takes here: the fastest of three, after two warm-ups
    (the first calls of a model are much slower)."""
    for _ in range(2):
        seg.predict(image)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        seg.predict(image)
        times.append(time.perf_counter() - t0)
    return min(times)


def time_train_steps(student, loss_fn, x, y, steps: int = 2) -> float:
    """Seconds one training step (forward, loss, backward) of ``student`` takes on the batch
    ``x``, ``y``: the mean of ``steps`` after a warm-up, on a copy of the student (its weights,
    its gradients and the global RNG are left as they were)."""
    import copy

    import torch

    model = copy.deepcopy(student).train()
    with torch.random.fork_rng():
        times = []
        for k in range(steps + 1):
            t0 = time.perf_counter()
            logits = model(pixel_values=x).logits
            loss_fn(logits, x, y).backward()
            model.zero_grad(set_to_none=True)
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            if k:
                times.append(time.perf_counter() - t0)
    del model
    return sum(times) / len(times)
