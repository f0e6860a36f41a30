"""Time one model: latency percentiles, throughput, memory, and how noisy the machine was.

``time_model`` returns a :class:`Timing`; ``Timing.to_dict()`` is the JSON form the bench
writes (schema ``edgeseg.bench/1``).

What is timed
    ``time.perf_counter_ns`` around each call, warm-up calls first, garbage collection off
    during the timed loop. Two things are timed separately, per batch size:

    - *model only*: ``seg.infer`` on one batch prepared once (what the graph/engine costs);
    - *end to end*: ``seg.prepare`` + ``seg.infer`` + ``seg.finish`` on raw uint8 RGB images
      of their original sizes, cycling through the images (what an application pays).

    Each gets a :class:`LatencyStats`: p50/p90/p99/mean/std/min/max in ms per batch call,
    ``iqr_ms`` and ``spread_ms`` = 1.4826 x the median absolute deviation (a robust standard
    deviation; the noise figure ``compare_baseline`` uses). Throughput is images per second
    over the whole timed loop: batch size x runs / total time.

Memory (MB = 10^6 bytes)
    ``rss_peak_mb`` is the process high-water mark (``getrusage``; it covers the whole process
    life, so it only grows from row to row). ``rss_loop_max_mb`` / ``rss_loop_delta_mb`` come
    from a thread sampling the resident set every 10 ms during the timed loops.
    ``rss_load_delta_mb`` (set by ``bench``) is the growth from just before the model was
    opened to the start of its first timed loop. ``cuda_peak_mb`` is torch's
    ``max_memory_allocated`` when the model runs on torch CUDA.

Noise (``Timing.noise``): a timing is marked ``noisy`` with its reasons when
    - the model-only ``spread_ms`` exceeds ``NOISY_SPREAD_FRACTION`` (10%) of its p50 at any
      batch size; or
    - other processes kept more than ``max(cores - threads, 0) + OTHERS_MARGIN_CORES`` cores
      busy on average during the timed loops. "Other processes" is measured, not guessed:
      the busy CPU time of the cores this process may use (``/proc/stat``) minus this
      process's own CPU time (``os.times``), over the wall time of the loops. ``threads`` is
      the number of inference threads (all usable cores when not set). Loops shorter than
      ``MIN_ACCOUNTED_S`` are too short for 10 ms CPU accounting; then, and where
      ``/proc/stat`` does not exist, the 1-minute load average taken before the loops is
      used instead: above ``max(cores - threads, 0) + LOAD_MARGIN`` is busy. (The load
      average lags by a minute and includes this process's own earlier work, which is why it
      is only the fallback.) The load averages before and after are always recorded.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from edgeseg.errors import DataError
from edgeseg.measure import sampling
from edgeseg.measure.machine import _probe, load_average, usable_cores

log = logging.getLogger(__name__)

STAT_KEYS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "iqr_ms", "spread_ms")
NOISY_SPREAD_FRACTION = 0.10
OTHERS_MARGIN_CORES = 0.5
LOAD_MARGIN = 1.0
MIN_ACCOUNTED_S = 0.25


# --------------------------------------------------------------------------- types
@dataclass(frozen=True)
class LatencyStats:
    """Latency of ``n`` timed calls, in ms per call (None when nothing was timed)."""

    n: int
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    iqr_ms: float | None = None
    spread_ms: float | None = None
    times_ms: tuple[float, ...] | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        times = d.pop("times_ms")
        if times is not None:
            d["times_ms"] = list(times)
        return d


@dataclass(frozen=True)
class BatchTiming:
    """Everything measured at one batch size."""

    batch: int
    model: LatencyStats
    e2e: LatencyStats
    stages: dict  # {"prepare_p50_ms", "infer_p50_ms", "finish_p50_ms"} of the end-to-end loop
    throughput_ips: float
    e2e_throughput_ips: float
    energy: dict | None = None  # Jetson only: mean power and energy per image

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(), "e2e": self.e2e.to_dict(), "stages": dict(self.stages),
                "throughput_ips": self.throughput_ips, "energy": self.energy,
                "e2e_throughput_ips": self.e2e_throughput_ips}


@dataclass(frozen=True)
class Memory:
    rss_peak_mb: float | None = None
    rss_loop_start_mb: float | None = None
    rss_loop_max_mb: float | None = None
    rss_loop_delta_mb: float | None = None
    rss_samples: int = 0
    cuda_peak_mb: float | None = None
    rss_load_delta_mb: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Noise:
    """How busy the machine was while the loops ran; ``reasons`` empty = a clean timing."""

    cores: int
    threads: int
    wall_s: float
    process_cpu_s: float | None
    others_cores: float | None  # cores kept busy by other processes, on average
    load_before: float | None
    load_after: float | None
    reasons: tuple[str, ...] = ()

    @property
    def noisy(self) -> bool:
        return bool(self.reasons)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        d["noisy"] = self.noisy
        d["spread_fraction_limit"] = NOISY_SPREAD_FRACTION
        return d


@dataclass(frozen=True)
class Timing:
    """``time_model``'s result: per batch size, memory, and the noise of the measurement."""

    warmup: int
    runs: int
    batches: dict[int, BatchTiming]
    errors: dict[int, str]  # batch sizes that could not run -> why
    memory: Memory
    noise: Noise

    @property
    def first(self) -> BatchTiming:
        """The first batch size that ran (the headline latency)."""
        return next(iter(self.batches.values()))

    @property
    def best(self) -> BatchTiming:
        """The batch size with the highest model-only throughput."""
        return max(self.batches.values(), key=lambda b: b.throughput_ips)

    @property
    def noisy(self) -> bool:
        return self.noise.noisy

    @property
    def noisy_reason(self) -> str | None:
        return "; ".join(self.noise.reasons) or None

    def latency_dict(self) -> dict:
        """``{"B": batch dict or {"error": msg}}`` in the order the batch sizes were asked."""
        out = {str(b): t.to_dict() for b, t in self.batches.items()}
        out.update({str(b): {"error": e} for b, e in self.errors.items()})
        return dict(sorted(out.items(), key=lambda kv: int(kv[0])))

    def to_dict(self) -> dict:
        return {"warmup": self.warmup, "runs": self.runs, "batch": self.latency_dict(),
                "memory": self.memory.to_dict(), "noise": self.noise.to_dict(),
                "noisy": self.noisy, "noisy_reason": self.noisy_reason}


