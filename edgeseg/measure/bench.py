"""``edgeseg bench``: benchmark models the same way on every backend.

:func:`bench` opens every model on every backend, times it (``edgeseg.measure.timing``),
scores it on labelled images (``edgeseg.measure.accuracy``) and returns one JSON-ready dict
(schema ``edgeseg.bench/1``): the machine (``edgeseg.measure.machine``), the settings, the
data fingerprint, the reference and one row per model x backend. Each row holds the headline
figures flat (model-only p50/p90/p99/spread at the first batch size, best throughput, memory,
Dice and its drop vs the reference, lesion sensitivity) plus the nested ``latency``,
``memory``, ``noise`` and ``accuracy`` blocks; ``noisy``/``noisy_reason`` say when a timing
was taken on a busy machine. Sizes are MB = 10^6 bytes. The regression gate is
``edgeseg.measure.baseline``; tables and plots are ``edgeseg.measure.report``.

This module also holds the model introspection the rows need: kind, size, precision, threads.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from edgeseg.errors import ConfigError, ModelError
from edgeseg.measure.accuracy import (DETECTION_RULES, SIZE_BUCKETS, Scores, compare_scores, lesion_sensitivity,
                                      score)
from edgeseg.measure.baseline import SCHEMA
from edgeseg.measure.machine import machine_info
from edgeseg.measure.sampling import current_rss_mb
from edgeseg.measure.timing import STAT_KEYS, Timing, time_model
from edgeseg.runtime.files import json_clean, size_mb

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class BenchConfig:
    runs: int = 50
    warmup: int = 5
    batch_sizes: tuple[int, ...] = (1,)
    threads: int | None = None
    providers: tuple[tuple[str, ...], ...] = (("cpu",),)  # one backend per entry (each a fallback list)
    runtimes: tuple[str, ...] = ("onnxruntime",)  # bundles/.onnx run under each (providers are onnxruntime's)
    device: str = "cpu"  # torch device for checkpoints
    max_images: int | None = None
    timing_images: int = 8  # images the end-to-end loop cycles through
    rule: str = "coverage"
    rule_threshold: float | None = None  # default: DETECTION_RULES[rule]
    drop_threshold: float = 0.05
    keep_times: bool = True  # raw per-call times in the JSON (for plots)

    def __post_init__(self) -> None:
        if int(self.runs) < 1:
            raise ConfigError(f"--runs must be at least 1, got {self.runs}")
        if int(self.warmup) < 0:
            raise ConfigError(f"--warmup must be 0 or more, got {self.warmup}")
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise ConfigError(f"--batch-sizes must be positive integers, got {list(self.batch_sizes)}")
        if len(set(self.batch_sizes)) != len(self.batch_sizes):
            raise ConfigError(f"--batch-sizes lists a size twice: {list(self.batch_sizes)}")
        if not self.providers or len(set(self.providers)) != len(self.providers):
            raise ConfigError(f"--providers must name each backend once, got {[','.join(p) for p in self.providers]}")
        from edgeseg.runtime.runners import CHOICES

        if not self.runtimes or len(set(self.runtimes)) != len(self.runtimes) or any(
                r not in CHOICES or r == "tensorrt" for r in self.runtimes):
            raise ConfigError(f"--runtime must name each of {', '.join(c for c in CHOICES if c != 'tensorrt')} at most "
                              f"once, got {', '.join(self.runtimes) or 'none'}")
        if self.threads is not None and int(self.threads) < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")
        if self.max_images is not None and int(self.max_images) < 1:
            raise ConfigError(f"--max-images must be at least 1, got {self.max_images}")
        if int(self.timing_images) < 1:
            raise ConfigError(f"timing_images must be at least 1, got {self.timing_images}")
        if self.rule not in DETECTION_RULES:
            raise ConfigError(f"unknown lesion detection rule {self.rule!r}; known: {', '.join(DETECTION_RULES)}")
        if not 0.0 <= self.drop_threshold <= 1.0:
            raise ConfigError(f"drop threshold must be in [0, 1], got {self.drop_threshold}")

    @property
    def threshold(self) -> float:
        return DETECTION_RULES[self.rule] if self.rule_threshold is None else float(self.rule_threshold)


def parse_batch_sizes(value: str | Sequence[int]) -> tuple[int, ...]:
    if not isinstance(value, str):
        return tuple(int(v) for v in value)
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--batch-sizes needs comma-separated integers like 1,4, got {value!r}") from None
    if not sizes:
        raise ConfigError(f"--batch-sizes needs comma-separated integers like 1,4, got {value!r}")
    return sizes


# --------------------------------------------------------------------------- model facts
def model_kind(path: Path) -> str:
    from edgeseg.runtime.formats import detect

    fmt = detect(path)
    return fmt.name if fmt is not None else "unknown"


def model_size_mb(path: Path, seg=None) -> float | None:
    """MB (10^6 bytes) of the model's weights/graph files: safetensors of a checkpoint, the
    files listed in a bundle's manifest, an .onnx (plus external data next to it) or an engine."""
    path = Path(path)
    if path.is_file():
        files = [path] + [p for p in (path.with_name(path.name + ".data"), path.with_suffix(".onnx_data"))
                          if p.is_file()]
    elif seg is not None and seg.bundle is not None:
        files = [path / n for n in seg.bundle.manifest["files"]]
    elif path.is_dir():
        files = [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".onnx", ".data")]
    else:
        return None
    return size_mb(*[p for p in files if p.is_file()])


