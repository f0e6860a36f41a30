"""The ``edgeseg`` command line: parse, build a config, call one library function, print.

Results go to stdout; logs and progress bars to stderr. Every ``EdgesegError`` becomes one
line ``error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
from pathlib import Path
from typing import List, Optional

import typer

from edgeseg.checks import check_options
from edgeseg.quantize.targets import target_names
from edgeseg.runtime.errors import EdgesegError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Make trained SegFormer segmentation models small, fast and verified for edge devices.",
)

EXIT_BAD_INPUT = 2


def _version(value: bool) -> None:
    if value:
        from edgeseg import __version__

        typer.echo(f"edgeseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print edgeseg's version and exit.")) -> None:
    """edgeseg: compress, export, verify and benchmark SegFormer segmentation models.

    Start with `edgeseg compress` (no arguments: the embedded demo teacher), or
    `edgeseg COMMAND --help` for a command's options and an example.
    """


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)  # library warnings become one log line each; none is silenced globally


def command(fn):
    """Register a command whose bad-input errors print as one line and exit non-zero."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            check_options(fn.__name__, kwargs)  # NaN, inf, out of range: refused by name before any work
            return fn(*args, **kwargs)
        except EdgesegError as exc:
            msg = " ".join(str(exc).split())
            typer.echo(f"error: {msg}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt:
            typer.echo("error: interrupted", err=True)
            raise typer.Exit(130) from None
        except MemoryError:
            typer.echo("error: out of memory (input too large?)", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except OSError as exc:  # a full disk or read-only file system met outside edgeseg's own writers
            from edgeseg.runtime.files import WRITE_ERRNOS

            if exc.errno not in WRITE_ERRNOS:
                raise
            typer.echo(f"error: cannot write {exc.filename or 'the output'}: {exc.strerror}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None

    return app.command()(wrapper)


def _classes(value: Optional[str]) -> tuple[str, ...]:
    from edgeseg.errors import ConfigError

    if value is None:
        return ("background", "foreground")
    names = tuple(c.strip() for c in value.split(",") if c.strip())
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"--classes needs at least two distinct comma-separated names, got {value!r}")
    return names


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
    epochs: int = typer.Option(20),
    batch_size: int = typer.Option(8),
    lr: float = typer.Option(6e-4),
    warmup_steps: int = typer.Option(100),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads."),
    time_budget: Optional[float] = typer.Option(None, help="Stop after the epoch that passes N minutes."),
    seed: int = typer.Option(0),
    no_augment: bool = typer.Option(False, "--no-augment"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT when it holds an earlier training run."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log details to stderr."),
):
    """Train or fine-tune a SegFormer; writes a standard HF checkpoint directory.

    A run stopped early (killed, or --time-budget spent) resumes when started again with the same
    options; other options on the same -o are refused, naming what differs.

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
        augment=not no_augment, progress=not quiet,
    )
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


def _spacing(value: Optional[str]):
    from edgeseg.errors import ConfigError

    if value is None:
        return None
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError:
        raise ConfigError(f"--spacing needs 'sy,sx' in physical units per pixel, got {value!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(math.isfinite(p) and p > 0 for p in parts):  # NaN > 0 is False too
        raise ConfigError(f"--spacing needs two positive finite numbers 'sy,sx', got {value!r}")
    return tuple(parts)


def _ints(value: Optional[str], flag: str):
    from edgeseg.errors import ConfigError

    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise ConfigError(f"{flag} needs comma-separated integers, got {value!r}") from None


def _providers(value: Optional[str]):
    return [p.strip() for p in value.split(",") if p.strip()] if value else None


@command
def evaluate(
    model: Path = typer.Argument(..., help="HF checkpoint dir, bundle dir, .onnx or .engine."),
    data: Path = typer.Argument(..., help="Labelled folder (images/ + masks/)."),
    split: Optional[str] = typer.Option(None, help="Split name (DATA/splits/NAME.txt) or file."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the summary as JSON."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write per-image metrics as CSV."),
    spacing: Optional[str] = typer.Option(None, help="Pixel spacing 'sy,sx' for HD95 in physical units."),
    providers: Optional[str] = typer.Option(None, help="ONNX Runtime providers, e.g. cpu or cuda,cpu."),
    threads: Optional[int] = typer.Option(None, help="Inference threads."),
    device: str = typer.Option("cpu", help="torch device for checkpoints."),
    strict: bool = typer.Option(False, "--strict", help="Refuse (instead of leaving out) mismatched masks."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Dice, IoU, precision, recall, specificity, accuracy, ROC-AUC, HD95 of any model on a folder."""
    _setup_logging(verbose)
    from edgeseg.data import folders as D
    from edgeseg.evaluate import evaluate as run_eval
    from edgeseg.evaluate import format_table, write_json, write_rows_csv
    from edgeseg.outputs import check_output_files
    from edgeseg.runners import open_model

    check_output_files({"--json": json_out, "--csv": csv_out}, inputs=[model, data])  # before any work
    pixel_spacing = _spacing(spacing)
    samples = D.discover(data, split, strict=strict)
    seg = open_model(model, providers=_providers(providers), threads=threads, device=device)
    summary, rows, _ = run_eval(seg, samples, spacing=pixel_spacing, progress=not quiet)
    typer.echo(f"model: {model}  ({seg.runner.name})\ndata:  {data}" + (f"  split {split}" if split else ""))
    typer.echo(format_table(summary))
    if samples.skipped:
        typer.echo(f"left out {len(samples.skipped)} image(s) whose mask does not match: "
                   + "; ".join(f"{n} ({why})" for n, why in samples.skipped))
    summary["skipped"] = [{"name": n, "reason": why} for n, why in samples.skipped]
    if json_out:
        write_json({"model": str(model), "runner": seg.runner.name, "data": str(data), "split": split,
                    "summary": summary}, json_out)
    if csv_out:
        write_rows_csv(rows, csv_out)


@command
def predict(
    model: Path = typer.Argument(..., help="HF checkpoint dir, bundle dir, .onnx or .engine."),
    images: Path = typer.Argument(..., help="An image file, or a folder of images (searched recursively)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder: new, or an earlier predict output with "
                             "--overwrite. Never a folder holding other files, never inside the images."),
    overlay: bool = typer.Option(True, "--overlay/--no-overlay", help="Also write colour overlays (default: on)."),
    probs: bool = typer.Option(False, "--probs", help="Also write probability maps (default: off)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT when it is an earlier predict output."),
    providers: Optional[str] = typer.Option(None, help="ONNX Runtime providers, e.g. cpu or cuda,cpu "
                                            "(default: cpu)."),
    threads: Optional[int] = typer.Option(None, help="Inference threads (default: the runtime's choice)."),
    device: str = typer.Option("cpu", help="torch device for checkpoints: cpu or cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log details to stderr."),
):
    """Masks (PNG, original size), overlays and optional probability maps.

    Images are streamed; OUT appears complete at the end or not at all.

    Example: edgeseg predict runs/compressed/bundle scans/ -o runs/masks
    """
    _setup_logging(verbose)
    from edgeseg.predict import predict_folder
    from edgeseg.runners import model_id, open_model

    seg = open_model(model, providers=_providers(providers), threads=threads, device=device)
    res = predict_folder(seg, images, out, overlay=overlay, probs=probs, overwrite=overwrite, model_path=model,
                         model_id=model_id(seg, model), progress=not quiet)
    if json_out:
        typer.echo(json.dumps({"images": res.images, "out": str(res.out), "outputs": list(res.files),
                               "seconds": round(res.seconds, 2)}))
    else:
        typer.echo(f"predicted {res.images} image(s) with {model} ({seg.runner.name}) in {res.seconds:.1f} s: "
                   f"{', '.join(res.files)} in {res.out}")


@command
def export(
    model: Path = typer.Argument(..., help="HF checkpoint dir (or, for --format tensorrt, a bundle)."),
    out: Path = typer.Option(..., "-o", "--out", help="Bundle directory (or .engine file) to write."),
    format: str = typer.Option("bundle", "--format", help="bundle (ONNX + manifest) or tensorrt."),
    fp16: bool = typer.Option(False, "--fp16", help="FP16 weights/activations (LayerNorm, Softmax stay FP32)."),
    fold: bool = typer.Option(True, "--fold/--no-fold", help="Exact decode-head folding."),
    opset: int = typer.Option(17),
    dynamic_hw: bool = typer.Option(False, "--dynamic-hw", help="Dynamic height/width (batch is always dynamic)."),
    postprocess: str = typer.Option("none", help="In-graph post-processing: none, mask, probs, mask+probs."),
    data: Optional[Path] = typer.Option(None, help="Real images for the parity check and the drift guard's "
                                        "statistics (default: the validation images recorded in the checkpoint, "
                                        "when readable here; otherwise required)."),
    split: Optional[str] = typer.Option(None),
    parity_images: int = typer.Option(16, help="How many images the parity check uses (0 = all)."),
    precision: str = typer.Option("auto", help="tensorrt: auto, fp32, fp16 or int8."),
    timing_cache: Optional[Path] = typer.Option(None, help="tensorrt: timing cache file."),
    dla_core: Optional[int] = typer.Option(None, help="tensorrt: DLA core (Jetson)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT when it is an earlier bundle."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log details to stderr."),
):
    """Export a checkpoint to a verified bundle, or a bundle to a TensorRT engine.

    Example: edgeseg export runs/b0 -o runs/b0-bundle --data data/kvasir --split val
    """
    _setup_logging(verbose)
    from edgeseg.errors import ConfigError

    # [conflicts] an option of the other --format would be silently ignored: refuse it
    if format == "tensorrt":
        other = [n for n, on in (("--fp16", fp16), ("--no-fold", not fold), ("--dynamic-hw", dynamic_hw),
                                 ("--postprocess", postprocess != "none"), ("--data", data is not None),
                                 ("--split", split is not None)) if on]
        if other:
            raise ConfigError(f"{', '.join(other)} only applies to --format bundle; --format tensorrt builds the "
                              "engine from the bundle as it is (choose its precision with --precision)")
    elif format == "bundle":
        other = [n for n, on in (("--precision", precision != "auto"), ("--timing-cache", timing_cache is not None),
                                 ("--dla-core", dla_core is not None)) if on]
        if other:
            raise ConfigError(f"{', '.join(other)} only applies to --format tensorrt; for an FP16 bundle use --fp16, "
                              "for INT8 use `edgeseg compress`")
    if format == "tensorrt":
        from edgeseg.export.tensorrt import build_engine

        path = build_engine(model, out, precision=precision, timing_cache=timing_cache, dla_core=dla_core)
        typer.echo(json.dumps({"engine": str(path)}))
        return
    if format != "bundle":
        raise ConfigError(f"unknown --format {format!r}; choose bundle or tensorrt")
    from edgeseg.export.onnx import ExportConfig
    from edgeseg.export.pipeline import export_bundle

    cfg = ExportConfig(opset=opset, fp16=fp16, fold=fold, dynamic_hw=dynamic_hw, postprocess=postprocess)
    path, rep = export_bundle(model, out, cfg, data=data, split=split, limit=parity_images, overwrite=overwrite)
    from edgeseg.runtime.files import dumps

    typer.echo(dumps({"bundle": str(path), "parity": rep}))  # NaN (an undefined score) printed as null


@command
def quantize(
    src: Path = typer.Argument(..., help="FP32 bundle folder (or .onnx file with edgeseg metadata) to quantize."),
    out: Path = typer.Option(..., "-o", "--out", help="INT8 bundle folder to write (an .onnx file when SRC is one)."),
    target: str = typer.Option(..., "--target", help=f"INT8 target, one of: {', '.join(target_names())}."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Folder of real images (or a dataset folder with "
                                         "images/) to calibrate on; required except for cpu-weights. No default."),
    calib_split: Optional[str] = typer.Option(None, "--calib-split", help="Split of --calib to use "
                                              "(CALIB/splits/NAME.txt, or a split file); default: all its images."),
    calib_count: int = typer.Option(64, "--calib-count", help="How many calibration images (all if fewer)."),
    method: Optional[str] = typer.Option(None, "--method", help="Range estimator: minmax, entropy or percentile; "
                                         "default: percentile (none for cpu-weights)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT when it is an earlier edgeseg output."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr."),
):
    """INT8-quantize an FP32 bundle for one target; writes an INT8 bundle.

    Example: edgeseg quantize runs/b0 -o runs/b0-int8 --target cpu --calib data/kvasir --calib-split calibration
    """
    _setup_logging(verbose)
    from edgeseg.outputs import check_output, check_output_file
    from edgeseg.quantize import quantize as run_quantize

    if src.is_dir():  # the output policy, before any work: a bundle folder, or one .onnx file
        check_output(out, "bundle", inputs=[src, calib], overwrite=overwrite)
    else:
        check_output_file(out, "-o", inputs=[src, calib])
    path = run_quantize(src, out, target, calib=calib, method=method, calib_split=calib_split,
                        calib_count=calib_count, overwrite=overwrite)
    result: dict = {"out": str(path)}
    if path.is_dir():
        from edgeseg.runtime.bundle import read_bundle

        result["quantization"] = read_bundle(path).manifest.get("quantization")
    from edgeseg.runtime.files import dumps

    typer.echo(dumps(result))


@command
def bench(
    models: List[Path] = typer.Argument(..., help="Models: HF checkpoint dirs, bundle dirs, .onnx, .engine."),
    data: Path = typer.Option(..., "--data", help="Labelled folder (images/ + masks/)."),
    split: Optional[str] = typer.Option(None, help="Split name (DATA/splits/NAME.txt) or file."),
    reference: Optional[Path] = typer.Option(None, help="Reference for Dice drop (default: first checkpoint)."),
    runs: int = typer.Option(50, help="Timed calls per batch size."),
    warmup: int = typer.Option(5, help="Untimed calls first."),
    batch_sizes: str = typer.Option("1", "--batch-sizes", help="Comma-separated, e.g. 1,4."),
    threads: Optional[int] = typer.Option(None, help="Inference threads (torch and ONNX Runtime)."),
    providers: Optional[List[str]] = typer.Option(
        None, help="ONNX Runtime backend, e.g. cpu or cuda,cpu; repeat to bench each ONNX model on several."),
    device: str = typer.Option("cpu", help="torch device for checkpoints."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every figure as JSON."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for bench.csv, bench.md and PNG plots: new, or "
                                       "an earlier bench --out with --overwrite."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out when it holds an earlier bench report."),
    baseline: Optional[Path] = typer.Option(None, help="A previous --json result: exit 1 on regressions."),
    tol: float = typer.Option(0.10, help="Allowed relative p50 slow-down vs --baseline (also >= 3x spread)."),
    tol_dice: float = typer.Option(0.01, help="Allowed Dice loss vs --baseline."),
    max_images: Optional[int] = typer.Option(None, help="Use only the first N images."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Latency (model-only and end-to-end), throughput, memory, size, Dice and its drop per model x backend."""
    _setup_logging(verbose)
    from edgeseg.measure.baseline import compare_baseline, load_result
    from edgeseg.measure.bench import BenchConfig, parse_batch_sizes
    from edgeseg.measure.bench import bench as run_bench
    from edgeseg.evaluate import write_json
    from edgeseg.measure import report

    cfg = BenchConfig(runs=runs, warmup=warmup, batch_sizes=parse_batch_sizes(batch_sizes), threads=threads,
                      providers=tuple(tuple(_providers(p) or ["cpu"]) for p in (providers or ["cpu"])),
                      device=device, max_images=max_images)
    from edgeseg.outputs import check_output_files

    check_output_files({"--json": json_out}, inputs=[*models, data, reference, baseline])  # before any work
    base = load_result(baseline) if baseline else None
    if out:
        report.require_matplotlib()
        report.check_report_dir(out, [*models, data, reference, baseline], overwrite, json_file=json_out)
    result = run_bench(models, data, split=split, reference=reference, config=cfg, progress=not quiet)
    typer.echo(report.format_table(result))
    if json_out:
        write_json(result, json_out)
    if out:
        report.write_report(result, out, overwrite=overwrite, inputs=[*models, data, reference, baseline])
    if base is not None:
        regressions = compare_baseline(result, base, tol_rel=tol, tol_dice=tol_dice)
        if regressions:
            typer.echo(f"error: {len(regressions)} regression(s) vs {baseline}: " + "; ".join(regressions), err=True)
            raise typer.Exit(1)
        typer.echo(f"no regression vs {baseline}")


@command
def compress(
    checkpoint: Optional[Path] = typer.Argument(None, help="Teacher HF checkpoint dir (default: the embedded demo teacher)."),
    out: Path = typer.Option(Path("runs/compressed"), "-o", "--out", help="Output folder (bundle/, report.*, stages/)."),
    calib: Optional[Path] = typer.Option(None, help="Folder of real images for INT8 calibration and pruning."),
    calib_split: Optional[str] = typer.Option(None),
    calib_count: Optional[int] = typer.Option(None, help="How many calibration images."),
    val: Optional[Path] = typer.Option(None, help="Labelled folder to score every stage on."),
    val_split: Optional[str] = typer.Option(None),
    train: Optional[Path] = typer.Option(None, help="Labelled folder for distillation (default: the teacher's)."),
    train_split: Optional[str] = typer.Option(None),
    recipe: Optional[Path] = typer.Option(None, help="A recipe JSON file; flags given here override it."),
    prune_ratio: Optional[float] = typer.Option(None, help="Fraction of Mix-FFN channels to remove."),
    decoder_ratio: Optional[float] = typer.Option(None, help="Fraction of decode-head width to remove."),
    target_macs: Optional[float] = typer.Option(None, help="Prune until MACs <= this fraction of the folded model."),
    importance: Optional[str] = typer.Option(None, help="magnitude or taylor (data-driven)."),
    depths: Optional[str] = typer.Option(None, help="Blocks kept per stage, e.g. 1,1,1,1 (depth pruning)."),
    distill_epochs: Optional[int] = typer.Option(None, help="Distillation epochs (0 = none)."),
    int8: Optional[bool] = typer.Option(None, "--int8/--no-int8", help="INT8 quantization."),
    target: Optional[str] = typer.Option(None, help=f"INT8 target: {', '.join(target_names())}."),
    calib_method: Optional[str] = typer.Option(None, help="minmax, entropy or percentile."),
    max_dice_drop: Optional[float] = typer.Option(None, help="Dice budget vs the teacher for the INT8 guard."),
    device: Optional[str] = typer.Option(None, help="Distillation device: cpu, cuda, auto."),
    threads: Optional[int] = typer.Option(None, help="Threads for timing and training."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT when it holds an earlier compress "
                                   "output (the old one stays until the new run is complete)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Fold, prune, distill, export, quantize and bundle a SegFormer, with a per-stage report."""
    _setup_logging(verbose)
    from edgeseg.compress.pipeline import Compressor, Recipe, default_job

    given = dict(calib=calib, calib_split=calib_split, calib_count=calib_count, val=val, val_split=val_split,
                 train=train, train_split=train_split, prune_ratio=prune_ratio, decoder_ratio=decoder_ratio,
                 target_macs=target_macs, importance=importance, depths=_ints(depths, "--depths"),
                 distill_epochs=distill_epochs, int8=int8,
                 target=target, calib_method=calib_method, max_dice_drop=max_dice_drop, device=device,
                 threads=threads)
    given = {k: (str(v) if isinstance(v, Path) else v) for k, v in given.items() if v is not None}
    if given.get("int8") is False:  # [conflicts] INT8-only options with --no-int8 would be silently ignored
        from edgeseg.errors import ConfigError

        other = [f"--{k.replace('_', '-')}" for k in ("target", "calib_method", "max_dice_drop") if k in given]
        if other:
            raise ConfigError(f"--no-int8 conflicts with {', '.join(other)}, which only applies to INT8 quantization")
    if checkpoint is None:
        checkpoint, defaults = default_job()
        given = {**defaults, **given}
        typer.echo(f"no checkpoint given: compressing the embedded demo teacher {checkpoint}", err=True)
    rec = Recipe.from_file(recipe, **given) if recipe else Recipe(**given)
    report = Compressor(checkpoint, out, rec, progress=not quiet, overwrite=overwrite).run()
    from edgeseg.compress.report import terminal_table

    typer.echo(terminal_table(report))
    typer.echo(f"bundle: {report['bundle']}\nreport: {out / 'report.md'}")


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
        x, _ = load_calibration(calib, read_meta(checkpoint).preprocess, count=calib_count, split=calib_split,
                                allow_few=True)
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
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto. Default: auto."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads. Default: torch's choice."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT when it is an earlier edgeseg checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
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

    dcfg = DistillConfig(temperature=temperature, alpha=alpha)
    check_output(out, "checkpoint", inputs=[teacher, student, train_dir], overwrite=overwrite, resumable=True)
    meta = read_meta(teacher)
    tcfg = TrainConfig(data=str(train_dir), out=str(out), train_split=train_split, val_split=val_split,
                       classes=tuple(meta.classes), size=max(32, meta.preprocess.height // 32 * 32), epochs=epochs,
                       batch_size=batch_size, lr=lr, device=device, progress=not quiet, threads=threads)
    path = distill_checkpoint(teacher, student, tcfg, dcfg, student_note=student.name, overwrite=overwrite)
    sel = read_meta(path).training.get("selection") or {}
    typer.echo(f"kept the {sel.get('kept')} (agreement with the teacher {sel.get('best_agreement', 0):.4f} at the "
               f"best epoch vs {sel.get('start_agreement', 0):.4f} at the start); checkpoint: {path}")


def main() -> None:  # pragma: no cover - run as a subprocess by the tests
    """The ``edgeseg`` command: click's usage errors (unknown option, missing argument, bad
    choice) become one ``error:`` line naming the help to read, like every other bad input."""
    try:  # typer >= 0.2x vendors click as typer._click; older ones use click itself
        from typer._click import exceptions as click_exc
    except ImportError:  # pragma: no cover
        from click import exceptions as click_exc

    try:
        rc = app(prog_name="edgeseg", standalone_mode=False)
    except click_exc.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `edgeseg` or `edgeseg CMD`: the help is the answer
            typer.echo(exc.format_message())
            sys.exit(0)
        where = exc.ctx.command_path if exc.ctx is not None else "edgeseg"
        msg = " ".join(exc.format_message().split())
        typer.echo(f"error: {msg[0].lower() + msg[1:] if msg else msg} (see `{where} --help`)", err=True)
        rc = EXIT_BAD_INPUT
    except click_exc.Abort:
        typer.echo("error: interrupted", err=True)
        rc = 130
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
