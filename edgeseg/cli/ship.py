"""Commands that turn a model into what ships: export (bundle or TensorRT engine), quantize."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from edgeseg.cli.app import _setup_logging, command
from edgeseg.quantize.targets import target_names


@command
def export(
    model: Path = typer.Argument(..., help="HF checkpoint dir (or, for --format tensorrt or triton, a bundle)."),
    out: Path = typer.Option(..., "-o", "--out", help="Bundle directory (or .engine file) to write."),
    format: str = typer.Option("bundle", "--format", help="bundle (ONNX + manifest), tensorrt, or triton (a Triton "
                               "model repository from a bundle or engine)."),
    fp16: bool = typer.Option(False, "--fp16", help="FP16 weights/activations (LayerNorm, Softmax stay FP32)."),
    fold: bool = typer.Option(True, "--fold/--no-fold", help="Exact decode-head folding."),
    opset: int = typer.Option(17, help="ONNX opset."),
    dynamic_hw: bool = typer.Option(False, "--dynamic-hw", help="Dynamic height/width (default: fixed)."),
    static_batch: bool = typer.Option(False, "--static-batch", help="Batch fixed at 1 (batches then run image by "
                                      "image; measured faster on CPU: benchmarks/results/runtimes_kvasir*.md) "
                                      "(default: dynamic batch)."),
    postprocess: str = typer.Option("none", help="In-graph post-processing: none, mask, probs, mask+probs."),
    data: Optional[Path] = typer.Option(None, help="Real images for the parity check and the drift guard's "
                                        "statistics (default: the validation images recorded in the checkpoint, "
                                        "when readable here; otherwise required)."),
    split: Optional[str] = typer.Option(None, help="Split of --data (default: the recorded validation split, "
                                        "or every image)."),
    parity_images: int = typer.Option(16, help="How many images the parity check uses (0 = all)."),
    precision: str = typer.Option("auto", help="tensorrt: auto, fp32, fp16 or int8."),
    timing_cache: Optional[Path] = typer.Option(None, help="tensorrt: timing cache file."),
    dla_core: Optional[int] = typer.Option(None, help="tensorrt: DLA core (Jetson)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT when it is an earlier bundle."),
    runtime: Optional[str] = typer.Option(None, "--runtime", help="auto: time the bundle here under ONNX Runtime "
                                          "and OpenVINO (batch 1, every usable core) and record the faster in its "
                                          "manifest, for `--runtime auto` (default: record nothing)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log details to stderr."),
):
    """Export a checkpoint to a verified bundle, or a bundle to a TensorRT engine or a Triton repository.

    Example: edgeseg export runs/b0 -o runs/b0-bundle --data data/kvasir --split val
    """
    _setup_logging(verbose)
    from edgeseg.errors import ConfigError

    if format == "triton":  # [triton] a bundle (or engine) -> a Triton model repository: edgeseg/export/triton.py
        from edgeseg.cli.serve import export_triton_cli

        return export_triton_cli(model, out, overwrite, {"--fp16": fp16, "--no-fold": not fold, "--opset": opset != 17,
                                 "--dynamic-hw": dynamic_hw, "--static-batch": static_batch,
                                 "--postprocess": postprocess != "none", "--data": data,
                                 "--split": split, "--parity-images": parity_images != 16, "--precision": precision
                                 != "auto", "--timing-cache": timing_cache, "--dla-core": dla_core is not None,
                                 "--runtime": runtime is not None})
    # [conflicts] an option of the other --format would be silently ignored: refuse it
    if format == "tensorrt":
        other = [n for n, on in (("--fp16", fp16), ("--no-fold", not fold), ("--dynamic-hw", dynamic_hw),
                                 ("--static-batch", static_batch),
                                 ("--postprocess", postprocess != "none"), ("--data", data is not None),
                                 ("--split", split is not None), ("--runtime", runtime is not None)) if on]
        if other:
            raise ConfigError(f"{', '.join(other)} only applies to --format bundle; --format tensorrt builds the "
                              "engine from the bundle as it is (choose its precision with --precision)")
    elif format == "bundle":
        if runtime not in (None, "auto"):
            raise ConfigError(f"--runtime for export takes only auto (measure and record the faster runtime), got "
                              f"{runtime!r}; choose a runtime where the bundle is used (predict, evaluate, bench)")
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
        raise ConfigError(f"unknown --format {format!r}; choose bundle, tensorrt or triton")
    from edgeseg.export.onnx import ExportConfig
    from edgeseg.export.pipeline import export_bundle

    cfg = ExportConfig(opset=opset, fp16=fp16, fold=fold, dynamic_hw=dynamic_hw, postprocess=postprocess,
                       dynamic_batch=not static_batch)
    path, rep = export_bundle(model, out, cfg, data=data, split=split, limit=parity_images, overwrite=overwrite)
    result = {"bundle": str(path), "parity": rep}
    if runtime == "auto":  # [runtimes] measured here, recorded in the bundle's manifest
        from edgeseg.measure.machine import usable_cores
        from edgeseg.measure.runtimes import record_in_bundle, runtime_section, time_runtimes

        timing = time_runtimes(path, threads=usable_cores())
        record_in_bundle(path, timing)
        result["runtime"] = runtime_section(timing)
    from edgeseg.runtime.files import dumps

    typer.echo(dumps(result))  # NaN (an undefined score) printed as null

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
        check_output_file(out, "-o", inputs=[src, calib], overwrite=overwrite)
    path = run_quantize(src, out, target, calib=calib, method=method, calib_split=calib_split,
                        calib_count=calib_count, overwrite=overwrite)
    result: dict = {"out": str(path)}
    if path.is_dir():
        from edgeseg.runtime.bundle import read_bundle

        result["quantization"] = read_bundle(path).manifest.get("quantization")
    from edgeseg.runtime.files import dumps

    typer.echo(dumps(result))
