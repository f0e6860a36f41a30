"""K-fold cross-validation of a training run (``edgeseg train --folds K``).

The training images (the train split, or every image when there is none) are shuffled with the
run's seed and cut into K folds of near-equal size (no stratification). Fold k trains on the
other K-1 folds with the run's settings and is validated on fold k, every epoch, exactly as
``edgeseg train`` validates; its best checkpoint is kept in ``OUT/fold_k`` (k = 1..K), with
``OUT/splits/fold_k_{train,val}.txt`` naming its images. ``--refit`` then trains the same
settings on all the training images into ``OUT/refit`` (validated on the val split when the data
has one, else on the training images, as ``train`` does).

Results: ``OUT/folds.{csv,json,md}`` (each fold's best validation Dice, IoU, epoch and image
counts; the mean and sample standard deviation over folds) and ``OUT/folds.png`` (validation
Dice per epoch for each fold, and each fold's best with the mean +- one standard deviation).

``OUT`` is recognised as a folds output (its ``.edgeseg-output.json``): started again with the
same settings it resumes (finished folds are kept, an interrupted one continues); other settings
are refused; ``--overwrite`` removes the earlier folds first.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgeseg.data import folders as D
from edgeseg.errors import ConfigError, DependencyError
from edgeseg.outputs import check_output, mark
from edgeseg.runtime.files import atomic_write_json, atomic_write_text, read_json
from edgeseg.train import resume as R

log = logging.getLogger(__name__)

KIND = "folds"
SETTINGS_FILE = "folds_settings.json"


def split_folds(names: list[str], k: int, seed: int) -> list[list[str]]:
    """``names`` shuffled by ``seed`` and cut into ``k`` folds whose sizes differ by at most one."""
    if k < 2:
        raise ConfigError(f"--folds must be at least 2, got {k}")
    if k > len(names):
        raise ConfigError(f"--folds {k} is more than the {len(names)} training images: each fold needs at least one")
    order = np.random.default_rng(seed).permutation(len(names))
    return [[names[i] for i in part] for part in np.array_split(order, k)]


def _settings(cfg, k: int, refit: bool) -> dict:
    return {"folds": k, "refit": refit, **R.settings_of(cfg)}


def _plan(cfg, k: int, refit: bool, overwrite: bool) -> None:
    out = Path(cfg.out)
    mode = check_output(out, KIND, inputs=[cfg.data, cfg.init, cfg.config_file], overwrite=overwrite,
                        resumable=True)
    if mode == "resume":
        old = read_json(out / SETTINGS_FILE, error=ConfigError)
        diff = R.differences(old, _settings(cfg, k, refit))
        if diff:
            raise ConfigError(f"-o {out} holds folds run with other settings ({'; '.join(diff)}); run again with its "
                              "settings to resume it, --overwrite to start again, or choose a new -o")
    elif mode == "replace":
        shutil.rmtree(out)


def run_folds(cfg, k: int, refit: bool = False, overwrite: bool = False) -> dict:
    """Train ``k`` folds (and the refit) for the TrainConfig ``cfg`` into ``cfg.out``; returns
    the results (also written as folds.json)."""
    from edgeseg.train.loop import train

    out = Path(cfg.out)
    split = cfg.train_split if D.has_split(cfg.data, cfg.train_split) else None
    samples = D.discover(cfg.data, split)  # before any writing: bad data is refused here
    folds = split_folds([s.name for s in samples], k, cfg.seed)
    _plan(cfg, k, refit, overwrite)
    (out / "splits").mkdir(parents=True, exist_ok=True)
    mark(out, KIND, folds=k, data=str(Path(cfg.data).resolve()))
    atomic_write_json(out / SETTINGS_FILE, _settings(cfg, k, refit))
    rows = []
    for i, val in enumerate(folds, 1):
        train_names = [n for j, f in enumerate(folds, 1) if j != i for n in f]
        tr = atomic_write_text(out / "splits" / f"fold_{i}_train.txt", "\n".join(train_names) + "\n")
        va = atomic_write_text(out / "splits" / f"fold_{i}_val.txt", "\n".join(val) + "\n")
        fold_out = out / f"fold_{i}"
        if not _finished(fold_out):
            log.warning("fold %d of %d: training on %d images, validating on %d", i, k, len(train_names), len(val))
            train(replace(cfg, out=str(fold_out), train_split=str(tr.resolve()), val_split=str(va.resolve())))
        rows.append(_row(f"fold_{i}", fold_out, len(train_names), len(val)))
    result = {"folds": k, "data": str(Path(cfg.data).resolve()), "rows": rows, **_stats(rows)}
    if refit:
        refit_out = out / "refit"
        if not _finished(refit_out):
            log.warning("refit: training the same settings on all %d training images", len(samples))
            train(replace(cfg, out=str(refit_out)))
        result["refit"] = _row("refit", refit_out, len(samples), None)
    write_results(result, out)
    return result


def _finished(path: Path) -> bool:
    return (path / "edgeseg_checkpoint.json").is_file() and not (path / R.RESUME_DIR).exists()


def _row(name: str, path: Path, n_train: int, n_val: int | None) -> dict:
    meta = read_json(path / "edgeseg_checkpoint.json", error=ConfigError)
    val = (meta.get("metrics") or {}).get("val") or {}
    training = meta.get("training") or {}
    return {"fold": name, "val_dice": val.get("mean_dice"), "val_iou": val.get("mean_iou"),
            "best_epoch": training.get("best_epoch"), "train_images": n_train,
            "val_images": n_val if n_val is not None else val.get("n_images"),
            "history": [h.get("val_dice") for h in training.get("history", [])], "checkpoint": path.name}


def _stats(rows: list[dict]) -> dict:
    d = np.array([r["val_dice"] for r in rows], dtype=np.float64)
    return {"mean_dice": float(d.mean()), "std_dice": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
            "min_dice": float(d.min()), "max_dice": float(d.max())}


TABLE = ("fold", "val_dice", "val_iou", "best_epoch", "train_images", "val_images", "checkpoint")


def write_results(result: dict, out: Path) -> None:
    rows = result["rows"] + ([result["refit"]] if result.get("refit") else [])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(TABLE), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "folds.csv", buf.getvalue())
    atomic_write_json(out / "folds.json", result)
    atomic_write_text(out / "folds.md", markdown(result))
    try:
        plot_folds(result, out / "folds.png")
    except DependencyError:
        log.warning("matplotlib is not installed: folds.png not written (pip install \"edgeseg[plot]\")")


def markdown(result: dict) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    lines = [f"# {result['folds']}-fold cross-validation", "", f"data: `{result['data']}`", "",
             "| fold | val Dice | val IoU | best epoch | train images | val images |", "|---|---|---|---|---|---|"]
    for r in result["rows"] + ([result["refit"]] if result.get("refit") else []):
        lines.append(f"| {r['fold']} | {f(r['val_dice'])} | {f(r['val_iou'])} | {r['best_epoch']} | "
                     f"{r['train_images']} | {r['val_images']} |")
    lines += ["", (f"Validation Dice over the {result['folds']} folds: mean {f(result['mean_dice'])}, standard "
                   f"deviation {f(result['std_dice'])} (sample, ddof=1), range {f(result['min_dice'])} - "
                   f"{f(result['max_dice'])}.")]
    if result.get("refit"):
        lines.append("refit: the same settings on all training images, validated on the val split (or the training "
                     "images when there is none): not a held-out estimate.")
    return "\n".join(lines) + "\n"


def plot_folds(result: dict, path: Path) -> Path:
    from edgeseg.measure.report import require_matplotlib, save_figure

    Figure, Canvas = require_matplotlib()
    fig = Figure(figsize=(10.0, 3.8))
    a, b = fig.subplots(1, 2)
    for r in result["rows"]:
        a.plot(range(1, len(r["history"]) + 1), r["history"], marker=".", label=r["fold"])
    a.set_xlabel("epoch")
    a.set_ylabel("validation Dice (held-out fold)")
    a.legend(fontsize=8)
    names = [r["fold"] for r in result["rows"]]
    b.bar(names, [r["val_dice"] for r in result["rows"]], color="tab:blue", alpha=0.7)
    m, s = result["mean_dice"], result["std_dice"]
    b.axhline(m, color="k", label=f"mean {m:.3f}")
    b.axhspan(m - s, m + s, color="k", alpha=0.12, label=f"+- 1 sd ({s:.3f})")
    b.set_ylabel("best validation Dice")
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{result['folds']}-fold cross-validation", fontsize=10)
    return save_figure(fig, Canvas, path)
