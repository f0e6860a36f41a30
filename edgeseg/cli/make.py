"""Commands that make models: train, prune, distill, compress."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeseg.cli.app import _setup_logging, command
from edgeseg.cli.options import VERBOSE, _classes, _ints
from edgeseg.quantize.targets import target_names

EXIT_OVER_BUDGET = 3  # compress: no model meets every budget (and --accept-over-budget was not given)

LOG = typer.Option(None, "--log", help="Also log each epoch to tensorboard, mlflow (local store) or wandb (offline); "
                   "repeatable. OUT/logs/metrics.csv and curves.png are always written.")


@command
def train(
    data: Path = typer.Argument(..., help="Folder with images/ and masks/ (optionally splits/*.txt)."),
    out: Path = typer.Option(Path("runs/teacher"), "-o", "--out", help="Checkpoint directory to write."),
    variant: str = typer.Option("b0", help="SegFormer variant: b0..b5, or tiny (tests, demos)."),
    config: Optional[Path] = typer.Option(None, help="A SegformerConfig JSON instead of a variant."),
    init: Optional[Path] = typer.Option(None, help="Local HF checkpoint directory to fine-tune."),
    train_split: str = typer.Option("train", help="Split name (DATA/splits/NAME.txt) or file."),
    val_split: str = typer.Option("val", help="Split name or file for validation."),
    classes: Optional[str] = typer.Option(None, help="Comma-separated class names; default binary."),
    size: int = typer.Option(256, help="Square input size in pixels (multiple of 32)."),
    epochs: int = typer.Option(20, help="Training epochs."),
    batch_size: int = typer.Option(8, help="Images per step."),
    lr: float = typer.Option(6e-4, help="Peak learning rate (AdamW)."),
    warmup_steps: int = typer.Option(100, help="Linear warm-up steps before the poly decay."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads."),
    time_budget: Optional[float] = typer.Option(None, help="Stop after the epoch that passes N minutes."),
    seed: int = typer.Option(0, help="Random seed (weights, shuffling, augmentation)."),
    no_augment: bool = typer.Option(False, "--no-augment", help="No flips, rotations or intensity jitter."),
    augment_strength: float = typer.Option(1.0, "--augment-strength", help="Scale of the brightness/contrast "
                                           "jitter, 0..3 (0: flips and rotations only)."),
    dice_weight: float = typer.Option(1.0, "--dice-weight", help="Weight of the soft-Dice loss next to "
                                      "cross-entropy (0: cross-entropy only)."),
    scale_jitter: float = typer.Option(0.0, "--scale-jitter", help="Zoom augmentation: random crops of "
                                       "1 - J .. 1 of each side, resized back; J in [0, 1). Default: 0 (none)."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Stop after N epochs without a better "
                                           "validation Dice. Default: run every epoch."),
    intensity: Optional[str] = typer.Option(None, "--intensity", help="How pixels of any type become the model's "
                                            "8-bit RGB, recorded in the checkpoint and bundle: ct:soft-tissue, "
                                            "ct:lung, ct:bone, ct:brain, window:LEVEL,WIDTH, percentile:LOW,HIGH or "
                                            "minmax:MIN,MAX (default: none; 8-bit and 16-bit images as they are, "
                                            "DICOM/NIfTI/float refused)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT when it holds an earlier training run."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    log: Optional[list[str]] = LOG,
    folds: Optional[int] = typer.Option(None, "--folds", help="K-fold cross-validation over the training images: "
                                        "OUT/fold_1..K, results in OUT/folds.{csv,json,md,png}. Default: none."),
    refit: bool = typer.Option(False, "--refit", help="With --folds: also train the same settings on all "
                               "training images into OUT/refit."),
    verbose: bool = VERBOSE,
):
    """Train or fine-tune a SegFormer; writes a standard HF checkpoint directory.

    A run stopped early (killed, or --time-budget spent) resumes when started again with the same
    options; other options on the same -o are refused, naming what differs. With --folds K: K
    models, each validated on the fold it did not see, and the mean and spread of their Dice.

    Example: edgeseg train data/kvasir -o runs/b0 --variant b0 --size 256 --epochs 40
    """
    _setup_logging(verbose)
    from edgeseg.train.loop import TrainConfig
    from edgeseg.train.loop import train as run_train

    cfg = TrainConfig(
        data=str(data), out=str(out), variant=variant, config_file=str(config) if config else None,
        init=str(init) if init else None, train_split=train_split, val_split=val_split,
        classes=_classes(classes), size=size, epochs=epochs, batch_size=batch_size, lr=lr,
        warmup_steps=warmup_steps, device=device, threads=threads, time_budget_min=time_budget, seed=seed,
        augment=not no_augment, progress=not quiet, log=tuple(log or ()), intensity=intensity,
        augment_strength=augment_strength, dice_weight=dice_weight, scale_jitter=scale_jitter, patience=patience,
    )
    if folds is not None or refit:  # [tracking] k-fold cross-validation (edgeseg/train/folds.py)
        from edgeseg.cli.tune import print_folds

        return print_folds(cfg, folds, refit, overwrite, json_out)
    path = run_train(cfg, overwrite=overwrite)
    from edgeseg.model.checkpoint import read_meta
    from edgeseg.runtime.files import dumps

    metrics = read_meta(path).metrics
    val = metrics.get("val") or {}
    if json_out:
        typer.echo(dumps({"checkpoint": str(path), "val": val, "epoch": metrics.get("epoch")}))
    else:
        def f4(v):  # a score that was undefined (NaN) is stored as null
            return f"{v:.4f}" if isinstance(v, (int, float)) else "n/a"

        typer.echo(f"checkpoint: {path}  (best epoch {metrics.get('epoch')}: val Dice {f4(val.get('mean_dice'))}, "
                   f"IoU {f4(val.get('mean_iou'))}, {val.get('n_images', '?')} images)")

@command
def prune(
    checkpoint: Path = typer.Argument(..., help="HF checkpoint dir to prune (folded first; the input is not changed)."),
    out: Path = typer.Option(..., "-o", "--out", help="Checkpoint dir to write (new, or an earlier checkpoint "
                             "with --overwrite). No default."),
    ratio: float = typer.Option(0.5, "--ratio", help="Fraction of Mix-FFN hidden channels removed in every stage, "
                                "in [0, 1). Default: 0.5."),
    decoder_ratio: Optional[float] = typer.Option(0.75, "--decoder-ratio", help="Fraction of the decode-head width "
                                                  "removed, in [0, 1). Default: 0.75."),
    depths: Optional[str] = typer.Option(None, "--depths", help="Blocks kept per encoder stage, e.g. 1,1,1,1 (the "
                                         "least useful are dropped). Default: keep every block."),
    importance: str = typer.Option("magnitude", "--importance", help="Channel importance: magnitude or taylor "
                                   "(taylor needs --calib). Default: magnitude."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Folder of real images (or a dataset folder with "
                                         "images/) for data-driven steps: taylor importance, depth scores and the "
                                         "re-fit of pruned layers. Default: none (weights only)."),
    calib_split: Optional[str] = typer.Option(None, "--calib-split", help="Split of --calib. Default: all images."),
    calib_count: int = typer.Option(16, "--calib-count", help="How many --calib images. Default: 16."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT when it is an earlier edgeseg checkpoint."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr."),
):
    """Structurally prune a checkpoint (Mix-FFN channels, decoder width, optionally whole blocks).

    Example: edgeseg prune runs/teacher -o runs/pruned --ratio 0.5 --decoder-ratio 0.75 --calib data/kvasir
    """
    _setup_logging(verbose)
    from edgeseg.compress.pipeline import prune_checkpoint
    from edgeseg.outputs import check_output
    from edgeseg.prune import PruneConfig

    cfg = PruneConfig(ratio=ratio, decoder_ratio=decoder_ratio, depths=_ints(depths, "--depths"),
                      importance=importance)
    check_output(out, "checkpoint", inputs=[checkpoint, calib], overwrite=overwrite)
    x = None
    if calib is not None:
        from edgeseg.model.checkpoint import read_meta
        from edgeseg.quantize import load_calibration

        # pruning scores channels and re-fits layers: a few images do (unlike INT8 ranges)
        meta = read_meta(checkpoint)
        x, _ = load_calibration(calib, meta.preprocess, count=calib_count, split=calib_split, allow_few=True,
                                intensity=meta.intensity or None)
    elif importance == "taylor":
        from edgeseg.errors import ConfigError

        raise ConfigError("--importance taylor needs images: pass --calib DIR")
    path, rep = prune_checkpoint(checkpoint, out, cfg, calib=x)
    typer.echo(f"pruned: params {rep['params_before']:,} -> {rep['params_after']:,}, "
               f"MACs {rep['macs_before'] / 1e9:.2f} -> {rep['macs_after'] / 1e9:.2f} G; checkpoint: {path}")

@command
def distill(
    teacher: Path = typer.Argument(..., help="Teacher HF checkpoint dir."),
    student: Path = typer.Argument(..., help="Student checkpoint dir to start from (e.g. `edgeseg prune` output)."),
    out: Path = typer.Option(..., "-o", "--out", help="Checkpoint dir to write (new, or an earlier checkpoint "
                             "with --overwrite). No default."),
    train_dir: Path = typer.Option(..., "--train", help="Labelled folder (images/ + masks/) to distil on. No default."),
    train_split: Optional[str] = typer.Option(None, "--train-split", help="Split of --train to learn from. "
                                              "Default: all images."),
    val_split: Optional[str] = typer.Option(None, "--val-split", help="Split of --train that picks the kept epoch "
                                            "(agreement with the teacher). Default: the training images."),
    epochs: int = typer.Option(10, "--epochs", help="Training epochs. Default: 10."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per step. Default: 8."),
    lr: float = typer.Option(3e-4, "--lr", help="Peak learning rate (AdamW). Default: 3e-4."),
    temperature: float = typer.Option(2.0, "--temperature", help="Softmax temperature of the soft targets. "
                                      "Default: 2.0."),
    alpha: float = typer.Option(0.5, "--alpha", help="Weight of the teacher's soft targets vs the masks, in [0, 1]. "
                                "Default: 0.5."),
    distill_images: Optional[Path] = typer.Option(None, "--distill-images", help="Extra images (masks not needed) "
                                                  "that train the teacher term only. Default: none."),
    patience: Optional[int] = typer.Option(3, "--patience", help="Stop after N epochs without better validation "
                                           "agreement with the teacher (0: never). Default: 3."),
    scale_jitter: float = typer.Option(0.2, "--scale-jitter", help="Zoom augmentation: random crops of 1 - J .. 1 "
                                       "of each side, resized back (the teacher sees the same crop). Default: 0.2."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto. Default: auto."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads. Default: torch's choice."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT when it is an earlier edgeseg checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    log: Optional[list[str]] = LOG,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr."),
):
    """Distil a student checkpoint from a teacher; keeps the epoch that agrees best with the teacher.

    Never ends worse than the student it started from without saying so.

    Example: edgeseg distill runs/teacher runs/pruned -o runs/distilled --train data/kvasir --epochs 10
    """
    _setup_logging(verbose)
    from edgeseg.compress.pipeline import distill_checkpoint
    from edgeseg.distill import DistillConfig
    from edgeseg.model.checkpoint import read_meta
    from edgeseg.outputs import check_output
    from edgeseg.train.loop import TrainConfig

    dcfg = DistillConfig(temperature=temperature, alpha=alpha,
                         extra_images=str(distill_images) if distill_images else None)
    check_output(out, "checkpoint", inputs=[teacher, student, train_dir, distill_images], overwrite=overwrite,
                 resumable=True)
    meta = read_meta(teacher)
    tcfg = TrainConfig(data=str(train_dir), out=str(out), train_split=train_split, val_split=val_split,
                       classes=tuple(meta.classes), size=max(32, meta.preprocess.height // 32 * 32), epochs=epochs,
                       batch_size=batch_size, lr=lr, device=device, progress=not quiet, threads=threads,
                       log=tuple(log or ()), patience=patience, scale_jitter=scale_jitter)
    path = distill_checkpoint(teacher, student, tcfg, dcfg, student_note=student.name, overwrite=overwrite)
    sel = read_meta(path).training.get("selection") or {}
    typer.echo(f"kept the {sel.get('kept')} (agreement with the teacher {sel.get('best_agreement', 0):.4f} at the "
               f"best epoch vs {sel.get('start_agreement', 0):.4f} at the start); checkpoint: {path}")

@command
def compress(
    checkpoint: Optional[Path] = typer.Argument(None, help="Teacher HF checkpoint dir (default: the embedded demo teacher)."),
    out: Path = typer.Option(Path("runs/compressed"), "-o", "--out", help="Output folder (bundle/, report.*, stages/)."),
    calib: Optional[Path] = typer.Option(None, help="Folder of real images for INT8 calibration and pruning."),
    calib_split: Optional[str] = typer.Option(None, help="Split of --calib (default: every image)."),
    calib_count: Optional[int] = typer.Option(None, help="How many calibration images."),
    val: Optional[Path] = typer.Option(None, help="Labelled folder to score every stage on."),
    val_split: Optional[str] = typer.Option(None, help="Split of --val (default: every image)."),
    train: Optional[Path] = typer.Option(None, help="Labelled folder for distillation (default: the teacher's)."),
    train_split: Optional[str] = typer.Option(None, help="Split of --train (default: every image)."),
    recipe: Optional[Path] = typer.Option(None, help="A recipe JSON file; flags given here override it."),
    prune_ratio: Optional[float] = typer.Option(None, help="Fraction of Mix-FFN channels to remove."),
    decoder_ratio: Optional[float] = typer.Option(None, help="Fraction of decode-head width to remove."),
    target_macs: Optional[float] = typer.Option(None, help="Prune until MACs <= this fraction of the folded model."),
    importance: Optional[str] = typer.Option(None, help="magnitude or taylor (data-driven)."),
    depths: Optional[str] = typer.Option(None, help="Blocks kept per stage, e.g. 1,1,1,1 (depth pruning)."),
    distill_epochs: Optional[int] = typer.Option(None, help="Distillation epochs (0 = none)."),
    distill_patience: Optional[int] = typer.Option(None, help="Stop a distillation after N epochs without better "
                                                   "validation agreement with the teacher (0: never). Default: 3."),
    distill_scale_jitter: Optional[float] = typer.Option(None, help="Distillation's zoom augmentation: random crops "
                                                         "of 1 - J .. 1 of each side. Default: 0.2."),
    int8: Optional[bool] = typer.Option(None, "--int8/--no-int8", help="INT8 quantization."),
    target: Optional[str] = typer.Option(None, help=f"INT8 target: {', '.join(target_names())}."),
    calib_method: Optional[str] = typer.Option(None, help="minmax, entropy or percentile."),
    max_dice_drop: Optional[float] = typer.Option(None, help="Budget: mean Dice drop vs the teacher on --val (also "
                                                  "the INT8 guard's). Default: 0.01."),
    max_image_drop: Optional[float] = typer.Option(None, help="Budget: the --image-quantile of the per-image Dice "
                                                   "drop vs the teacher. Default: 0.05."),
    image_quantile: Optional[float] = typer.Option(None, help="Quantile of the per-image budget, in (0, 1]. "
                                                   "Default: 0.95."),
    min_agreement: Optional[float] = typer.Option(None, help="Budget: mean Dice between the model's and the "
                                                  "teacher's masks. Default: 0.95."),
    max_lost_lesions: Optional[int] = typer.Option(None, help="Budget: teacher's lesions (connected components) the "
                                                   "model no longer touches. Default: 0."),
    min_lesion_px: Optional[int] = typer.Option(None, help="What counts as a lesion for --max-lost-lesions: at least "
                                                "this many pixels at the model's input resolution. Default: 9."),
    accept_over_budget: bool = typer.Option(False, "--accept-over-budget", help="When no model meets every budget, "
                                            "still write the closest one's bundle, marked over budget."),
    search: Optional[bool] = typer.Option(None, "--search/--no-search", help="Search candidates from gentle to "
                                          "aggressive for the fastest within budget. Default: on, off when a "
                                          "pruning option is given (that one recipe runs)."),
    time_budget: Optional[float] = typer.Option(None, help="Minutes the search may take (estimate printed first). "
                                                "Default: 60."),
    runtime: Optional[str] = typer.Option(None, help="What exported models are timed with: onnxruntime, openvino, or "
                                          "auto (both timed side by side, the winner kept and recorded in the "
                                          "bundle). Default: onnxruntime."),
    distill_images: Optional[Path] = typer.Option(None, help="Extra images (no masks needed) for distillation's "
                                                  "teacher term. Default: none."),
    device: Optional[str] = typer.Option(None, help="Distillation device: cpu, cuda, auto."),
    threads: Optional[int] = typer.Option(None, help="Threads for timing and training."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT when it holds an earlier compress "
                                   "output (the old one stays until the new run is complete)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars (stage lines stay)."),
    log: Optional[list[str]] = LOG,
    verbose: bool = VERBOSE,
):
    """Fold, prune, distill, export, quantize and bundle a SegFormer, with a per-stage report.

    With no CHECKPOINT: the embedded demo teacher on the embedded images. A run resumes its
    finished stages when started again with the same options; other options are refused, naming
    what differs (or pass --overwrite to start again).

    Budgets (measured on --val): mean Dice drop, a per-image quantile of the drop, agreement
    with the teacher's masks, lost lesions. The bundle is written only for a model meeting every
    budget; otherwise the command exits 3 with one line per missed budget and writes no bundle
    (the stages stay for a rerun), unless --accept-over-budget (bundle marked over budget).

    Example: edgeseg compress runs/b0 --calib data/kvasir --calib-split calibration --val data/kvasir
    --val-split val --train data/kvasir --train-split train --time-budget 60 -o runs/compressed
    """
    _setup_logging(verbose)
    from edgeseg.compress.pipeline import Compressor, Recipe, default_job

    given = dict(calib=calib, calib_split=calib_split, calib_count=calib_count, val=val, val_split=val_split,
                 train=train, train_split=train_split, prune_ratio=prune_ratio, decoder_ratio=decoder_ratio,
                 target_macs=target_macs, importance=importance, depths=_ints(depths, "--depths"),
                 distill_epochs=distill_epochs, distill_patience=distill_patience,
                 distill_scale_jitter=distill_scale_jitter, int8=int8,
                 target=target, calib_method=calib_method, max_dice_drop=max_dice_drop, device=device,
                 threads=threads, max_image_drop=max_image_drop, image_quantile=image_quantile,
                 min_agreement=min_agreement, max_lost_lesions=max_lost_lesions,
                 min_lesion_px=min_lesion_px, search=search,
                 time_budget=time_budget, runtime=runtime, distill_images=distill_images)
    given = {k: (str(v) if isinstance(v, Path) else v) for k, v in given.items() if v is not None}
    if given.get("int8") is False:  # [conflicts] INT8-only options with --no-int8 would be silently ignored
        from edgeseg.errors import ConfigError

        other = [f"--{k.replace('_', '-')}" for k in ("target", "calib_method") if k in given]
        if other:
            raise ConfigError(f"--no-int8 conflicts with {', '.join(other)}, which only applies to INT8 quantization")
    if checkpoint is None:
        checkpoint, defaults = default_job()
        given = {**defaults, **given}
        typer.echo(f"no checkpoint given: compressing the embedded demo teacher {checkpoint}", err=True)
    pruning = [k for k in ("prune_ratio", "decoder_ratio", "target_macs", "depths") if k in given]
    if pruning and given.get("search"):
        from edgeseg.errors import ConfigError

        raise ConfigError(f"--search conflicts with {', '.join('--' + k.replace('_', '-') for k in pruning)}: the "
                          "search chooses the pruning itself (pass --no-search to run that one recipe)")
    if pruning and "search" not in given:
        given["search"] = False  # pruning options name one recipe
    rec = Recipe.from_file(recipe, **given) if recipe else Recipe(**given)
    report = Compressor(checkpoint, out, rec, progress=not quiet, overwrite=overwrite,
                        accept_over_budget=accept_over_budget, log=tuple(log or ())).run()
    from edgeseg.compress.report import budget_lines, terminal_table

    typer.echo(terminal_table(report))
    typer.echo(f"bundle: {report['bundle'] or 'none (over budget)'}\nreport: {out / 'report.md'}")
    if not report["budgets"]["met"]:
        for line in budget_lines(report):
            typer.echo(("warning: " if report["budgets"]["accepted_over_budget"] else "error: ") + line, err=True)
        if not report["budgets"]["accepted_over_budget"]:
            raise typer.Exit(EXIT_OVER_BUDGET)
