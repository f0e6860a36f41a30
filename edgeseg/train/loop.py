"""The training loop shared by ``edgeseg train`` and ``edgeseg distill``.

Images are read and resized once (the same numpy pre-processing the device uses), kept in
memory as uint8 at the model's input size, augmented on the fly in torch. Validation scores
argmax masks at each image's ORIGINAL size with the numpy metrics, every epoch. The best
checkpoint is written atomically; ``OUT/.resume/`` holds the last epoch's full state so an
interrupted run continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgeseg.data import folders as D
from edgeseg.errors import ConfigError
from edgeseg.runtime.files import atomic_dir
from edgeseg.model.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from edgeseg.model.variants import build_model
from edgeseg.runtime.metrics import MetricAccumulator
from edgeseg.runtime.preprocess import Preprocess, postprocess, resize

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
    device: str = "auto"
    seed: int = 0
    threads: int | None = None
    time_budget_min: float | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch size must be at least 1")
        if self.size < 32 or self.size % 32:
            raise ConfigError(f"--size must be a multiple of 32 and at least 32, got {self.size}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"learning rate {self.lr} out of range (0, 1)")
        if len(self.classes) < 2:
            raise ConfigError("need at least two classes (background and one more)")


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA GPU is visible to torch")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda or auto")
    return name


def load_arrays(samples, pp: Preprocess, num_classes: int, keep_original: bool = False):
    """Read, check and resize a list of samples -> uint8 images (N,h,w,3), masks (N,h,w)."""
    imgs = np.empty((len(samples), pp.height, pp.width, 3), np.uint8)
    masks = np.empty((len(samples), pp.height, pp.width), np.uint8)
    originals = []
    for i, s in enumerate(samples):
        image, mask = D.load_pair(s, num_classes)
        imgs[i] = np.clip(resize(image.astype(np.float32), pp.height, pp.width) + 0.5, 0, 255).astype(np.uint8)
        onehot = np.stack([(mask == c).astype(np.float32) for c in range(num_classes)], axis=-1)
        masks[i] = resize(onehot, pp.height, pp.width).argmax(axis=-1).astype(np.uint8)
        if keep_original:
            originals.append((image, mask))
    return imgs, masks, originals


def to_tensor(imgs_u8, pp: Preprocess, device):
    """uint8 (N,h,w,3) torch tensor -> normalised float NCHW (same maths as runtime.preprocess)."""
    import torch

    x = imgs_u8.to(device=device, dtype=torch.float32).permute(0, 3, 1, 2) * pp.scale
    mean = torch.tensor(pp.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(pp.std, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(x_u8, y, gen):
    """Flips, 90-degree rotations (square inputs), brightness/contrast jitter; in torch, per batch."""
    import torch

    if torch.rand((), generator=gen) < 0.5:
        x_u8, y = x_u8.flip(2), y.flip(2)
    if torch.rand((), generator=gen) < 0.5:
        x_u8, y = x_u8.flip(1), y.flip(1)
    if x_u8.shape[1] == x_u8.shape[2]:
        k = int(torch.randint(0, 4, (), generator=gen))
        x_u8, y = torch.rot90(x_u8, k, (1, 2)), torch.rot90(y, k, (1, 2))
    x = x_u8.float()
    n = x.shape[0]
    b = (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.3 * 255
    c = 1 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.4
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * c + mean + b).clamp(0, 255)
    return x.round().to(torch.uint8), y


def seg_loss(logits, target, class_weights=None, dice_weight: float = 1.0):
    """Cross-entropy (optionally class-weighted) + soft Dice over foreground classes.

    ``logits`` are upsampled to the target size first, as HF does for its own loss.
    """
    import torch
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


@dataclass
class _State:
    epoch: int = 0
    step: int = 0
    best_dice: float = -1.0
    best_epoch: int = -1
    history: list = field(default_factory=list)
    elapsed_s: float = 0.0


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


def train(cfg: TrainConfig) -> Path:
    import torch

    from edgeseg.model.checkpoint import checkpoint_sha256

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    pick_device(cfg.device)  # fail early on a device that is not there
    num_classes = len(cfg.classes)
    pp = Preprocess(height=cfg.size, width=cfg.size)

    train_s = D.discover(cfg.data, cfg.train_split if _has_split(cfg.data, cfg.train_split) else None)
    val_s = D.discover(cfg.data, cfg.val_split) if _has_split(cfg.data, cfg.val_split) else []
    if cfg.train_split and not _has_split(cfg.data, cfg.train_split):
        log.warning("no split %r in %s: training on every image and validating on the same", cfg.train_split,
                    cfg.data)
    if not val_s:
        val_s = train_s
    log.info("reading %d training and %d validation images from %s", len(train_s), len(val_s), cfg.data)
    xs, ys, _ = load_arrays(train_s, pp, num_classes)
    _, _, val_orig = load_arrays(val_s, pp, num_classes, keep_original=True)

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
    return fit(model, xs, ys, val_orig, [s.name for s in val_s], pp, cfg, provenance)


def class_weights_for(ys: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse square root of pixel frequencies, normalised to min 1, capped at 10."""
    counts = np.bincount(ys.ravel(), minlength=num_classes).astype(np.float64) + 1
    w = (counts.sum() / counts) ** 0.5
    return np.minimum(w / w.min(), 10.0)


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
        provenance: dict, loss_fn=None, extra_training: dict | None = None) -> Path:
    """The loop: AdamW + warm-up + poly decay, validation Dice each epoch, best checkpoint kept,
    full state saved each epoch for resuming; data-parallel under ``torchrun``.

    ``loss_fn(logits, x, y)`` defaults to class-weighted CE + soft Dice against the masks.
    """
    import torch

    device = pick_device(cfg.device)
    rank, world, device = _distributed(device)
    out = Path(cfg.out)
    resume_dir = out.parent / f".{out.name}.resume"
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
    state = _State()
    if (resume_dir / "state.json").is_file():
        state = _resume(resume_dir, model, opt, sched, cfg, device)
        log.info("resuming after epoch %d (best val Dice %.4f)", state.epoch, state.best_dice)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device] if device.startswith("cuda") else None)

    gen = torch.Generator().manual_seed(cfg.seed + state.epoch)
    x_all = torch.from_numpy(xs)
    y_all = torch.from_numpy(ys)
    t_start = time.time() - state.elapsed_s
    for epoch in range(state.epoch, cfg.epochs):
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
                xb, yb = augment(xb, yb, gen)
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
            rec = {"epoch": state.epoch, "train_loss": float(np.mean(losses)), "val_dice": summary["mean_dice"],
                   "val_iou": summary["mean_iou"], "lr": sched.get_last_lr()[0],
                   "elapsed_s": round(state.elapsed_s, 1)}
            state.history.append(rec)
            print(json.dumps(rec), file=sys.stderr)
            if summary["mean_dice"] > state.best_dice:
                state.best_dice, state.best_epoch = summary["mean_dice"], state.epoch
                meta = CheckpointMeta(
                    preprocess=pp, classes=list(cfg.classes),
                    metrics={"val": _round(summary), "epoch": state.epoch},
                    provenance=provenance,
                    training={**{k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
                              "device": device, "world_size": world, "torch_threads": torch.get_num_threads(),
                              "elapsed_s": round(state.elapsed_s, 1), "history": state.history,
                              **(extra_training or {})},
                )
                save_checkpoint(model, meta, out)
            _save_resume(resume_dir, model, opt, sched, state)
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
        if cfg.time_budget_min and state.elapsed_s > cfg.time_budget_min * 60:
            log.warning("time budget of %.1f min reached after epoch %d", cfg.time_budget_min, state.epoch)
            break
    if rank == 0:
        _update_history(out, state)
    return out


def _has_split(root, split) -> bool:
    return split is not None and (Path(split).is_file() or (Path(root) / "splits" / f"{split}.txt").is_file())


def _round(summary: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in summary.items() if k != "per_class"}


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, leave=False, dynamic_ncols=True)


def _save_resume(resume_dir: Path, model, opt, sched, state: _State) -> None:
    import torch
    from safetensors.torch import save_file

    with atomic_dir(resume_dir) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp / "optim.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(state)))


def _resume(resume_dir: Path, model, opt, sched, cfg: TrainConfig, device) -> _State:
    import torch
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(resume_dir / "model.safetensors"), device=str(device)))
    o = torch.load(resume_dir / "optim.pt", map_location=device, weights_only=True)
    opt.load_state_dict(o["optimizer"])
    sched.load_state_dict(o["scheduler"])
    return _State(**json.loads((resume_dir / "state.json").read_text()))


def _update_history(out: Path, state: _State) -> None:
    from edgeseg.model.checkpoint import META_FILE

    mp = out / META_FILE
    if mp.is_file():
        d = json.loads(mp.read_text())
        d["training"]["history"] = state.history
        d["training"]["best_epoch"] = state.best_epoch
        tmp = mp.with_suffix(".tmp")
        tmp.write_text(json.dumps(d, indent=2) + "\n")
        tmp.replace(mp)
