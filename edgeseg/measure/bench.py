"""Benchmark models the same way on every backend: latency, throughput, memory, size, and the
accuracy they keep (Dice/IoU, their drop vs a reference, lesion-level sensitivity by size).

Timing (``time_model``)
    ``time.perf_counter_ns`` around each call, warm-up calls first, garbage collection off
    during the timed loop. Two things are timed separately, per batch size:

    - *model only*: ``seg.infer`` on one batch prepared once (what the graph/engine costs);
    - *end to end*: ``seg.prepare`` + ``seg.infer`` + ``seg.finish`` on raw uint8 RGB images
      of their original sizes, cycling through the images (what an application pays).

    Each gets p50/p90/p99/mean/std/min/max in ms per batch call, ``iqr_ms`` and
    ``spread_ms`` = 1.4826 x the median absolute deviation (a robust standard deviation; the
    noise figure ``compare_baseline`` uses). Throughput is images per second over the whole
    timed loop: batch size x runs / total time (= batch / mean latency).

Memory
    ``rss_peak_mb`` is the process high-water mark (``getrusage`` ``ru_maxrss``; it covers the
    whole process life, so it only grows from row to row). ``rss_loop_max_mb`` /
    ``rss_loop_delta_mb`` come from a thread sampling the resident set every 10 ms during the
    timed loops (Linux ``/proc/self/statm``, else psutil when installed, else absent).
    ``rss_load_delta_mb`` is the growth of the resident set from just before the model was
    opened to the start of its first timed loop, after one inference (``bench`` only). ``cuda_peak_mb`` is torch's
    ``max_memory_allocated`` when the model runs on torch CUDA.

Accuracy (``accuracy``)
    Per-image Dice/IoU against the ground truth (``MetricAccumulator``, so the same
    conventions as ``edgeseg evaluate``), and per image the drop ``reference Dice - model
    Dice``: mean, median, p95, the worst image (name and drop) and the share of images whose
    Dice drops by more than ``drop_threshold`` (0.05). ``agreement_dice`` is the mean Dice
    between the model's mask and the reference's mask (ground truth not involved).

Lesion-level sensitivity
    Lesions are the 8-connected components of the ground-truth foreground (any non-background
    class). A lesion is *detected* when the predicted foreground covers at least 50% of its
    pixels (``rule="coverage"``, the default). Coverage was chosen over an IoU rule because it
    asks the question a reader asks ("was this lesion found?") without penalising a prediction
    that merges two neighbouring lesions or draws a generous margin around a small one, which
    an IoU threshold does for small lesions. ``rule="iou"`` (IoU > 0.1 between the lesion and
    the predicted components touching it) is available for comparison with papers using it.
    Lesions are bucketed by area as a fraction of the image: ``<1%``, ``1-5%``, ``>5%``.
    ``lost_vs_reference`` counts lesions the reference detected and the model missed.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgeseg.errors import ConfigError, DataError, ModelError
from edgeseg.runtime.metrics import MetricAccumulator, dice_score
from edgeseg.runtime.segmenter import Segmenter

log = logging.getLogger(__name__)

SCHEMA = "edgeseg.bench/1"
SIZE_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("<1%", 0.0, 0.01),
    ("1-5%", 0.01, 0.05),
    (">5%", 0.05, math.inf),
)
DETECTION_RULES = {"coverage": 0.5, "iou": 0.1}  # rule -> default threshold
_STAT_KEYS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "iqr_ms", "spread_ms")
_SAMPLE_EVERY_S = 0.01


# =========================================================================== settings
@dataclass(frozen=True)
class BenchConfig:
    runs: int = 50
    warmup: int = 5
    batch_sizes: tuple[int, ...] = (1,)
    threads: int | None = None
    providers: tuple[tuple[str, ...], ...] = (("cpu",),)  # one backend per entry (each a fallback list)
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


# =========================================================================== machine info
def _probe(fn, *args, default=None):
    """Run one probe; never raise (a probe that fails reports ``default``)."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - probes are best effort by design
        log.debug("probe %s failed: %s", getattr(fn, "__name__", fn), exc)
        return default


def _read(path: str) -> str | None:
    p = Path(path)
    if not p.is_file():
        return None
    return p.read_bytes().decode("utf-8", "replace").replace("\x00", "").strip()


def _run(cmd: list[str], timeout: float = 5.0) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    return r.stdout.strip() if r.returncode == 0 else None


_FLAG_EXACT = {"avx", "avx2", "fma", "f16c", "neon", "asimd", "asimdhp", "asimddp", "fphp", "fp16",
               "i8mm", "bf16", "sve", "sve2", "sse4_2", "dotprod"}