def model_precision(seg) -> str:
    if seg.bundle is not None:
        return seg.bundle.precision
    model = getattr(seg.runner, "model", None)
    if model is not None:
        try:
            dt = str(next(model.parameters()).dtype).replace("torch.", "")
            return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(dt, dt)
        except Exception:  # noqa: BLE001
            return "unknown"
    p = seg.info.get("precision") if isinstance(seg.info, dict) else None
    if p:
        return str(p)
    if getattr(seg.runner, "input_type", None) == "tensor(float16)":
        return "fp16"
    return "unknown"


def threads_used(seg, requested: int | None) -> int | None:
    if seg.runner.name.startswith("torch"):
        import torch

        return torch.get_num_threads()
    return requested  # None: ONNX Runtime's default (one per physical core)


# --------------------------------------------------------------------------- bench
def _labels(paths: list[Path]) -> list[str]:
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def _flatten(row: dict, timing: Timing) -> None:
    """Headline timing figures on the row itself (CSV columns, tables, baseline checks)."""
    first, best = timing.first, timing.best
    for k in STAT_KEYS:
        row[k] = getattr(first.model, k)
        row[f"e2e_{k}"] = getattr(first.e2e, k)
    row["latency_batch"] = first.batch
    row["throughput_ips"] = best.throughput_ips
    row["throughput_batch"] = best.batch
    row["e2e_throughput_ips"] = max(b.e2e_throughput_ips for b in timing.batches.values())
    for k in ("rss_peak_mb", "rss_loop_max_mb", "rss_loop_delta_mb", "rss_load_delta_mb", "cuda_peak_mb"):
        row[k] = getattr(timing.memory, k)
    row["noisy"] = timing.noisy
    row["noisy_reason"] = timing.noisy_reason


def _flatten_accuracy(row: dict, acc: dict) -> None:
    row["dice"] = acc["dice"]
    row["iou"] = acc["iou"]
    row["median_dice"] = acc["median_dice"]
    d = acc["drop"] or {}
    row["dice_drop_mean"] = d.get("mean")
    row["dice_drop_median"] = d.get("median")
    row["dice_drop_max"] = d.get("max")
    row["worst_image"] = d.get("worst_image")
    row["share_drop_over_threshold"] = d.get("share_over_threshold")
    row["agreement_dice"] = acc["agreement_dice"]
    for name, b in acc["lesions"].items():
        row[f"lesion_sens_{name}"] = b["sensitivity"]


