"""Tracked runs: every training run (``train``, ``distill``, the distillation inside ``compress``)
writes its per-epoch record to ``OUT/logs/`` and, when asked (``--log``), to TensorBoard,
MLflow or Weights & Biases, never needing a network.

Always: ``OUT/logs/metrics.csv`` (one row per epoch, :data:`COLUMNS`) and, with matplotlib
(``pip install "edgeseg[plot]"``), ``OUT/logs/curves.png``; without it the CSV alone and one
warning line saying so. Both are re-rendered from the run's whole history after every epoch,
so a resumed run's files hold each epoch exactly once.

The validation columns score argmax masks at each image's original size with the numpy
metrics of :mod:`edgeseg.runtime.metrics`: ``val_dice``, ``val_iou``, ``val_precision`` and
``val_recall`` are means over images (``val_dice`` is what picks the kept epoch);
``val_f1`` is the pixel-pooled F1 (2TP / (2TP + FP + FN) from the confusion counts summed over
the validation set, macro-averaged over classes for multi-class). ``epoch_s`` is the
epoch's wall time (training and validation), ``elapsed_s`` the run's total.

On request (:data:`BACKENDS`, checked before any work: an unknown name or a missing package
is one line naming what to install):

- ``tensorboard`` (extra ``track``): ``OUT/logs/tensorboard/``, rewritten whole after every
  epoch (one event file, each epoch once), through ``torch.utils.tensorboard``.
- ``mlflow``: a local file store ``OUT/logs/mlruns/`` (no tracking server).
- ``wandb``: offline mode (``WANDB_MODE=offline``) in ``OUT/logs/wandb/``; ``wandb sync`` uploads
  it later if wanted.

MLflow and W&B receive the whole history once, when the run ends or stops at its time
budget (their stores keep files open and write in the background, and the checkpoint folder
is replaced atomically at every new best epoch). A killed run is in the CSV and TensorBoard,
not in them.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from importlib.util import find_spec
from pathlib import Path

from edgeseg.errors import ConfigError, DependencyError
from edgeseg.runtime.files import atomic_dir, atomic_write_text

log = logging.getLogger(__name__)

LOG_DIR = "logs"
CSV_FILE = "metrics.csv"
PNG_FILE = "curves.png"
COLUMNS = ("epoch", "train_loss", "val_dice", "val_iou", "val_precision", "val_recall", "val_f1", "lr",
           "epoch_s", "elapsed_s")
# --log NAME -> (the module it needs, how to install it)
BACKENDS = {
    "tensorboard": ("tensorboard", 'pip install "edgeseg[track]"'),
    "mlflow": ("mlflow", "pip install mlflow"),
    "wandb": ("wandb", "pip install wandb"),
}


def check_backends(names) -> tuple[str, ...]:
    """The ``--log`` names as a tuple, each known and importable; one ConfigError /
    DependencyError line otherwise. Imports nothing."""
    names = tuple(dict.fromkeys(names or ()))
    for n in names:
        if n not in BACKENDS:
            raise ConfigError(f"unknown --log {n!r}; choose from {', '.join(BACKENDS)}")
        module, install = BACKENDS[n]
        if find_spec(module) is None:
            raise DependencyError(f"--log {n} needs the {module} package, which is not installed: {install}")
    return names


def epoch_record(epoch: int, train_loss: float, summary: dict, lr: float, epoch_s: float, elapsed_s: float) -> dict:
    """One row of the run's history from the validation summary of
    :meth:`edgeseg.runtime.metrics.MetricAccumulator.summary`."""
    return {"epoch": epoch, "train_loss": float(train_loss), "val_dice": summary["mean_dice"],
            "val_iou": summary["mean_iou"], "val_precision": summary.get("mean_precision"),
            "val_recall": summary.get("mean_recall"), "val_f1": summary.get("pooled_dice"), "lr": float(lr),
            "epoch_s": round(epoch_s, 2), "elapsed_s": round(elapsed_s, 1)}


def history_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for rec in history:
        w.writerow({k: rec.get(k) for k in COLUMNS})
    return buf.getvalue()


def plot_history(history: list[dict], path: Path, title: str = "") -> Path:
    """Loss, validation scores and learning rate against the epoch, as one PNG."""
    from edgeseg.measure.report import require_matplotlib, save_figure

    Figure, Canvas = require_matplotlib()
    ep = [h["epoch"] for h in history]
    fig = Figure(figsize=(12.0, 3.6))
    axes = fig.subplots(1, 3)

    def series(key):
        return [h.get(key) if h.get(key) is not None else float("nan") for h in history]

    axes[0].plot(ep, series("train_loss"), marker="o")
    axes[0].set_title("training loss", fontsize=10)
    for key in ("val_dice", "val_iou", "val_precision", "val_recall", "val_f1"):
        axes[1].plot(ep, series(key), marker=".", label=key[4:])
    axes[1].set_title("validation", fontsize=10)
    axes[1].legend(fontsize=8)
    axes[2].plot(ep, series("lr"), marker=".")
    axes[2].set_title("learning rate (end of epoch)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, Canvas, Path(path))


def write_tensorboard(history: list[dict], folder: Path) -> Path:
    """The whole history as one TensorBoard event file in ``folder`` (replaced atomically)."""
    from torch.utils.tensorboard import SummaryWriter

    with atomic_dir(folder) as tmp:
        w = SummaryWriter(log_dir=str(tmp), flush_secs=10**6)
        try:
            for rec in history:
                for key in COLUMNS[1:]:
                    if isinstance(rec.get(key), (int, float)):
                        w.add_scalar(_tag(key), rec[key], global_step=rec["epoch"])
        finally:
            w.close()
    return folder


def _tag(key: str) -> str:
    return key.replace("val_", "val/") if key.startswith("val_") else f"train/{key}"


class RunLog:
    """Writes a run's history to ``out/logs`` (and the ``--log`` backends); see the module doc.

    The training loop calls :meth:`update` after each epoch's checkpoint and resume state are
    saved (``out`` exists by then), and :meth:`finish` when the run ends."""

    def __init__(self, out: str | Path, backends=(), name: str = "", params: dict | None = None) -> None:
        self.out = Path(out)
        self.backends = check_backends(backends)
        self.name = name or self.out.name
        self.params = params or {}
        self._warned = False

    @property
    def folder(self) -> Path:
        return self.out / LOG_DIR

    def update(self, history: list[dict]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder / CSV_FILE, history_csv(history))
        try:
            plot_history(history, self.folder / PNG_FILE, self.name)
        except DependencyError:
            if not self._warned:
                log.warning("matplotlib is not installed: training curves written as %s only, no %s "
                            '(pip install "edgeseg[plot]")', CSV_FILE, PNG_FILE)
                self._warned = True
        if "tensorboard" in self.backends:
            write_tensorboard(history, self.folder / "tensorboard")

    def finish(self, history: list[dict]) -> None:
        if not history:
            return
        if "mlflow" in self.backends:
            self._mlflow(history)
        if "wandb" in self.backends:
            self._wandb(history)

    def _mlflow(self, history: list[dict]) -> None:  # pragma: no cover - mlflow is not in the dev venv
        import mlflow

        mlflow.set_tracking_uri((self.folder / "mlruns").resolve().as_uri())
        mlflow.set_experiment("edgeseg")
        with mlflow.start_run(run_name=self.name):
            mlflow.log_params({k: str(v)[:250] for k, v in self.params.items()})
            for rec in history:
                mlflow.log_metrics({k: float(rec[k]) for k in COLUMNS[1:] if isinstance(rec.get(k), (int, float))},
                                   step=int(rec["epoch"]))

    def _wandb(self, history: list[dict]) -> None:  # pragma: no cover - wandb is not in the dev venv
        os.environ["WANDB_MODE"] = "offline"
        import wandb

        (self.folder / "wandb").mkdir(parents=True, exist_ok=True)
        run = wandb.init(project="edgeseg", name=self.name, dir=str(self.folder / "wandb"), mode="offline",
                         config=self.params)
        try:
            for rec in history:
                run.log({k: rec[k] for k in COLUMNS[1:] if isinstance(rec.get(k), (int, float))},
                        step=int(rec["epoch"]))
        finally:
            run.finish()
