"""Commands that use and measure models: evaluate, predict, bench."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from edgeseg.cli.app import _setup_logging, command
from edgeseg.cli.options import DEVICE, PROVIDERS, QUIET, RUNTIME, THREADS, VERBOSE, _providers, _spacing


@command
def evaluate(
    model: Path = typer.Argument(..., help="HF checkpoint dir, bundle dir, .onnx or .engine."),
    data: Path = typer.Argument(..., help="Labelled folder (images/ + masks/)."),
    split: Optional[str] = typer.Option(None, help="Split name (DATA/splits/NAME.txt) or file (default: every "
                                        "image)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the summary as JSON (default: none)."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write per-image metrics as CSV (default: none)."),
    reliability: Optional[Path] = typer.Option(None, "--reliability", help="Write the reliability diagram (PNG: "
                                               "accuracy vs top-class confidence, ECE) (default: none)."),
    confusion: Optional[Path] = typer.Option(None, "--confusion", help="Write the pixel confusion matrix as a PNG "
                                             "(counts and row-normalised) and as JSON beside it (same name, .json) "
                                             "(default: none)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --json/--csv/--reliability file."),
    spacing: Optional[str] = typer.Option(None, help="Pixel spacing 'sy,sx' in mm: HD95 in mm (default: HD95 in "
                                          "pixels)."),
    providers: Optional[str] = PROVIDERS,
    threads: Optional[int] = THREADS,
    runtime: Optional[str] = RUNTIME,
    device: str = DEVICE,
    strict: bool = typer.Option(False, "--strict", help="Refuse (instead of leaving out) mismatched masks."),
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
):
    """Dice, IoU, precision, recall, specificity, accuracy, ROC-AUC, HD95 of any model on a folder.

    Mean Dice averages per-image Dice (an image with an empty mask and an empty prediction scores
    1); pooled Dice counts all pixels of the set together. HD95 is in pixels, or in mm with --spacing.

    Example: edgeseg evaluate runs/compressed/bundle data/kvasir --split test --json runs/test.json
    """
    _setup_logging(verbose)
    from edgeseg.data import folders as D
    from edgeseg.evaluate import evaluate as run_eval
    from edgeseg.evaluate import format_table, write_json, write_rows_csv
    from edgeseg.outputs import check_output_files
    from edgeseg.runners import open_model

    check_output_files({"--json": json_out, "--csv": csv_out, "--reliability": reliability,  # before any work
                        "--confusion": confusion, "--confusion's JSON": confusion and confusion.with_suffix(".json")},
                       inputs=[model, data], overwrite=overwrite)
    if reliability or confusion:
        from edgeseg.measure.report import require_matplotlib

        require_matplotlib()
    pixel_spacing = _spacing(spacing)
    samples = D.discover(data, split, strict=strict)
    seg = open_model(model, providers=_providers(providers), threads=threads, device=device, runtime=runtime)
    summary, rows, _ = run_eval(seg, samples, spacing=pixel_spacing, progress=not quiet)
    typer.echo(f"model: {model}  ({seg.runner.name})\ndata:  {data}" + (f"  split {split}" if split else ""))
    typer.echo(format_table(summary, pixel_spacing))
    if samples.skipped:
        typer.echo(f"left out {len(samples.skipped)} image(s) whose mask does not match: "
                   + "; ".join(f"{n} ({why})" for n, why in samples.skipped))
    summary["skipped"] = [{"name": n, "reason": why} for n, why in samples.skipped]
    if json_out:
        write_json({"model": str(model), "runner": seg.runner.name, "data": str(data), "split": split,
                    "summary": summary}, json_out)
    if csv_out:
        write_rows_csv(rows, csv_out)
    if reliability:
        from edgeseg.measure.reliability import plot_reliability

        plot_reliability(summary["reliability"], reliability, title=f"{Path(model).name} on {Path(data).name}"
                         + (f" ({split})" if split else ""))
    if confusion:  # [tracking]
        from edgeseg.measure.confusion import write_confusion

        write_confusion(summary["confusion"], confusion, title=f"{Path(model).name} on {Path(data).name}"
                        + (f" ({split})" if split else "") + ": pixels, rows = ground truth")

@command
def predict(
    model: Path = typer.Argument(..., help="HF checkpoint dir, bundle dir, .onnx or .engine."),
    images: Path = typer.Argument(..., help="An image file, or a folder of images (searched recursively)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder: new, or an earlier predict output with "
                             "--overwrite. Never a folder holding other files, never inside the images."),
    overlay: bool = typer.Option(True, "--overlay/--no-overlay", help="Also write colour overlays (default: on)."),
    probs: bool = typer.Option(False, "--probs", help="Also write probability maps (default: off)."),
    uncertainty: bool = typer.Option(False, "--uncertainty", help="Also write uncertainty heat maps and each image's "
                                     "confidence summary and flag in OUT/uncertainty/ (default: off)."),
    dicom_seg: bool = typer.Option(False, "--dicom-seg", help="Also write a DICOM SEG (OUT/NAME_seg.dcm) for each "
                                   "DICOM image or series (needs highdicom; default: off)."),
    slice_axis: int = typer.Option(-1, "--slice-axis", help="NIfTI volumes: the axis segmented slice by slice, "
                                   "0, 1 or 2 (default: -1, the last)."),
    tiled: bool = typer.Option(False, "--tiled", help="Predict every TIFF as a slide, tile by tile (default: only "
                               "TIFFs over 100 MP: OUT/NAME_mask.tif, OUT/NAME_preview.png)."),
    tile_overlap: float = typer.Option(0.25, "--tile-overlap", help="Slides: fraction of a window shared with its "
                                       "neighbour, 0-0.9; overlaps are blended (Gaussian)."),
    tile_batch: int = typer.Option(4, "--tile-batch", help="Slides: windows per model call."),
    tile_scale: float = typer.Option(1.0, "--tile-scale", help="Slides: model pixels per slide pixel (0.5: the model "
                                     "was trained at half the slide's resolution)."),
    tile_mpp: Optional[float] = typer.Option(None, "--tile-mpp", help="Slides: the model's resolution in um/px; the "
                                             "scale is the slide's recorded um/px over it, instead of --tile-scale "
                                             "(default: none)."),
    skip_background: bool = typer.Option(False, "--skip-background", help="Slides: do not run windows without "
                                         "tissue (H&E: near-white, unsaturated); they are background."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT when it is an earlier predict output."),
    providers: Optional[str] = PROVIDERS,
    threads: Optional[int] = THREADS,
    runtime: Optional[str] = RUNTIME,
    device: str = DEVICE,
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
):
    """Masks (PNG, original size), overlays and optional probability maps.

    Images are streamed; OUT appears complete at the end or not at all. TIFF slides over 100 MP
    (every TIFF with --tiled) are read and predicted tile by tile with flat memory: the full-size
    OUT/NAME_mask.tif (tiled TIFF) and OUT/NAME_preview.png.

    Example: edgeseg predict runs/compressed/bundle scans/ -o runs/masks
    """
    _setup_logging(verbose)
    from edgeseg.predict import predict_folder
    from edgeseg.predict_slide import Slides
    from edgeseg.runners import model_id, open_model
    from edgeseg.runtime.tiled import TileOptions

    tiles = TileOptions(overlap=tile_overlap, batch=tile_batch, scale=tile_scale, skip_background=skip_background)
    seg = open_model(model, providers=_providers(providers), threads=threads, device=device, runtime=runtime)
    slides = Slides(seg, tiles, force=tiled, progress=not quiet,
                    unsupported=tuple(f for f, on in (("--probs", probs), ("--uncertainty", uncertainty)) if on),
                    model_mpp=tile_mpp)
    res = predict_folder(seg, images, out, overlay=overlay, probs=probs, overwrite=overwrite, model_path=model,
                         model_id=model_id(seg, model), progress=not quiet, uncertainty=uncertainty,
                         dicom_seg=dicom_seg, slides=slides, slice_axis=slice_axis)
    for name, s in slides.done.items():  # [slide]
        typer.echo(f"slide {name}: {s['width']}x{s['height']}, {s['windows']} windows ({s['tiles_skipped']} skipped) "
                   f"in {s['seconds']:.1f} s, {s['tiles_per_s']} windows/s: {s['mask']}", err=json_out)
    if json_out:
        typer.echo(json.dumps({"images": res.images, "out": str(res.out), "outputs": list(res.files),
                               "seconds": round(res.seconds, 2), "intensity_flagged": res.intensity_flagged}))
    else:
        typer.echo(f"predicted {res.images} image(s) with {model} ({seg.runner.name}) in {res.seconds:.1f} s: "
                   f"{', '.join(res.files)} in {res.out}")
        if res.intensity_flagged:  # [intensity] counted, never silently clipped
            typer.echo(f"{res.intensity_flagged} image(s)/slice(s) do not fit the model's intensity policy "
                       f"({seg.intensity.describe()}): see {res.out}/.edgeseg-output.json; check their masks")

@command
def bench(
    models: List[Path] = typer.Argument(..., help="Models: HF checkpoint dirs, bundle dirs, .onnx, .engine."),
    data: Path = typer.Option(..., "--data", help="Labelled folder (images/ + masks/), or a TIFF slide: one pass "
                              "tile by tile per model (end-to-end seconds, windows/s)."),
    tile_scale: float = typer.Option(1.0, "--tile-scale", help="Slides: model pixels per slide pixel."),
    split: Optional[str] = typer.Option(None, help="Split name (DATA/splits/NAME.txt) or file."),
    reference: Optional[Path] = typer.Option(None, help="Reference for Dice drop (default: the first checkpoint "
                                             "among MODELS)."),
    runs: int = typer.Option(50, help="Timed calls per batch size."),
    warmup: int = typer.Option(5, help="Untimed calls first."),
    batch_sizes: str = typer.Option("1", "--batch-sizes", help="Comma-separated batch sizes, e.g. 1,4."),
    threads: Optional[int] = typer.Option(None, help="Inference threads (torch and ONNX Runtime)."),
    providers: Optional[List[str]] = typer.Option(
        None, help="ONNX Runtime backend, e.g. cpu or cuda,cpu; repeat to bench each ONNX model on several."),
    runtimes: Optional[List[str]] = typer.Option(
        None, "--runtime", help="Runtime for bundles/.onnx: onnxruntime, openvino or auto; repeat to bench each "
        "on several side by side (default: onnxruntime)."),
    device: str = DEVICE,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every figure as JSON (default: none)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for bench.csv, bench.md and PNG plots: new, or "
                                       "an earlier bench --out with --overwrite."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out when it holds an earlier bench report, "
                                   "and an existing --json file."),
    baseline: Optional[Path] = typer.Option(None, help="A previous --json result: exit 1 on regressions."),
    tol: float = typer.Option(0.10, help="Allowed relative p50 slow-down vs --baseline (also >= 3x spread)."),
    tol_dice: float = typer.Option(0.01, help="Allowed Dice loss vs --baseline."),
    max_images: Optional[int] = typer.Option(None, help="Use only the first N images (default: all)."),
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
):
    """Latency (model-only and end-to-end), throughput, memory, size, Dice and its drop per model x backend.

    Example: edgeseg bench runs/b0 runs/compressed/bundle --data data/kvasir --split test --out runs/bench
    """
    _setup_logging(verbose)
    if data.is_file():  # [slide] a TIFF slide: end-to-end seconds per slide, windows per second
        from edgeseg.outputs import check_output_files
        from edgeseg.predict_slide import bench_slide, format_slide_bench
        from edgeseg.runtime.tiled import TileOptions

        check_output_files({"--json": json_out}, inputs=[*models, data], overwrite=overwrite)
        res = bench_slide(models, data, TileOptions(scale=tile_scale), threads=threads, device=device,
                          providers=_providers(providers[0]) if providers else None)
        typer.echo(format_slide_bench(res))
        if json_out:
            from edgeseg.runtime.files import atomic_write_json

            atomic_write_json(json_out, res)
        return
    from edgeseg.measure.baseline import compare_baseline, load_result
    from edgeseg.measure.bench import BenchConfig, parse_batch_sizes
    from edgeseg.measure.bench import bench as run_bench
    from edgeseg.evaluate import write_json
    from edgeseg.measure import report

    cfg = BenchConfig(runs=runs, warmup=warmup, batch_sizes=parse_batch_sizes(batch_sizes), threads=threads,
                      providers=tuple(tuple(_providers(p) or ["cpu"]) for p in (providers or ["cpu"])),
                      device=device, max_images=max_images, runtimes=tuple(runtimes or ("onnxruntime",)))
    from edgeseg.outputs import check_output_files

    check_output_files({"--json": json_out}, inputs=[*models, data, reference, baseline],  # before any work
                       overwrite=overwrite)
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
