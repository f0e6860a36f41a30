"""``edgeseg tune`` (hyperparameter search, edgeseg.train.tune) and the output of
``edgeseg train --folds K`` (cross-validation, edgeseg.train.folds)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeseg.cli.app import _setup_logging, command
from edgeseg.cli.options import VERBOSE, _classes


def _f(v, fmt: str = ".4f") -> str:
    return "n/a" if v is None else format(v, fmt)


def print_folds(cfg, k: Optional[int], refit: bool, overwrite: bool, json_out: bool) -> None:
    """Run ``train --folds K [--refit]`` and print its table (or JSON)."""
    from edgeseg.errors import ConfigError
    from edgeseg.runtime.files import dumps
    from edgeseg.train.folds import run_folds

    if k is None:
        raise ConfigError("--refit needs --folds K: it refits the cross-validated settings on all training images")
    res = run_folds(cfg, k, refit=refit, overwrite=overwrite)
    if json_out:
        typer.echo(dumps({k_: v for k_, v in res.items()}))
        return
    typer.echo(f"{'fold':<8} {'val Dice':>9} {'val IoU':>9} {'epoch':>6} {'train':>6} {'val':>5}")
    for r in res["rows"] + ([res["refit"]] if res.get("refit") else []):
        typer.echo(f"{r['fold']:<8} {_f(r['val_dice']):>9} {_f(r['val_iou']):>9} {str(r['best_epoch']):>6} "
                   f"{r['train_images']:>6} {str(r['val_images']):>5}")
    typer.echo(f"{k}-fold validation Dice: mean {_f(res['mean_dice'])}, sd {_f(res['std_dice'])} "
               f"(range {_f(res['min_dice'])} - {_f(res['max_dice'])}); results: {Path(cfg.out) / 'folds.md'}")


@command
def tune(
    data: Path = typer.Argument(..., help="Folder with images/ and masks/ (optionally splits/*.txt)."),
    out: Path = typer.Option(..., "-o", "--out", help="Study folder (study.db, trials/, trials.csv, best.json): new, "
                             "or an earlier study to continue. No default."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Finished trials the study should hold (a resumed "
                                         "study runs the difference). Default: 10 when --time-budget is not given."),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="Minutes after which no new trial starts "
                                                "(the one in flight finishes). Default: none."),
    sampler: str = typer.Option("tpe", "--sampler", help="tpe or random. Default: tpe."),
    epochs: int = typer.Option(5, "--epochs", help="Training epochs per trial. Default: 5."),
    variant: str = typer.Option("b0", "--variant", help="SegFormer variant: b0..b5, or tiny. Default: b0."),
    init: Optional[Path] = typer.Option(None, "--init", help="Local HF checkpoint each trial fine-tunes. "
                                       "Default: none (random weights)."),
    train_split: str = typer.Option("train", "--train-split", help="Split trained on. Default: train."),
    val_split: str = typer.Option("val", "--val-split", help="Split that scores each trial. Default: val."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Comma-separated class names. Default: binary."),
    size: int = typer.Option(256, "--size", help="Square input size (multiple of 32). Default: 256."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto. Default: auto."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads. Default: torch's choice."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampler and of every trial's training. Default: 0."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start the study in OUT again from nothing."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    verbose: bool = VERBOSE,
):
    """Search learning rate, batch size, augmentation strength and Dice-loss weight (Optuna).

    Each trial is a short training run scored by its best validation Dice; the study is kept in
    OUT/study.db, so the same command started again (or with a larger --trials) continues it.

    Example: edgeseg tune data/kvasir -o runs/tune --trials 20 --time-budget 120 --epochs 5 --variant b0
    """
    _setup_logging(verbose)
    from edgeseg.runtime.files import dumps
    from edgeseg.train.loop import TrainConfig
    from edgeseg.train.tune import SPACE, TuneConfig, run_tune

    base = TrainConfig(data=str(data), out=str(out), variant=variant, init=str(init) if init else None,
                       train_split=train_split, val_split=val_split, classes=_classes(classes), size=size,
                       epochs=epochs, device=device, threads=threads, seed=seed, progress=not quiet)
    cfg = TuneConfig(base=base, trials=trials if trials is not None or time_budget is not None else 10,
                     time_budget_min=time_budget, sampler=sampler)
    res = run_tune(cfg, overwrite=overwrite)
    if json_out:
        typer.echo(dumps(res))
        return
    typer.echo(f"{'trial':>5} {'state':<9} {'val Dice':>9}  " + "  ".join(f"{k:>16}" for k in SPACE))
    for r in res["rows"]:
        typer.echo(f"{r['trial']:>5} {r['state']:<9} {_f(r['val_dice']):>9}  "
                   + "  ".join(f"{_f(r.get(k), '.4g'):>16}" for k in SPACE))
    b = res["best"]
    if b:
        typer.echo(f"best: trial {b['trial']}, val Dice {_f(b['val_dice'])} ({res['validated_on']}); "
                   f"edgeseg train {data} {b['train_options']}")
    typer.echo(f"{res['complete']} finished trial(s); results: {out / 'trials.md'}, {out / 'best.json'}, "
               f"{out / 'history.png'}")
