"""The training loop shared by ``edgeseg train`` and ``edgeseg distill``.

Images are read and resized once (the same numpy pre-processing the device uses), kept in
memory as uint8 at the model's input size, augmented on the fly in torch. Validation scores
argmax masks at each image's ORIGINAL size with the numpy metrics, every epoch. The best
checkpoint is written atomically; ``OUT/.resume/`` holds the last epoch's full state so an
interrupted run continues where it stopped. Each epoch's record (loss, Dice, IoU, precision,
recall, F1, learning rate, time) goes to ``OUT/logs/`` and the ``--log`` backends (edgeseg.track).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeseg.data import folders as D
from edgeseg.errors import ConfigError, DataError
from edgeseg.model.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from edgeseg.model.variants import build_model
from edgeseg.runtime.files import atomic_write_json
from edgeseg.runtime.metrics import MetricAccumulator
from edgeseg.runtime.preprocess import Preprocess, postprocess, resize
from edgeseg.track import LOG_DIR, RunLog, epoch_record
from edgeseg.train import resume as R
from edgeseg.train.resume import TrainState
from edgeseg.train.augment import augment, to_tensor
from edgeseg.train.losses import class_weights_for, lr_factor, seg_loss  # noqa: F401 - re-used by distill

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str
    variant: str = "b0"
    config_file: str | None = None
    init: str | None = None
    train_split: str | None = "train"
    val_split: str | None = "val"
    classes: tuple[str, ...] = ("background", "foreground")
    size: int = 256
    epochs: int = 20
    batch_size: int = 8
    lr: float = 6e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    poly_power: float = 1.0
    dice_weight: float = 1.0
    class_weighting: bool = True
    augment: bool = True
    augment_strength: float = 1.0  # scales the brightness/contrast jitter (0: flips and rotations only)
    scale_jitter: float = 0.0  # zoom: random crops of 1 - scale_jitter .. 1 of each side, resized back (0: none)
    patience: int | None = None  # stop after this many epochs without a better validation score (None, 0: never)
    device: str = "auto"
    seed: int = 0
    threads: int | None = None
    time_budget_min: float | None = None
    progress: bool = True
    log: tuple[str, ...] = ()  # --log backends (edgeseg.track); the CSV and PNG curves are always written
    intensity: str | None = None  # intensity policy (edgeseg.runtime.intensity.parse), e.g. "ct:soft-tissue"

    def __post_init__(self) -> None:
        from edgeseg.track import check_backends

        object.__setattr__(self, "log", check_backends(self.log))
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch size must be at least 1")
        if self.size < 32 or self.size % 32:
            raise ConfigError(f"--size must be a multiple of 32 and at least 32, got {self.size}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"learning rate {self.lr} out of range (0, 1)")
        if len(self.classes) < 2:
            raise ConfigError("need at least two classes (background and one more)")
        if not 0 <= self.augment_strength <= 3 or not 0 <= self.dice_weight <= 100:
            raise ConfigError(f"augment strength must be in [0, 3] and Dice weight in [0, 100], got "
                              f"{self.augment_strength} and {self.dice_weight}")
        if not 0 <= self.scale_jitter < 1:
            raise ConfigError(f"--scale-jitter must be in [0, 1), got {self.scale_jitter}")
        if self.patience is not None and (isinstance(self.patience, bool) or self.patience < 0):
            raise ConfigError(f"--patience must be a number of epochs (0: no early stopping), got {self.patience}")
        intensity_policy(self.intensity)  # a bad --intensity is refused before any work


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA GPU is visible to torch")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda or auto")
    return name


def intensity_policy(spec: str | None):
    """--intensity as a policy (None: 8-bit images as they are), or one ConfigError line."""
    if not spec:
        return None
    from edgeseg.runtime.errors import InputError
    from edgeseg.runtime.intensity import parse

    try:
        return parse(spec)
    except InputError as exc:
        raise ConfigError(f"--intensity: {exc}") from None


def load_arrays(samples, pp: Preprocess, num_classes: int, keep_original: bool = False, intensity=None):
    """Read, check and resize a list of samples -> uint8 images (N,h,w,3), masks (N,h,w)."""
    imgs = np.empty((len(samples), pp.height, pp.width, 3), np.uint8)
    masks = np.empty((len(samples), pp.height, pp.width), np.uint8)
    originals = []
    for i, s in enumerate(samples):
        image, mask = D.load_pair(s, num_classes, intensity=intensity)
        if image.dtype != np.uint8:  # [intensity] never clipped to 0-255 silently
            raise DataError(f"{s.image} holds {image.dtype} pixels ({float(image.min()):g}..{float(image.max()):g}): "
                            "choose how they map to the model's 8-bit input with --intensity (e.g. ct:soft-tissue, "
                            "window:LEVEL,WIDTH, percentile:0.5,99.5, minmax:MIN,MAX)")
        imgs[i] = np.clip(resize(image.astype(np.float32), pp.height, pp.width) + 0.5, 0, 255).astype(np.uint8)
        onehot = np.stack([(mask == c).astype(np.float32) for c in range(num_classes)], axis=-1)
        masks[i] = resize(onehot, pp.height, pp.width).argmax(axis=-1).astype(np.uint8)
        if keep_original:
            originals.append((image, mask))
    return imgs, masks, originals


def evaluate_model(model, originals, pp: Preprocess, num_classes: int, device, batch_size: int = 8,
                   names=None) -> dict:
    """Score a torch model on (image, mask) pairs at their original size."""
    import torch

    from edgeseg.runtime.preprocess import preprocess

    acc = MetricAccumulator(num_classes=num_classes)
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(originals), batch_size):
            chunk = originals[i:i + batch_size]
            x = torch.from_numpy(np.stack([preprocess(im, pp) for im, _ in chunk])).to(device)
            logits = model(pixel_values=x).logits.float().cpu().numpy()
            for j, (im, gt) in enumerate(chunk):
                mask, prob = postprocess(logits[j], im.shape[0], im.shape[1], probabilities=True)
                fg = prob[1] if num_classes == 2 else None
                acc.add(mask, gt, prob=fg if num_classes == 2 else prob,
                        name=names[i + j] if names else str(i + j))
    return acc.summary()


def train(cfg: TrainConfig, overwrite: bool = False) -> Path:
    """Train into ``cfg.out`` (a new folder, an unfinished run with the same settings to resume,
    or with ``overwrite`` an earlier training output to replace): see edgeseg.train.resume."""
    import torch

    from edgeseg.model.checkpoint import checkpoint_sha256

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    pick_device(cfg.device)  # fail early on a device that is not there
    mode, state = R.plan(cfg, overwrite)  # before reading any image: refuse what cannot be done
    num_classes = len(cfg.classes)
    pp = Preprocess(height=cfg.size, width=cfg.size)

    train_s = D.discover(cfg.data, cfg.train_split if D.has_split(cfg.data, cfg.train_split) else None)
    val_s = D.discover(cfg.data, cfg.val_split) if D.has_split(cfg.data, cfg.val_split) else []
    if cfg.train_split and not D.has_split(cfg.data, cfg.train_split):
        log.warning("no split %r in %s: training on every image and validating on the same", cfg.train_split,
                    cfg.data)
    if not val_s:
        val_s = train_s
    log.info("reading %d training and %d validation images from %s", len(train_s), len(val_s), cfg.data)
    policy = intensity_policy(cfg.intensity)
    xs, ys, _ = load_arrays(train_s, pp, num_classes, intensity=policy)
    _, _, val_orig = load_arrays(val_s, pp, num_classes, keep_original=True, intensity=policy)

    provenance: dict = {"data": str(Path(cfg.data).resolve()), "train_split": cfg.train_split,
                        "val_split": cfg.val_split, "train_set": D.fingerprint(train_s),
                        "left_out": [{"name": n, "reason": why} for n, why in
                                     getattr(train_s, "skipped", []) + getattr(val_s, "skipped", [])]}
    if cfg.init:
        model, init_meta = load_checkpoint(cfg.init)
        if init_meta.recorded and init_meta.preprocess.height != cfg.size:
            log.warning("--init was trained at %d px, training now at %d", init_meta.preprocess.height, cfg.size)
        if model.config.num_labels != num_classes:
            raise ConfigError(f"--init model has {model.config.num_labels} classes, the data has {num_classes}")
        provenance["init"] = {"path": str(Path(cfg.init).resolve()), "sha256": checkpoint_sha256(cfg.init),
                              "provenance": init_meta.provenance}
    else:
        model = build_model(cfg.variant, num_classes, cfg.config_file, seed=cfg.seed)
        provenance["init"] = "random (no pretrained weights)"
    return fit(model, xs, ys, val_orig, [s.name for s in val_s], pp, cfg, provenance, state=state)


def _distributed(device: str):
    """(rank, world, device) under torchrun; (0, 1, device) otherwise."""
    import os

    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    rank = dist.get_rank()
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return rank, world, device


def fit(model, xs: np.ndarray, ys: np.ndarray, val_orig, val_names, pp: Preprocess, cfg: TrainConfig,
        provenance: dict, loss_fn=None, extra_training: dict | None = None,
        state: TrainState | None = None) -> Path:
    """The loop: AdamW + warm-up + poly decay, validation Dice each epoch, best checkpoint kept,
    full state saved each epoch for resuming; data-parallel under ``torchrun``.

    ``loss_fn(logits, x, y)`` defaults to class-weighted CE + soft Dice against the masks.
    ``state``: the state to resume (from :func:`edgeseg.train.resume.plan`); None starts afresh.
    """
    import torch

    device = pick_device(cfg.device)
    rank, world, device = _distributed(device)
    out = Path(cfg.out)
    num_classes = len(cfg.classes)
    model.to(device)
    cw = torch.tensor(class_weights_for(ys, num_classes), dtype=torch.float32, device=device)
    if loss_fn is None:
        def loss_fn(logits, x, y):
            return seg_loss(logits, y, cw if cfg.class_weighting else None, cfg.dice_weight)

    steps_per_epoch = math.ceil(len(xs) / (cfg.batch_size * world))
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.warmup_steps, total, cfg.poly_power))
    resuming = state is not None
    if resuming:
        R.restore(out, model, opt, sched, device)
        log.warning("resuming %s after epoch %d of %d (best val Dice %.4f)", out, state.epoch, cfg.epochs,
                    state.best_dice)
    else:
        state = TrainState(settings=R.settings_of(cfg))
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device] if device.startswith("cuda") else None)

    gen = torch.Generator().manual_seed(cfg.seed + state.epoch)
    x_all = torch.from_numpy(xs)
    y_all = torch.from_numpy(ys)
    t_start = time.time() - state.elapsed_s
    run_log = RunLog(out, cfg.log, params=R.settings_of(cfg))
    for epoch in range(state.epoch, cfg.epochs):
        t_epoch = time.time()
        net.train()
        perm = torch.randperm(len(xs), generator=gen)[rank::world]
        bar = _bar(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and rank == 0)
        losses = []
        for b in range(steps_per_epoch):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            if len(idx) == 0:
                idx = perm[:cfg.batch_size]
            xb, yb = x_all[idx], y_all[idx]
            if cfg.augment:
                xb, yb = augment(xb, yb, gen, cfg.augment_strength, cfg.scale_jitter)
            x = to_tensor(xb, pp, device)
            logits = net(pixel_values=x).logits
            loss = loss_fn(logits, x, yb.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            state.step += 1
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        bar.close()
        state.epoch = epoch + 1
        state.elapsed_s = time.time() - t_start
        if rank == 0:
            summary = evaluate_model(model, val_orig, pp, num_classes, device, names=val_names)
            rec = epoch_record(state.epoch, np.mean(losses), summary, sched.get_last_lr()[0], time.time() - t_epoch,
                               state.elapsed_s)
            state.history.append(rec)
            print(f"epoch {state.epoch}/{cfg.epochs}  train loss {rec['train_loss']:.4f}  val Dice "
                  f"{rec['val_dice']:.4f}  val IoU {rec['val_iou']:.4f}  lr {rec['lr']:.2e}  "
                  f"{rec['elapsed_s']:.0f} s", file=sys.stderr)
            if summary["mean_dice"] > state.best_dice:
                state.best_dice, state.best_epoch = summary["mean_dice"], state.epoch
                meta = CheckpointMeta(
                    preprocess=pp, classes=list(cfg.classes),
                    intensity=intensity_policy(cfg.intensity).to_dict() if cfg.intensity else {},
                    metrics={"val": _round(summary), "epoch": state.epoch},
                    provenance=provenance,
                    training={**{k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
                              "device": device, "world_size": world, "torch_threads": torch.get_num_threads(),
                              "elapsed_s": round(state.elapsed_s, 1), "history": state.history,
                              **(extra_training or {})},
                )
                # the resume state lives in OUT: carry ours across the checkpoint's atomic replacement
                # (an --overwrite'n run's old state is dropped at its first save)
                save_checkpoint(model, meta, out, keep=(R.RESUME_DIR, LOG_DIR) if resuming else ())
            R.save(out, model, opt, sched, state)
            run_log.update(state.history)
            resuming = True
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
        if cfg.patience and _no_progress(state, cfg, world, device):
            state.stopped_early = (f"no better validation score for {cfg.patience} epoch(s) after epoch "
                                   f"{state.best_epoch}")
            log.warning("stopping after epoch %d of %d: %s", state.epoch, cfg.epochs, state.stopped_early)
            break
        if cfg.time_budget_min and state.elapsed_s > cfg.time_budget_min * 60:
            log.warning("time budget of %.1f min reached after epoch %d", cfg.time_budget_min, state.epoch)
            break
    if rank == 0:
        _update_history(out, state)
        run_log.finish(state.history)
        if state.epoch >= cfg.epochs or state.stopped_early:  # finished: nothing left to resume
            import shutil

            shutil.rmtree(out / R.RESUME_DIR, ignore_errors=True)
    return out


def _no_progress(state: TrainState, cfg: TrainConfig, world: int, device: str = "cpu") -> bool:
    """--patience: the last ``cfg.patience`` epochs brought no better validation score (decided
    on rank 0, which validates, and shared with the other ranks under torchrun)."""
    stop = 0 < state.best_epoch and cfg.patience <= state.epoch - state.best_epoch and state.epoch < cfg.epochs
    if world > 1:
        import torch
        import torch.distributed as dist

        flag = torch.tensor([int(stop)], device=device)
        dist.broadcast(flag, 0)
        stop = bool(flag.item())
    return stop


def _round(summary: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in summary.items() if k != "per_class"}


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, leave=False, dynamic_ncols=True)


def _update_history(out: Path, state: TrainState) -> None:
    from edgeseg.model.checkpoint import META_FILE

    mp = out / META_FILE
    if mp.is_file():
        d = json.loads(mp.read_text())
        d["training"]["history"] = state.history
        d["training"]["best_epoch"] = state.best_epoch
        d["training"]["steps"] = state.step
        if state.stopped_early:
            d["training"]["stopped_early"] = state.stopped_early
        atomic_write_json(mp, d)
