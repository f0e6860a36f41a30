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
- ``mlflow`` (extra ``mlflow``): one run of experiment ``edgeseg`` in the local file store
  ``OUT/logs/mlruns/`` (no tracking server, telemetry off). MLflow 3 only opens a file store with
  ``MLFLOW_ALLOW_FILE_STORE=true``, which edgeseg sets for itself; set it to read the store back,
  e.g. ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri OUT/logs/mlruns``.
- ``wandb`` (extra ``wandb``): one offline run (no API key, no login, no network) in
  ``OUT/logs/wandb/offline-run-*/``; ``wandb sync`` uploads it later if wanted. A wandb service
  that does not start within :data:`WANDB_INIT_TIMEOUT_S` is an error, not a hang.

MLflow and W&B receive the whole history once (metric step = epoch, the run's settings as
params / config), when the run ends or stops at its time budget (their stores keep files open
and write in the background, and the checkpoint folder is replaced atomically at every new
best epoch). A killed run is in the CSV and TensorBoard, not in them; a run stopped at its time
budget and resumed leaves two MLflow / W&B runs, the second holding the whole history.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
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
    "mlflow": ("mlflow", 'pip install "edgeseg[mlflow]"'),
    "wandb": ("wandb", 'pip install "edgeseg[wandb]"'),
}
EXPERIMENT = "edgeseg"  # the MLflow experiment / W&B project name
# MLflow 3 refuses a file store unless allowed (it would have us run a database); its usage
# telemetry is sent from a background thread unless disabled.
MLFLOW_ENV = {"MLFLOW_ALLOW_FILE_STORE": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}
# offline mode needs no API key and never prompts; no Sentry error reports from wandb-core
WANDB_ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_ERROR_REPORTING": "false"}
WANDB_INIT_TIMEOUT_S = 60.0  # a wandb service that does not start is an error after this, not a hang


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
        """Writes the whole history to MLflow / W&B; a backend that fails is one DependencyError
        line (after the others were tried), the model and the CSV being saved already."""
        if not history:
            return
        failed = []
        for name, write in (("mlflow", self._mlflow), ("wandb", self._wandb)):
            if name in self.backends:
                try:
                    write(history)
                except Exception as exc:  # noqa: BLE001 - the backend's own errors, whatever their class
                    failed.append((name, exc))
        if failed:
            said = "; ".join(f"--log {n}: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
                             for n, e in failed)
            raise DependencyError(f"{said} (the model and {LOG_DIR}/{CSV_FILE} are saved in {self.out})") from failed[0][1]

    def _mlflow(self, history: list[dict]) -> None:
        """One run in the local file store ``mlruns/`` (experiment :data:`EXPERIMENT`): the
        params, and each metric once per epoch (step = epoch)."""
        _offline_env(MLFLOW_ENV)
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param

        client = MlflowClient(tracking_uri=(self.folder / "mlruns").resolve().as_uri())
        exp = client.get_experiment_by_name(EXPERIMENT)
        run_id = client.create_run(exp.experiment_id if exp else client.create_experiment(EXPERIMENT),
                                   run_name=self.name).info.run_id
        t_end, last = time.time(), history[-1].get("elapsed_s") or 0.0
        params = [Param(k, str(v)[:500]) for k, v in self.params.items()]
        metrics = [Metric(k, float(v), int((t_end - last + (rec.get("elapsed_s") or last)) * 1000), int(rec["epoch"]))
                   for rec in history for k, v in _scalars(rec).items()]
        try:
            for i in range(0, max(len(params), len(metrics)), 100):  # log_batch takes <= 100 params, 1000 metrics
                client.log_batch(run_id, metrics=metrics[i:i + 100], params=params[i:i + 100])
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")

    def _wandb(self, history: list[dict]) -> None:
        """One offline run in ``wandb/offline-run-*/`` (``wandb sync`` uploads it): the params as
        its config, each epoch one history row (step = epoch)."""
        _offline_env(WANDB_ENV)
        import wandb

        settings = wandb.Settings(mode="offline", silent=True, console="off", disable_git=True,
                                  init_timeout=WANDB_INIT_TIMEOUT_S)
        run = wandb.init(project=EXPERIMENT, name=self.name, dir=str(self.folder), config=self.params,
                         settings=settings)
        try:
            for rec in history:
                run.log(_scalars(rec), step=int(rec["epoch"]))
        finally:
            run.finish()


def _scalars(rec: dict) -> dict:
    """The numeric columns of one history row (a metric that was not computed is left out)."""
    return {k: rec[k] for k in COLUMNS[1:] if isinstance(rec.get(k), (int, float))}


def _offline_env(env: dict) -> None:
    """Sets (for this process, before the package is imported) the variables that keep a
    backend local: no telemetry, no error reporting, no login."""
    os.environ.update(env)