def _interesting_flag(f: str) -> bool:
    return (f in _FLAG_EXACT or f.startswith("avx512") or f.startswith("amx") or "vnni" in f
            or "fp16" in f)


def _cpu() -> dict:
    info: dict = {"machine": platform.machine(), "model": None, "flags": []}
    text = _read("/proc/cpuinfo")
    if text:
        fields: dict[str, str] = {}
        for line in text.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                fields.setdefault(k.strip().lower(), v.strip())
        info["model"] = (fields.get("model name") or fields.get("hardware") or fields.get("cpu model")
                         or fields.get("processor") or None)
        if "cpu part" in fields and not info["model"]:
            info["model"] = f"ARM implementer {fields.get('cpu implementer')} part {fields['cpu part']}"
        flags = (fields.get("flags") or fields.get("features") or "").split()
        info["flags"] = sorted({f for f in flags if _interesting_flag(f)})
    if not info["model"] and sys.platform == "darwin":
        info["model"] = _probe(_run, ["sysctl", "-n", "machdep.cpu.brand_string"])
        if platform.machine() == "arm64":
            info["flags"] = ["asimd", "fp16", "neon"]
    if not info["model"]:
        info["model"] = platform.processor() or None
    fl = set(info["flags"])
    info["has"] = {
        "avx2": "avx2" in fl,
        "avx512": any(f.startswith("avx512") for f in fl),
        "vnni": any("vnni" in f for f in fl),
        "neon": bool(fl & {"neon", "asimd"}),
        "fp16": bool(fl & {"f16c", "fphp", "asimdhp", "fp16", "avx512_fp16"}),
    }
    return info


def _cores() -> dict:
    out: dict = {"logical": os.cpu_count()}
    if hasattr(os, "sched_getaffinity"):
        out["affinity"] = len(os.sched_getaffinity(0))
    else:
        out["affinity"] = os.cpu_count()
    cpu_max = _read("/sys/fs/cgroup/cpu.max")
    if cpu_max:
        quota, _, period = cpu_max.partition(" ")
        out["cgroup_limit"] = None if quota == "max" else round(int(quota) / int(period or 100000), 2)
    return out


def _ram_bytes() -> int | None:
    text = _read("/proc/meminfo")
    if text:
        m = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.M)
        if m:
            return int(m.group(1)) * 1024
    if sys.platform == "darwin":
        v = _probe(_run, ["sysctl", "-n", "hw.memsize"])
        if v:
            return int(v)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _versions() -> dict:
    out: dict = {"python": platform.python_version(), "python_impl": platform.python_implementation()}
    out["numpy"] = np.__version__
    for key, dists in (("edgeseg", ["edgeseg"]), ("onnxruntime", ["onnxruntime", "onnxruntime-gpu"]),
                       ("torch", ["torch"]), ("transformers", ["transformers"]), ("onnx", ["onnx"]),
                       ("opencv", ["opencv-python-headless", "opencv-python"]),
                       ("tensorrt", ["tensorrt", "tensorrt-cu12", "tensorrt-cu11"])):
        v = None
        for d in dists:
            v = _probe(_dist_version, d)
            if v:
                break
        out[key] = v
    # Jetson / system installs of onnxruntime and TensorRT come without package metadata.
    if out["onnxruntime"] is None:
        out["onnxruntime"] = _probe(lambda: __import__("onnxruntime").__version__)
    if out["tensorrt"] is None:
        out["tensorrt"] = _probe(lambda: __import__("tensorrt").__version__)
    torch = sys.modules.get("torch")  # only describe torch's build if something already imported it
    if torch is not None:
        out["torch_cuda"] = _probe(lambda: torch.version.cuda)
        out["torch_threads"] = _probe(torch.get_num_threads)
        out["cudnn"] = _probe(lambda: torch.backends.cudnn.version() if torch.cuda.is_available() else None)
    return out


def _ort_providers() -> list[str] | None:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def _gpus() -> list[dict] | None:
    text = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                 "--format=csv,noheader"])
    if not text:
        return None
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if parts and parts[0]:
            parts += [None] * (4 - len(parts))
            gpus.append({"name": parts[0], "driver": parts[1], "memory": parts[2], "compute_capability": parts[3]})
    return gpus or None


# L4T release -> JetPack (NVIDIA's published pairs; the first match on the prefix wins).
_JETPACK = (("36.4", "6.1/6.2"), ("36.3", "6.0"), ("36.2", "6.0 DP"), ("35.6", "5.1.4"), ("35.5", "5.1.3"),
            ("35.4", "5.1.2"), ("35.3", "5.1.1"), ("35.2", "5.1"), ("35.1", "5.0.2"), ("32.7", "4.6.x"),
            ("32.6", "4.6"), ("32.5", "4.5.x"), ("32.4", "4.4.x"))