def bench(models: Sequence[str | Path], data: str | Path, split: str | None = None,
          reference: str | Path | None = None, config: BenchConfig | None = None,
          progress: bool = False) -> dict:
    """Benchmark every model on every backend; see the module docs for what each figure means.

    Checkpoints run on torch (``config.device``), the reference backend; bundles, .onnx files
    and engines run once per entry of ``config.providers``. The reference is ``reference``, or
    else the first checkpoint among ``models``, or else none (no drop figures).
    """
    from edgeseg.data import folders as D
    from edgeseg.runners import is_checkpoint, open_model

    cfg = config or BenchConfig()
    paths = [Path(m) for m in models]
    if not paths:
        raise ConfigError("name at least one model to benchmark")
    for p in paths + ([Path(reference)] if reference else []):
        if not p.exists():
            raise ModelError(f"model not found: {p}")
    resolved = [p.resolve() for p in paths]
    dup = next((p for i, p in enumerate(resolved) if p in resolved[:i]), None)
    if dup is not None:
        raise ConfigError(f"model listed twice: {dup}")

    samples = D.discover(data, split)
    if cfg.max_images:
        samples = samples[: cfg.max_images]
    if reference is None:
        reference = next((p for p in paths if is_checkpoint(p)), None)
    ref_path = Path(reference).resolve() if reference is not None else None

    timing_images = [D.read_image(s.image) for s in samples[: cfg.timing_images]]
    labels = _labels(paths)
    rows: list[dict] = []
    scores: list[Scores] = []
    ref_scores: Scores | None = None
    ref_info: dict | None = None
    num_classes = None
    for path, label, rpath in zip(paths, labels, resolved):
        kind = model_kind(path)
        backends = [(None, None)] if kind in ("checkpoint", "engine") else [
            (rt, prov) for rt in cfg.runtimes for prov in (cfg.providers if rt == "onnxruntime" else [None])]
        for runtime, prov in backends:
            rss0 = current_rss_mb()
            seg = open_model(path, providers=list(prov) if prov else None, threads=cfg.threads,
                             device=cfg.device, runtime=runtime)
            try:
                if num_classes is None:
                    num_classes = seg.num_classes
                elif seg.num_classes != num_classes:
                    raise ConfigError(f"{path} has {seg.num_classes} classes, the other models {num_classes}")
                log.info("timing %s on %s", label, seg.runner.name)
                threads = threads_used(seg, cfg.threads)
                timing = time_model(seg, timing_images, cfg.warmup, cfg.runs, cfg.batch_sizes, cfg.keep_times,
                                    threads=threads)
                rss1 = timing.memory.rss_loop_start_mb
                timing = replace(timing, memory=replace(
                    timing.memory, rss_load_delta_mb=(rss1 - rss0) if rss0 is not None and rss1 else None))
                sc = score(seg, samples, rule=cfg.rule, threshold=cfg.threshold, progress=progress)
                row = {
                    "name": label, "model": str(path), "kind": kind, "backend": seg.runner.name,
                    "providers": list(getattr(seg.runner, "providers", []) or []) or None,
                    "precision": model_precision(seg), "size_mb": model_size_mb(path, seg),
                    "threads": threads, "is_reference": False,
                    "latency": timing.latency_dict(), "memory": timing.memory.to_dict(),
                    "noise": timing.noise.to_dict(),
                }
                _flatten(row, timing)
                if ref_scores is None and ref_path is not None and rpath == ref_path:
                    ref_scores = sc
                    row["is_reference"] = True
                    ref_info = {"model": str(path), "backend": seg.runner.name, "in_rows": True}
            finally:
                seg.close()
                del seg
                gc.collect()
            rows.append(row)
            scores.append(sc)
    if ref_path is not None and ref_scores is None:  # a reference that is not benchmarked itself
        seg = open_model(ref_path, threads=cfg.threads, device=cfg.device)
        try:
            if seg.num_classes != num_classes:
                raise ConfigError(f"reference {reference} has {seg.num_classes} classes, the models {num_classes}")
            ref_scores = score(seg, samples, rule=cfg.rule, threshold=cfg.threshold, progress=progress)
            ref_info = {"model": str(reference), "backend": seg.runner.name, "in_rows": False}
        finally:
            seg.close()
    if ref_info is not None:
        ref_info.update(dice=float(ref_scores.summary["mean_dice"]), iou=float(ref_scores.summary["mean_iou"]),
                        lesions=lesion_sensitivity([h for hs in ref_scores.hits for h in hs]))
    for row, sc in zip(rows, scores):
        acc = compare_scores(sc, ref_scores, cfg.drop_threshold)
        row["accuracy"] = acc
        _flatten_accuracy(row, acc)

    settings = asdict(cfg)
    settings.update(batch_sizes=list(cfg.batch_sizes), providers=[",".join(p) for p in cfg.providers],
                    rule_threshold=cfg.threshold, size_buckets=[[n, lo, hi] for n, lo, hi in SIZE_BUCKETS],
                    timing_images=len(timing_images), timer="time.perf_counter_ns", size_unit="MB = 10^6 bytes")
    from edgeseg import __version__ as edgeseg_version

    return json_clean({
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "edgeseg_version": edgeseg_version,
        "machine": machine_info(),
        "settings": settings,
        "data": {"path": str(data), "split": split, "n_images": len(samples),
                 "fingerprint": D.fingerprint(samples)["sha256"]},
        "reference": ref_info,
        "rows": rows,
    })
