"""Hyperparameter search over short training runs (``edgeseg tune``), with Optuna.

Each trial trains with the base settings plus one sampled point of :data:`SPACE` (peak learning
rate, batch size, augmentation strength, Dice-loss weight) into ``OUT/trials/trial_N`` and scores
its best validation Dice (the val split, exactly as ``edgeseg train`` validates; the training
images when the data has no val split, which the results then say). The sampler is TPE (Optuna's
default) or random, seeded.

The study lives in ``OUT/study.db`` (Optuna's RDB storage on SQLite, ``load_if_exists``): the same
command started again continues it, and ``--trials`` counts the study's finished trials, so a
second call with a larger ``--trials`` runs only the difference. A trial that a killed run left
"running" is marked failed when the study is resumed. ``--time-budget`` (minutes) starts no new
trial once that much time has passed in this call (the trial in flight finishes).

Writes ``OUT/trials.{csv,md}`` (every trial: number, state, Dice, settings, seconds),
``OUT/history.png`` (each trial's Dice and the best so far) and ``OUT/best.json`` (the best
settings, its Dice and checkpoint, and the ``edgeseg train`` options that reproduce it).
Optuna is in the ``track`` extra: missing, one line naming it.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from edgeseg.errors import ConfigError, DependencyError
from edgeseg.outputs import check_output, mark
from edgeseg.runtime.files import atomic_write_json, atomic_write_text, read_json
from edgeseg.train import resume as R

log = logging.getLogger(__name__)

KIND = "tune"
# the search space: name -> (low, high, log scale), or a tuple of choices under CHOICES
RANGES = {"lr": (1e-4, 3e-3, True), "augment_strength": (0.0, 1.5, False), "dice_weight": (0.0, 2.0, False)}
CHOICES = {"batch_size": (4, 8, 16)}
SPACE = ("lr", "batch_size", "augment_strength", "dice_weight")
SAMPLERS = ("tpe", "random")


@dataclass(frozen=True)
class TuneConfig:
    base: object  # edgeseg.train.loop.TrainConfig: data, out (the study folder), epochs per trial ...
    trials: int | None = 10  # finished trials the study should hold
    time_budget_min: float | None = None
    sampler: str = "tpe"

    def __post_init__(self) -> None:
        if self.trials is None and self.time_budget_min is None:
            raise ConfigError("give --trials, --time-budget or both: the search needs a budget")
        if self.trials is not None and self.trials < 1:
            raise ConfigError(f"--trials must be at least 1, got {self.trials}")
        if self.time_budget_min is not None and not (self.time_budget_min > 0 and math.isfinite(self.time_budget_min)):
            raise ConfigError(f"--time-budget must be a positive number of minutes, got {self.time_budget_min}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise DependencyError('edgeseg tune needs optuna, which is not installed: pip install "edgeseg[track]"') from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _settings(cfg: TuneConfig) -> dict:
    return {"sampler": cfg.sampler, **R.settings_of(cfg.base)}


def _open_study(optuna, cfg: TuneConfig, overwrite: bool):
    out = Path(cfg.base.out)
    mode = check_output(out, KIND, inputs=[cfg.base.data, cfg.base.init, cfg.base.config_file], overwrite=overwrite,
                        resumable=True)
    if mode == "resume":
        diff = R.differences(read_json(out / "tune_settings.json", error=ConfigError), _settings(cfg))
        if diff:
            raise ConfigError(f"-o {out} holds a study with other settings ({'; '.join(diff)}); run again with its "
                              "settings to continue it, --overwrite to start again, or choose a new -o")
    elif mode == "replace":
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    mark(out, KIND, data=str(Path(cfg.base.data).resolve()))
    atomic_write_json(out / "tune_settings.json", _settings(cfg))
    storage = optuna.storages.RDBStorage(f"sqlite:///{(out / 'study.db').resolve()}")
    study = optuna.create_study(study_name="edgeseg-tune", storage=storage, direction="maximize",
                                load_if_exists=True)
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in stale:  # left by a killed run: it will never report
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    if stale:
        log.warning("marked %d trial(s) that a stopped run left unfinished as failed", len(stale))
    seed = cfg.base.seed + len(study.trials)  # a resumed study does not re-draw the points it has tried
    sampler = (optuna.samplers.TPESampler(seed=seed) if cfg.sampler == "tpe"
               else optuna.samplers.RandomSampler(seed=seed))
    return optuna.load_study(study_name="edgeseg-tune", storage=storage, sampler=sampler)


def suggest(trial) -> dict:
    p = {}
    for name in SPACE:
        if name in CHOICES:
            p[name] = trial.suggest_categorical(name, list(CHOICES[name]))
        else:
            lo, hi, log_scale = RANGES[name]
            p[name] = trial.suggest_float(name, lo, hi, log=log_scale)
    return p


def run_tune(cfg: TuneConfig, overwrite: bool = False) -> dict:
    """Run (or continue) the study in ``cfg.base.out``; returns the results (also written)."""
    from edgeseg.train.loop import train

    optuna = require_optuna()
    from edgeseg.data import folders as D

    D.discover(cfg.base.data, cfg.base.train_split if D.has_split(cfg.base.data, cfg.base.train_split) else None)
    study = _open_study(optuna, cfg, overwrite)
    out = Path(cfg.base.out)

    def objective(trial) -> float:
        params = suggest(trial)
        run = out / "trials" / f"trial_{trial.number}"
        t0 = time.time()
        train(replace(cfg.base, out=str(run), **params), overwrite=run.exists())
        meta = read_json(run / "edgeseg_checkpoint.json", error=ConfigError)
        trial.set_user_attr("checkpoint", str(run.relative_to(out)))
        trial.set_user_attr("best_epoch", (meta.get("training") or {}).get("best_epoch"))
        trial.set_user_attr("seconds", round(time.time() - t0, 1))
        dice = ((meta.get("metrics") or {}).get("val") or {}).get("mean_dice")
        if dice is None:
            raise ConfigError(f"trial {trial.number}: no validation Dice recorded in {run}")
        return float(dice)

    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    todo = None if cfg.trials is None else max(cfg.trials - done, 0)
    if todo == 0:
        log.warning("the study already holds %d finished trials (--trials %d): nothing to run", done, cfg.trials)
    else:
        study.optimize(objective, n_trials=todo, timeout=cfg.time_budget_min * 60 if cfg.time_budget_min else None)
    return write_results(study, cfg, out)


def _rows(study) -> list[dict]:
    rows = []
    for t in study.trials:
        rows.append({"trial": t.number, "state": t.state.name.lower(), "val_dice": t.value, **t.params,
                     "best_epoch": t.user_attrs.get("best_epoch"), "seconds": t.user_attrs.get("seconds"),
                     "checkpoint": t.user_attrs.get("checkpoint")})
    return rows


COLUMNS = ("trial", "state", "val_dice", *SPACE, "best_epoch", "seconds", "checkpoint")


def write_results(study, cfg: TuneConfig, out: Path) -> dict:
    rows = _rows(study)
    done = [r for r in rows if r["state"] == "complete"]
    best = max(done, key=lambda r: r["val_dice"]) if done else None
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "trials.csv", buf.getvalue())
    val_note = ("the val split" if cfg.base.val_split and _has_val(cfg.base) else
                "the training images (the data has no val split: optimistic)")
    result = {"study": str(out / "study.db"), "sampler": cfg.sampler, "trials": len(rows), "complete": len(done),
              "epochs_per_trial": cfg.base.epochs, "validated_on": val_note, "space": _space_doc(), "best": None}
    if best is not None:
        params = {k: best[k] for k in SPACE}
        flags = " ".join(f"--{k.replace('_', '-')} {params[k]:.6g}" for k in SPACE)
        result["best"] = {"trial": best["trial"], "val_dice": best["val_dice"], "params": params,
                          "checkpoint": best["checkpoint"], "train_options": f"{flags} --epochs {cfg.base.epochs}"}
        atomic_write_json(out / "best.json", result["best"])
    atomic_write_text(out / "trials.md", _markdown(rows, result))
    try:
        plot_history(rows, out / "history.png")
    except DependencyError:
        log.warning('matplotlib is not installed: history.png not written (pip install "edgeseg[plot]")')
    atomic_write_json(out / "tune.json", {**result, "rows": rows})
    return {**result, "rows": rows}


def _has_val(base) -> bool:
    from edgeseg.data import folders as D

    return D.has_split(base.data, base.val_split)


def _space_doc() -> dict:
    return {k: list(CHOICES[k]) if k in CHOICES else dict(zip(("low", "high", "log"), RANGES[k])) for k in SPACE}


def _markdown(rows: list[dict], result: dict) -> str:
    def f(v):
        return "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    lines = [f"# edgeseg tune: {result['complete']} finished trial(s) of {result['trials']} ({result['sampler']})",
             "", f"{result['epochs_per_trial']} epoch(s) per trial; validation Dice on {result['validated_on']}.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(f(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    if result["best"]:
        b = result["best"]
        lines += ["", f"Best: trial {b['trial']}, val Dice {b['val_dice']:.4f}, {b['params']}"]
    return "\n".join(lines) + "\n"


def plot_history(rows: list[dict], path: Path) -> Path:
    """Optimisation history: each finished trial's validation Dice and the best so far."""
    from edgeseg.measure.report import require_matplotlib, save_figure

    Figure, Canvas = require_matplotlib()
    done = [r for r in rows if r["state"] == "complete"]
    fig = Figure(figsize=(6.5, 4.0))
    ax = fig.add_subplot()
    xs = [r["trial"] for r in done]
    ys = [r["val_dice"] for r in done]
    ax.scatter(xs, ys, label="trial", zorder=3)
    best, run = [], float("-inf")
    for y in ys:
        run = max(run, y)
        best.append(run)
    ax.step(xs, best, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation Dice of the trial")
    ax.set_title("optimisation history", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, Canvas, path)