def parse_tegra_release(text: str) -> str | None:
    """'# R36 (release), REVISION: 3.0, GCID: ...' -> '36.3.0'."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text or "")
    return f"{m.group(1)}.{m.group(2)}" if m else None


def jetpack_for(l4t: str | None) -> str | None:
    if not l4t:
        return None
    for prefix, jp in _JETPACK:
        if l4t == prefix or l4t.startswith(prefix + "."):
            return jp
    return None


def parse_nvpmodel(text: str | None) -> str | None:
    """'NV Power Mode: MAXN\\n0' -> 'MAXN (0)'."""
    if not text:
        return None
    m = re.search(r"Power Mode:\s*(\S+)", text)
    mode_id = next((ln.strip() for ln in text.splitlines() if ln.strip().isdigit()), None)
    if not m:
        return text.splitlines()[0].strip() or None
    return f"{m.group(1)} ({mode_id})" if mode_id else m.group(1)


def _jetson() -> dict | None:
    release = _read("/etc/nv_tegra_release")
    model = _read("/proc/device-tree/model")
    if release is None and not (model and ("jetson" in model.lower() or "nvidia" in model.lower())):
        return None
    l4t = parse_tegra_release(release or "")
    jp = None
    dpkg = _probe(_run, ["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"])
    if dpkg:
        jp = dpkg.split("-")[0] or None
    return {"model": model, "l4t": l4t, "jetpack": jp or jetpack_for(l4t),
            "power_mode": parse_nvpmodel(_probe(_run, ["nvpmodel", "-q"]))}


def machine_info() -> dict:
    """What produced the numbers. Every probe is guarded: this never raises."""
    return {
        "hostname": _probe(platform.node),
        "os": _probe(lambda: f"{platform.system()} {platform.release()}"),
        "platform": _probe(platform.platform),
        "cpu": _probe(_cpu, default={}),
        "cores": _probe(_cores, default={}),
        "ram_gb": _probe(lambda: round(_ram_bytes() / 2**30, 2)),
        "versions": _probe(_versions, default={}),
        "onnxruntime_providers": _probe(_ort_providers),
        "gpus": _probe(_gpus),
        "jetson": _probe(_jetson),
    }


# =========================================================================== memory
def _maxrss_mb() -> float | None:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB elsewhere


def current_rss_mb() -> float | None:
    """Resident set size now (Linux /proc, else psutil when installed, else None)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss / 2**20