# --------------------------------------------------------------------------- statistics
def latency_stats(times_ns: Sequence[int], keep_times: bool = False) -> LatencyStats:
    """p50/p90/p99/mean/std/min/max, IQR and robust spread (1.4826 x MAD), all in ms."""
    t = np.asarray(times_ns, dtype=np.float64) / 1e6
    if t.size == 0:
        return LatencyStats(n=0)
    p25, p50, p75, p90, p99 = np.percentile(t, [25, 50, 75, 90, 99])
    return LatencyStats(
        n=int(t.size), p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99),
        mean_ms=float(t.mean()), std_ms=float(t.std(ddof=1)) if t.size > 1 else 0.0,
        min_ms=float(t.min()), max_ms=float(t.max()), iqr_ms=float(p75 - p25),
        spread_ms=float(1.4826 * np.median(np.abs(t - p50))),
        times_ms=tuple(round(float(x), 4) for x in t) if keep_times else None,
    )


# --------------------------------------------------------------------------- noise
def _affinity() -> set[int] | None:
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def cpu_busy_s() -> float | None:
    """Busy CPU seconds since boot of the cores this process may use (``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    mine = _affinity()
    busy = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        if mine is not None and int(name[3:]) not in mine:
            continue
        v = [int(x) for x in rest.split()]
        busy += sum(v[:3]) + sum(v[5:8])  # user nice system + irq softirq steal (guest is inside user)
    return busy / os.sysconf("SC_CLK_TCK")


def process_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def assess_noise(batches: Sequence[BatchTiming], cores: int, threads: int, wall_s: float,
                 others_cores: float | None, load_before: float | None) -> list[str]:
    """The reasons a timing is noisy (see the module doc); empty when it is clean."""
    reasons = []
    for b in batches:
        st = b.model
        if st.p50_ms and st.spread_ms is not None and st.spread_ms > NOISY_SPREAD_FRACTION * st.p50_ms:
            reasons.append(f"batch {b.batch} spread {st.spread_ms:.2f} ms is {st.spread_ms / st.p50_ms:.0%} of p50 "
                           f"(> {NOISY_SPREAD_FRACTION:.0%})")
    free = max(cores - threads, 0)
    if others_cores is not None and wall_s >= MIN_ACCOUNTED_S:
        if others_cores > free + OTHERS_MARGIN_CORES:
            reasons.append(f"other processes kept {others_cores:.1f} of {cores} cores busy while timing "
                           f"{threads} thread(s)")
    elif load_before is not None and load_before > free + LOAD_MARGIN:
        reasons.append(f"1-minute load average {load_before:.1f} on {cores} cores before timing "
                       f"{threads} thread(s)")
    return reasons


class _NoiseWatch:
    """Wall time, this process's CPU time and the cores' busy time around the timed loops."""

    def __enter__(self) -> "_NoiseWatch":
        self.load_before = load_average()
        self.busy0, self.cpu0, self.t0 = cpu_busy_s(), process_cpu_s(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s = time.perf_counter() - self.t0
        self.cpu_s = process_cpu_s() - self.cpu0
        busy1 = cpu_busy_s()
        self.others_cores = None
        if self.busy0 is not None and busy1 is not None and self.wall_s > 0:
            self.others_cores = max(0.0, (busy1 - self.busy0 - self.cpu_s) / self.wall_s)
        self.load_after = load_average()

    def result(self, batches: Sequence[BatchTiming], threads: int | None) -> Noise:
        cores = usable_cores()
        used = min(int(threads), cores) if threads else cores
        reasons = assess_noise(batches, cores, used, self.wall_s, self.others_cores, self.load_before)
        for r in reasons:
            log.warning("noisy timing: %s", r)
        return Noise(cores=cores, threads=used, wall_s=round(self.wall_s, 3), process_cpu_s=round(self.cpu_s, 3),
                     others_cores=None if self.others_cores is None else round(self.others_cores, 3),
                     load_before=self.load_before, load_after=self.load_after, reasons=tuple(reasons))


# --------------------------------------------------------------------------- timing
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


def _cuda_device(seg) -> str | None:
    dev = getattr(seg.runner, "device", None)
    return dev if isinstance(dev, str) and dev.startswith("cuda") else None


def _time_batch(seg, images, b: int, fixed, warmup: int, runs: int, keep_times: bool) -> BatchTiming:
    stage_ns: dict[str, list[int]] = {"prepare": [], "infer": [], "finish": []}

    def model_only(_i):
        seg.infer(fixed)

    def end_to_end(i):
        batch = _cycle(images, max(i, 0) * b, b)
        t0 = time.perf_counter_ns()
        x = seg.prepare(batch)
        t1 = time.perf_counter_ns()
        outs = seg.infer(x)
        t2 = time.perf_counter_ns()
        seg.finish(outs, [im.shape[:2] for im in batch])
        if i >= 0:
            stage_ns["prepare"].append(t1 - t0)
            stage_ns["infer"].append(t2 - t1)
            stage_ns["finish"].append(time.perf_counter_ns() - t2)

    rails = sampling.power_rails(sampling.INA3221_ROOT)
    with sampling.PowerSampler(rails) as power:
        model_ns = _timed(model_only, warmup, runs)
    e2e_ns = _timed(end_to_end, warmup, runs)
    return BatchTiming(
        batch=b, model=latency_stats(model_ns, keep_times), e2e=latency_stats(e2e_ns, keep_times),
        stages={f"{s}_p50_ms": float(np.median(v) / 1e6) for s, v in stage_ns.items()},
        throughput_ips=b * runs * 1e9 / sum(model_ns),
        e2e_throughput_ips=b * runs * 1e9 / sum(e2e_ns),
        energy=power.energy(sum(model_ns) / 1e9, b * runs) if rails else None,
    )


def time_model(seg, images: Sequence[np.ndarray], warmup: int = 5, runs: int = 50,
               batch_sizes: Sequence[int] = (1,), keep_times: bool = True, threads: int | None = None) -> Timing:
    """Model-only and end-to-end latency per batch size, throughput, memory and noise of one model.

    ``seg`` is a ``Segmenter``; ``images`` are raw HxWx3 uint8 RGB images at their original
    sizes; batches cycle through them. ``threads``: the inference threads the model uses (for
    the noise check; None = every usable core). A batch size the model cannot run (e.g. an
    engine with a fixed batch) is listed in ``Timing.errors``, except the first, whose
    failure is raised.
    """
    if not images:
        raise DataError("no images to time the model on")
    images = [np.ascontiguousarray(im) for im in images]
    cuda = _cuda_device(seg)
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats(cuda)
    batches: dict[int, BatchTiming] = {}
    errors: dict[int, str] = {}
    rss_start, rss_max, n_samples = None, None, 0
    with _NoiseWatch() as watch:
        for k, b in enumerate(int(b) for b in batch_sizes):
            try:
                fixed = seg.prepare(_cycle(images, 0, b))
                seg.infer(fixed)  # fail here, before timing, if this batch size cannot run
            except Exception as exc:  # noqa: BLE001 - ORT / TensorRT raise their own types
                if k == 0:
                    raise
                errors[b] = " ".join(str(exc).split())[:300]
                log.warning("batch size %d cannot run: %s", b, errors[b])
                continue
            with sampling.RssSampler() as rss:
                batches[b] = _time_batch(seg, images, b, fixed, warmup, runs, keep_times)
            if rss.max_mb is not None:
                rss_max = rss.max_mb if rss_max is None else max(rss_max, rss.max_mb)
                rss_start = rss.start_mb if rss_start is None else rss_start
                n_samples += rss.samples
    memory = Memory(rss_peak_mb=_probe(sampling.maxrss_mb), rss_loop_start_mb=rss_start, rss_loop_max_mb=rss_max,
                    rss_loop_delta_mb=None if rss_max is None else rss_max - rss_start, rss_samples=n_samples)
    if cuda:
        import torch

        memory = replace(memory, cuda_peak_mb=torch.cuda.max_memory_allocated(cuda) / 1e6)
    return Timing(warmup=int(warmup), runs=int(runs), batches=batches, errors=errors, memory=memory,
                  noise=watch.result(list(batches.values()), threads))