class RssSampler:
    """Samples the resident set in a background thread while a block runs."""

    def __init__(self, every_s: float = _SAMPLE_EVERY_S) -> None:
        self.every_s = every_s
        self.start_mb = None
        self.max_mb = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = None

    def _sample(self) -> None:
        v = current_rss_mb()
        if v is not None:
            self.samples += 1
            self.max_mb = v if self.max_mb is None else max(self.max_mb, v)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> "RssSampler":
        self.start_mb = current_rss_mb()
        self._sample()
        if self.start_mb is not None:
            self._thread = threading.Thread(target=self._loop, name="edgeseg-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()


# =========================================================================== Jetson power
INA3221_ROOT = "/sys/bus/i2c/drivers/ina3221"


def power_rails(root: str = INA3221_ROOT) -> list[tuple[str, Path, Path]]:
    """Jetson INA3221 power monitors: [(label, millivolt file, milliamp file)], [] elsewhere.

    The module's total input rail (VDD_IN, or POM_5V_IN on older boards) comes first when present."""
    rails = []
    for label_file in sorted(Path(root).glob("*/hwmon/hwmon*/in*_label")):
        n = label_file.name[2:-len("_label")]
        volt, curr = label_file.with_name(f"in{n}_input"), label_file.with_name(f"curr{n}_input")
        if volt.is_file() and curr.is_file():
            label = (_read(str(label_file)) or f"in{n}").strip()
            rails.append((label, volt, curr))
    rails.sort(key=lambda r: 0 if r[0] in ("VDD_IN", "POM_5V_IN") else 1)
    return rails


def read_power_w(rails) -> float | None:
    """Instantaneous power of the first (total input) rail, in watts."""
    if not rails:
        return None
    _, volt, curr = rails[0]
    try:
        return float(volt.read_text()) * float(curr.read_text()) / 1e6
    except (OSError, ValueError):
        return None


class PowerSampler:
    """Samples the total input power every ``every_s`` in a thread while the timed loop runs."""

    def __init__(self, rails, every_s: float = 0.01) -> None:
        self.rails, self.every_s, self.samples = rails, every_s, []
        self._stop = threading.Event()

    def _loop(self) -> None:
        while not self._stop.is_set():
            w = read_power_w(self.rails)
            if w is not None:
                self.samples.append(w)
            self._stop.wait(self.every_s)

    def __enter__(self) -> "PowerSampler":
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()

    def energy(self, seconds: float, images: int) -> dict | None:
        if not self.samples or images <= 0:
            return None
        mean_w = float(np.mean(self.samples))
        return {"rail": self.rails[0][0], "mean_power_w": mean_w, "samples": len(self.samples),
                "energy_per_image_mj": mean_w * seconds / images * 1000.0}


def _cuda_device(seg: Segmenter) -> str | None:
    dev = getattr(seg.runner, "device", None)
    return dev if isinstance(dev, str) and dev.startswith("cuda") else None


# =========================================================================== timing
def latency_stats(times_ns: Sequence[int]) -> dict:
    """p50/p90/p99/mean/std/min/max, IQR and robust spread (1.4826 x MAD), all in ms."""
    t = np.asarray(times_ns, dtype=np.float64) / 1e6
    if t.size == 0:
        return dict.fromkeys(_STAT_KEYS) | {"n": 0}
    p25, p50, p75, p90, p99 = np.percentile(t, [25, 50, 75, 90, 99])
    return {
        "n": int(t.size),
        "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
        "mean_ms": float(t.mean()), "std_ms": float(t.std(ddof=1)) if t.size > 1 else 0.0,
        "min_ms": float(t.min()), "max_ms": float(t.max()),
        "iqr_ms": float(p75 - p25), "spread_ms": float(1.4826 * np.median(np.abs(t - p50))),
    }


def _cycle(images: Sequence[np.ndarray], start: int, n: int) -> list[np.ndarray]:
    return [images[(start + i) % len(images)] for i in range(n)]


def _timed(fn, warmup: int, runs: int) -> list[int]:
    for _ in range(warmup):
        fn(-1)
    times = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for i in range(runs):
            t0 = time.perf_counter_ns()
            fn(i)
            times.append(time.perf_counter_ns() - t0)
    finally:
        if gc_was:
            gc.enable()
    return times


def time_model(seg: Segmenter, images: Sequence[np.ndarray], warmup: int = 5, runs: int = 50,
               batch_sizes: Sequence[int] = (1,), keep_times: bool = True) -> dict:
    """Model-only and end-to-end latency per batch size, throughput and memory of one model.

    ``images`` are raw HxWx3 uint8 RGB images at their original sizes; batches cycle through
    them. Returns ``{"batch": {"B": {"model": stats, "e2e": stats, "stages": ...,
    "throughput_ips", "e2e_throughput_ips"}}, "memory": {...}, "warmup", "runs"}``; a batch
    size the model cannot run (e.g. an engine with a fixed batch) gets ``{"error": msg}``
    instead, except the first, whose failure is raised.
    """
    if not images:
        raise DataError("no images to time the model on")
    images = [np.ascontiguousarray(im) for im in images]
    cuda = _cuda_device(seg)
    torch = None
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats(cuda)
    per_batch: dict[str, dict] = {}
    sampler_max, sampler_start, n_samples = None, None, 0
    for k, b in enumerate(batch_sizes):
        b = int(b)
        try:
            fixed = seg.prepare(_cycle(images, 0, b))
            seg.infer(fixed)  # fail here, before timing, if this batch size cannot run
        except Exception as exc:  # noqa: BLE001 - ORT / TensorRT raise their own types
            if k == 0:
                raise
            per_batch[str(b)] = {"error": " ".join(str(exc).split())[:300]}
            log.warning("batch size %d cannot run: %s", b, per_batch[str(b)]["error"])
            continue
        stage_ns: dict[str, list[int]] = {"prepare": [], "infer": [], "finish": []}

        def model_only(_i, fixed=fixed):
            seg.infer(fixed)

        def end_to_end(i, b=b, record=stage_ns):
            batch = _cycle(images, max(i, 0) * b, b)
            t0 = time.perf_counter_ns()
            x = seg.prepare(batch)
            t1 = time.perf_counter_ns()
            outs = seg.infer(x)
            t2 = time.perf_counter_ns()
            seg.finish(outs, [im.shape[:2] for im in batch])
            if i >= 0:
                record["prepare"].append(t1 - t0)
                record["infer"].append(t2 - t1)
                record["finish"].append(time.perf_counter_ns() - t2)

        rails = power_rails(INA3221_ROOT)
        with RssSampler() as rss:
            with PowerSampler(rails) as power:
                model_ns = _timed(model_only, warmup, runs)
            e2e_ns = _timed(end_to_end, warmup, runs)
        if rss.max_mb is not None:
            sampler_max = rss.max_mb if sampler_max is None else max(sampler_max, rss.max_mb)
            sampler_start = rss.start_mb if sampler_start is None else sampler_start
            n_samples += rss.samples
        m, e = latency_stats(model_ns), latency_stats(e2e_ns)
        if keep_times:
            m["times_ms"] = [round(t / 1e6, 4) for t in model_ns]
            e["times_ms"] = [round(t / 1e6, 4) for t in e2e_ns]
        per_batch[str(b)] = {
            "model": m,
            "e2e": e,
            "stages": {f"{s}_p50_ms": float(np.median(v) / 1e6) for s, v in stage_ns.items()},
            "throughput_ips": b * runs * 1e9 / sum(model_ns),
            "energy": power.energy(sum(model_ns) / 1e9, b * runs) if rails else None,
            "e2e_throughput_ips": b * runs * 1e9 / sum(e2e_ns),
        }
    memory = {
        "rss_peak_mb": _probe(_maxrss_mb),
        "rss_loop_start_mb": sampler_start,
        "rss_loop_max_mb": sampler_max,
        "rss_loop_delta_mb": None if sampler_max is None else sampler_max - sampler_start,
        "rss_samples": n_samples,
        "cuda_peak_mb": None,
    }
    if cuda:
        memory["cuda_peak_mb"] = torch.cuda.max_memory_allocated(cuda) / 2**20
    return {"warmup": int(warmup), "runs": int(runs), "batch": per_batch, "memory": memory}


# =========================================================================== lesions
def connected_components(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Label the connected foreground regions of a 2-D mask.

    -> (labels int32 HxW with 0 = background and 1..n the components, areas int64 (n,) where
    ``areas[i]`` is the pixel count of label ``i + 1``).
    """
    import cv2

    if connectivity not in (4, 8):
        raise ConfigError(f"connectivity must be 4 or 8, got {connectivity}")
    m = np.ascontiguousarray(np.asarray(mask) > 0, dtype=np.uint8)
    if m.ndim != 2:
        raise DataError(f"expected a 2-D mask, got shape {m.shape}")
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=connectivity, ltype=cv2.CV_32S)
    return labels, stats[1:n, cv2.CC_STAT_AREA].astype(np.int64)


def lesion_hits(pred: np.ndarray, gt: np.ndarray, rule: str = "coverage", threshold: float | None = None,
                connectivity: int = 8) -> list[dict]:
    """One record per ground-truth lesion: ``area``, ``area_frac`` (of the image), ``coverage``
    (share of its pixels predicted foreground), ``iou`` (vs the predicted components touching
    it) and ``detected`` under ``rule`` (coverage >= 0.5, or iou > 0.1)."""
    if rule not in DETECTION_RULES:
        raise ConfigError(f"unknown lesion detection rule {rule!r}; known: {', '.join(DETECTION_RULES)}")
    thr = DETECTION_RULES[rule] if threshold is None else float(threshold)
    p = np.asarray(pred) > 0
    g = np.asarray(gt) > 0
    if p.shape != g.shape:
        raise DataError(f"prediction and ground truth shapes differ: {p.shape} vs {g.shape}")
    glab, gareas = connected_components(g, connectivity)
    if gareas.size == 0:
        return []
    plab, _ = connected_components(p, connectivity)
    n = gareas.size
    inter = np.bincount(glab[p], minlength=n + 1)[1:]  # predicted pixels inside each lesion
    out = []
    for i in range(n):
        lesion = glab == i + 1
        touching = np.unique(plab[lesion])
        touching = touching[touching > 0]
        if touching.size:
            pmask = np.isin(plab, touching)
            union = int(np.count_nonzero(pmask | lesion))
            iou = float(inter[i]) / union if union else 0.0
        else:
            iou = 0.0
        coverage = float(inter[i]) / float(gareas[i])
        detected = coverage >= thr if rule == "coverage" else iou > thr
        out.append({"area": int(gareas[i]), "area_frac": float(gareas[i]) / g.size, "coverage": coverage,
                    "iou": iou, "detected": bool(detected)})
    return out


def bucket_of(area_frac: float, buckets=SIZE_BUCKETS) -> str:
    for name, lo, hi in buckets:
        if lo <= area_frac < hi:
            return name
    return buckets[-1][0]


def lesion_sensitivity(hits: Sequence[dict], ref_hits: Sequence[dict] | None = None,
                       buckets=SIZE_BUCKETS) -> dict:
    """Detected / total lesions per size bucket and overall; with ``ref_hits`` (the same
    lesions scored for the reference, in the same order) also the lesions the model lost."""
    names = [b[0] for b in buckets] + ["all"]
    out = {n: {"lesions": 0, "detected": 0, "sensitivity": None} for n in names}
    if ref_hits is not None:
        for n in names:
            out[n]["lost_vs_reference"] = 0
    for i, h in enumerate(hits):
        for n in (bucket_of(h["area_frac"], buckets), "all"):
            out[n]["lesions"] += 1
            out[n]["detected"] += int(h["detected"])
            if ref_hits is not None and ref_hits[i]["detected"] and not h["detected"]:
                out[n]["lost_vs_reference"] += 1
    for n in names:
        if out[n]["lesions"]:
            out[n]["sensitivity"] = out[n]["detected"] / out[n]["lesions"]
    return out


# =========================================================================== accuracy
@dataclass
class Scores:
    """Per-image scores of one model on a set (what drops are computed from)."""

    summary: dict
    names: list[str]
    dice: np.ndarray
    iou: np.ndarray
    hits: list[list[dict]]  # per image, per ground-truth lesion
    masks: list[np.ndarray] = field(default_factory=list, repr=False)  # bit-packed foreground
    shapes: list[tuple[int, int]] = field(default_factory=list, repr=False)


def _pack(mask: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(mask) > 0)


def _unpack(packed: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape).astype(bool)


def _image_dice_iou(res: dict, multiclass: bool) -> tuple[float, float]:
    if not multiclass:
        return float(res["dice"]), float(res["iou"])
    return (float(np.mean([r["dice"] for r in res.values()])), float(np.mean([r["iou"] for r in res.values()])))


def _iter_pairs(samples, num_classes: int):
    from edgeseg.data import folders as D

    for s in samples:
        if isinstance(s, D.Sample):
            image, gt = D.load_pair(s, num_classes)
            yield s.name, image, gt
        else:
            yield s  # (name, image, gt)


def score(seg_or_masks, samples, num_classes: int | None = None, rule: str = "coverage",
          threshold: float | None = None, keep_masks: bool = True, progress: bool = False) -> Scores:
    """Score a Segmenter (or a ``{name: mask}`` mapping of its predictions) on labelled samples.

    ``samples`` are ``data.Sample`` objects or ``(name, image, gt)`` triples.
    """
    from tqdm import tqdm

    masks_given = isinstance(seg_or_masks, Mapping)
    nc = num_classes or (2 if masks_given else seg_or_masks.num_classes)
    acc = MetricAccumulator(num_classes=nc)
    names, dice, iou, hits, packed, shapes = [], [], [], [], [], []
    for name, image, gt in tqdm(_iter_pairs(samples, nc), total=len(samples), desc="accuracy",
                                disable=not progress, file=sys.stderr, leave=False):
        if masks_given:
            if name not in seg_or_masks:
                raise DataError(f"reference masks have no entry for image {name!r}")
            mask = np.asarray(seg_or_masks[name])
            if mask.shape != gt.shape:
                raise DataError(f"reference mask for {name!r} is {mask.shape}, ground truth is {gt.shape}")
        else:
            mask = seg_or_masks.predict(image)
        res = acc.add(mask, gt, name=name)
        d, j = _image_dice_iou(res, acc.multiclass)
        names.append(name)
        dice.append(d)
        iou.append(j)
        hits.append(lesion_hits(mask, gt, rule, threshold))
        if keep_masks:
            packed.append(_pack(mask))
            shapes.append(mask.shape)
    if not names:
        raise DataError("nothing to score: no images")
    return Scores(acc.summary(), names, np.asarray(dice), np.asarray(iou), hits, packed, shapes)


def compare_scores(scores: Scores, ref: Scores | None, drop_threshold: float = 0.05) -> dict:
    """The accuracy block of a bench row: Dice/IoU, drop statistics, lesion sensitivity."""
    s = scores.summary
    out: dict = {
        "n_images": len(scores.names),
        "dice": float(s["mean_dice"]), "iou": float(s["mean_iou"]), "median_dice": float(s["median_dice"]),
        "pooled_dice": s.get("pooled_dice"),
        "drop": None,
        "agreement_dice": None,
        "lesions": lesion_sensitivity([h for hs in scores.hits for h in hs]),
        "per_image": [{"name": n, "dice": float(d), "iou": float(j)}
                      for n, d, j in zip(scores.names, scores.dice, scores.iou)],
    }
    if ref is None:
        return out
    if ref.names != scores.names:
        raise DataError("model and reference were scored on different images")
    drop = ref.dice - scores.dice
    worst = int(np.argmax(drop))
    out["drop"] = {
        "reference_dice": float(ref.summary["mean_dice"]),
        "mean": float(drop.mean()), "median": float(np.median(drop)),
        "p95": float(np.percentile(drop, 95)), "max": float(drop[worst]),
        "worst_image": scores.names[worst], "threshold": drop_threshold,
        "share_over_threshold": float(np.mean(drop > drop_threshold)),
        "images_over_threshold": int(np.count_nonzero(drop > drop_threshold)),
        "iou_mean": float((ref.iou - scores.iou).mean()),
    }
    for row, d, rd in zip(out["per_image"], drop, ref.dice):
        row["reference_dice"] = float(rd)
        row["dice_drop"] = float(d)
    if scores.masks and ref.masks:
        agree = [dice_score(_unpack(a, sh), _unpack(b, sh)) for a, b, sh in zip(scores.masks, ref.masks, scores.shapes)]
        out["agreement_dice"] = float(np.mean(agree))
    flat = [h for hs in scores.hits for h in hs]
    ref_flat = [h for hs in ref.hits for h in hs]
    if len(flat) == len(ref_flat):
        out["lesions"] = lesion_sensitivity(flat, ref_flat)
    return out


def accuracy(seg: Segmenter, reference, samples, rule: str = "coverage", threshold: float | None = None,
             drop_threshold: float = 0.05, progress: bool = False) -> dict:
    """Dice/IoU of ``seg`` and their drop vs ``reference`` on labelled ``samples``.

    ``reference``: None (no drop), a Segmenter (scored here), a ``{name: predicted mask}``
    mapping, or ``Scores`` from :func:`score`. See the module doc for every figure.
    """
    mine = score(seg, samples, rule=rule, threshold=threshold, progress=progress)
    if reference is None or isinstance(reference, Scores):
        ref = reference
    elif isinstance(reference, Mapping):
        ref = score(reference, samples, num_classes=seg.num_classes, rule=rule, threshold=threshold)
    else:
        ref = score(reference, samples, rule=rule, threshold=threshold, progress=progress)
    return compare_scores(mine, ref, drop_threshold)


# =========================================================================== model facts
def model_kind(path: Path) -> str:
    from edgeseg.runners import is_checkpoint
    from edgeseg.runtime.bundle import is_bundle

    if is_checkpoint(path):
        return "checkpoint"
    if is_bundle(path):
        return "bundle"
    if path.suffix in (".engine", ".plan"):
        return "engine"
    if path.suffix == ".onnx":
        return "onnx"
    return "unknown"


def model_size_mb(path: Path, seg: Segmenter | None = None) -> float | None:
    """Bytes of the model's weights/graph files: safetensors of a checkpoint, the files listed
    in a bundle's manifest, an .onnx (plus external data next to it) or an engine."""
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
    return sum(p.stat().st_size for p in files if p.is_file()) / 1e6


def model_precision(seg: Segmenter) -> str:
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


def _threads_used(seg: Segmenter, requested: int | None):
    if seg.runner.name.startswith("torch"):
        import torch

        return torch.get_num_threads()
    return requested  # None: ONNX Runtime's default (one per physical core)


# =========================================================================== bench
def _labels(paths: list[Path]) -> list[str]:
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def _clean(o):
    """NaN/inf -> None, numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (np.floating, float)):
        v = float(o)
        return v if math.isfinite(v) else None
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, Path):
        return str(o)
    return o


def _flatten(row: dict, timing: dict, acc: dict) -> None:
    """Scalar headline figures on the row itself (CSV columns, tables, baseline checks)."""
    batches = [b for b, v in timing["batch"].items() if "error" not in v]
    first = timing["batch"][batches[0]]
    for k in _STAT_KEYS:
        row[k] = first["model"][k]
        row[f"e2e_{k}"] = first["e2e"][k]
    row["latency_batch"] = int(batches[0])
    best = max(batches, key=lambda b: timing["batch"][b]["throughput_ips"])
    row["throughput_ips"] = timing["batch"][best]["throughput_ips"]
    row["throughput_batch"] = int(best)
    row["e2e_throughput_ips"] = max(timing["batch"][b]["e2e_throughput_ips"] for b in batches)
    mem = timing["memory"]
    for k in ("rss_peak_mb", "rss_loop_max_mb", "rss_loop_delta_mb", "rss_load_delta_mb", "cuda_peak_mb"):
        row[k] = mem.get(k)
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
    """Benchmark every model on every backend; see the module doc for what each figure means.

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
        backends = [None] if kind in ("checkpoint", "engine") else list(cfg.providers)
        for prov in backends:
            rss0 = current_rss_mb()
            seg = open_model(path, providers=list(prov) if prov else None, threads=cfg.threads,
                             device=cfg.device)
            try:
                if num_classes is None:
                    num_classes = seg.num_classes
                elif seg.num_classes != num_classes:
                    raise ConfigError(f"{path} has {seg.num_classes} classes, the other models {num_classes}")
                log.info("timing %s on %s", label, seg.runner.name)
                timing = time_model(seg, timing_images, cfg.warmup, cfg.runs, cfg.batch_sizes, cfg.keep_times)
                rss1 = timing["memory"]["rss_loop_start_mb"]
                timing["memory"]["rss_load_delta_mb"] = (rss1 - rss0) if rss0 is not None and rss1 else None
                sc = score(seg, samples, rule=cfg.rule, threshold=cfg.threshold, progress=progress)
                row = {
                    "name": label, "model": str(path), "kind": kind, "backend": seg.runner.name,
                    "providers": list(getattr(seg.runner, "providers", []) or []) or None,
                    "precision": model_precision(seg), "size_mb": model_size_mb(path, seg),
                    "threads": _threads_used(seg, cfg.threads), "is_reference": False,
                    "latency": timing["batch"], "memory": timing["memory"],
                }
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
        _flatten(row, {"batch": row["latency"], "memory": row["memory"]}, acc)

    settings = asdict(cfg)
    settings.update(batch_sizes=list(cfg.batch_sizes), providers=[",".join(p) for p in cfg.providers],
                    rule_threshold=cfg.threshold, size_buckets=[[n, lo, hi] for n, lo, hi in SIZE_BUCKETS],
                    timing_images=len(timing_images), timer="time.perf_counter_ns")
    from edgeseg import __version__ as edgeseg_version

    return _clean({
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


# =========================================================================== baseline
def load_result(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"baseline file not found: {path}")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"baseline {path} is not valid JSON: {exc}") from None
    if not isinstance(d, dict) or d.get("schema") != SCHEMA or not isinstance(d.get("rows"), list):
        raise ConfigError(f"baseline {path} is not an edgeseg bench result (expected schema {SCHEMA!r}); "
                          "write one with `edgeseg bench ... --json FILE`")
    return d


def _row_key(row: dict) -> tuple[str, str]:
    return row.get("name") or Path(row.get("model", "")).name, row.get("backend", "")


def compare_baseline(current: dict, baseline: dict, tol_rel: float = 0.10, tol_dice: float = 0.01) -> list[str]:
    """Regressions of ``current`` vs ``baseline``, one short string each (empty: none).

    Rows are matched by (name, backend). Latency regresses when a model-only or end-to-end
    p50 (any batch size both measured) is slower by more than
    ``max(tol_rel x baseline p50, 3 x spread)``, the spread being the larger of the two runs'
    robust spreads; Dice regresses when it is lower by more than ``tol_dice``.
    Raises ConfigError when no row matches (nothing would be checked).
    """
    if tol_rel < 0 or tol_dice < 0:
        raise ConfigError("baseline tolerances must be non-negative")
    base = {_row_key(r): r for r in baseline.get("rows", [])}
    matched = 0
    out: list[str] = []
    for row in current.get("rows", []):
        key = _row_key(row)
        b = base.get(key)
        if b is None:
            log.warning("no baseline for %s on %s", *key)
            continue
        matched += 1
        label = f"{key[0]} ({key[1]})"
        for bs, lat in (row.get("latency") or {}).items():
            blat = (b.get("latency") or {}).get(bs)
            if not blat or "error" in lat or "error" in blat:
                continue
            for part, what in (("model", "p50"), ("e2e", "e2e p50")):
                cur, old = lat[part], blat[part]
                if cur.get("p50_ms") is None or old.get("p50_ms") is None:
                    continue
                spread = max(cur.get("spread_ms") or 0.0, old.get("spread_ms") or 0.0)
                allowed = max(tol_rel * old["p50_ms"], 3.0 * spread)
                if cur["p50_ms"] - old["p50_ms"] > allowed:
                    out.append(f"{label} batch {bs} {what} {cur['p50_ms']:.2f} ms vs {old['p50_ms']:.2f} ms "
                               f"(+{cur['p50_ms'] - old['p50_ms']:.2f} > {allowed:.2f} allowed)")
        cd, bd = row.get("dice"), b.get("dice")
        if cd is not None and bd is not None and bd - cd > tol_dice:
            out.append(f"{label} Dice {cd:.4f} vs {bd:.4f} (-{bd - cd:.4f} > {tol_dice:g} allowed)")
    if not matched:
        raise ConfigError("the baseline shares no (model, backend) row with this run; nothing to compare")
    cur_cpu = ((current.get("machine") or {}).get("cpu") or {}).get("model")
    base_cpu = ((baseline.get("machine") or {}).get("cpu") or {}).get("model")
    if cur_cpu != base_cpu:
        log.warning("baseline was measured on %r, this run on %r: timings may not compare", base_cpu, cur_cpu)
    if (current.get("data") or {}).get("fingerprint") != (baseline.get("data") or {}).get("fingerprint"):
        log.warning("baseline was scored on different images: Dice may not compare")
    return out
