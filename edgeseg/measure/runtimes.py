"""Which runtime runs this model fastest on this machine: time it under each, side by side.

:func:`time_runtimes` opens one model (a bundle folder or an edgeseg ONNX file) under each named
runtime (``edgeseg.runtime.runners.RUNTIMES``: onnxruntime, openvino) with the same thread
count, feeds every runtime the same pre-processed batch, and times model-only ``infer`` calls
in alternating *blocks*: :data:`BLOCKS` blocks per runtime, the order rotating from block to
block so a slow spell of the machine falls on all runtimes alike, each block after its own
warm-up with only that runtime's session open. Calls interleaved one by one with both sessions
open were tried first and are wrong on a small machine: the idle thread pool of one runtime
steals the cores of the other (on the 2-core development machine the folded Kvasir teacher
measured 17.4 ms under ONNX Runtime and 15.3 ms under OpenVINO that way, against 16.2 and 8.1 ms
each alone; ``benchmarks/results/speed_front.md`` times every configuration in its own process).
It returns a :class:`RuntimeTiming`: per-runtime p50 / p90 / spread (1.4826 x MAD) in ms,
the winner, the ratio of each runtime's p50 to the winner's, the machine's CPU model and the
inference-relevant CPU flags (AVX2, AVX-512, VNNI, AMX), the load average before and after,
and the cores other processes kept busy during the loop.

The winner is the runtime with the lowest p50, except that the default runtime (ONNX Runtime,
the base dependency) keeps the title unless another is faster by more than ``margin`` (5%):
a difference inside the noise of a shared machine does not justify an optional dependency.
Runtimes that are not installed or cannot open the model are listed under ``skipped`` with the
one-line reason, never silently dropped; when none can run the model, ``RuntimeError``.

:func:`record_runtime` writes a timing into a manifest dict as its ``runtime`` section
(``{"preferred", "measured", "cpu"}``), which ``Segmenter(path, runtime="auto")`` reads.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgeseg.errors import ConfigError
from edgeseg.measure.machine import load_average, machine_info, usable_cores
from edgeseg.measure.timing import (NOISY_SPREAD_FRACTION, OTHERS_MARGIN_CORES, cpu_busy_s, latency_stats,
                                    process_cpu_s)
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.runners import RUNTIMES, runtime_names

log = logging.getLogger(__name__)

DEFAULT_RUNTIMES = ("onnxruntime", "openvino")
BLOCKS = 3  # time_runtimes: each runtime timed in this many blocks, alternating
MARGIN = 0.05  # another runtime must beat ONNX Runtime's p50 by more than this to win


@dataclass(frozen=True)
class RuntimeTiming:
    """:func:`time_runtimes`' result; ``to_dict()`` is its JSON form."""

    model: str
    winner: str
    p50_ms: dict[str, float]
    p90_ms: dict[str, float]
    spread_ms: dict[str, float]
    ratio_to_winner: dict[str, float]  # p50 / winner's p50 (1.0 for the winner)
    skipped: dict[str, str]  # runtime -> why it did not run
    threads: int | None
    batch: int
    warmup: int
    runs: int
    margin: float
    cpu: dict  # {"model", "flags": {"avx2", "avx512", "vnni", "amx"}}
    load_before: float | None
    load_after: float | None
    others_cores: float | None  # cores other processes kept busy during the timed rounds
    noisy_reason: str | None  # why the figures are unreliable (edgeseg.measure.timing's rules), None if clean
    versions: dict = field(default_factory=dict)  # runtime -> library version
    created: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_facts(info: dict | None = None) -> dict:
    """The CPU model and the flags that decide which runtime/precision is fast here."""
    cpu = (info or machine_info()).get("cpu") or {}
    flags = set(cpu.get("flags") or [])
    return {"model": cpu.get("model"), "machine": cpu.get("machine"),
            "flags": {"avx2": "avx2" in flags, "avx512": any(f.startswith("avx512") for f in flags),
                      "vnni": any("vnni" in f for f in flags), "amx": any(f.startswith("amx") for f in flags)}}


def _open(model: Path, runtime: str, threads: int | None):
    from edgeseg.runtime.segmenter import Segmenter

    return Segmenter(model, threads=threads, runtime=runtime)


def _batch(seg, batch: int, images: Sequence[np.ndarray] | None) -> np.ndarray:
    """The one input every runtime gets: real images pre-processed by the bundle's own rules, or
    (none given) a fixed pseudo-random RGB image; model-only time does not depend on the pixels."""
    if images:
        ims = [images[i % len(images)] for i in range(batch)]
    else:
        pp = seg.preprocess_spec
        rng = np.random.default_rng(0)
        ims = [rng.integers(0, 256, (pp.height, pp.width, 3), dtype=np.uint8) for _ in range(batch)]
    return seg.prepare(ims)


@dataclass(frozen=True)
class Interleaved:
    times: dict[str, list[int]]  # name -> ns per call, in call order
    wall_s: float
    load_before: float | None
    others_cores: float | None  # cores other processes kept busy during the timed rounds


def interleave(calls: dict[str, Callable[[], object]], warmup: int = 10, runs: int = 50) -> Interleaved:
    """Time several calls side by side: ``warmup`` untimed rounds, then ``runs`` rounds, each
    calling every entry once (``time.perf_counter_ns``, garbage collection off), the order rotating
    from round to round so that load from other processes falls on all of them alike."""
    names = list(calls)
    for _ in range(int(warmup)):
        for n in names:
            calls[n]()
    times: dict[str, list[int]] = {n: [] for n in names}
    load_before = load_average()
    busy0, cpu0, t0 = cpu_busy_s(), process_cpu_s(), time.perf_counter()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for r in range(int(runs)):
            for k in range(len(names)):
                n = names[(r + k) % len(names)]
                s = time.perf_counter_ns()
                calls[n]()
                times[n].append(time.perf_counter_ns() - s)
    finally:
        if gc_was:
            gc.enable()
    wall, cpu_s, busy1 = time.perf_counter() - t0, process_cpu_s() - cpu0, cpu_busy_s()
    others = None if busy0 is None or busy1 is None or wall <= 0 else max(0.0, (busy1 - busy0 - cpu_s) / wall)
    return Interleaved(times=times, wall_s=wall, load_before=load_before,
                       others_cores=None if others is None else round(others, 3))


def noise_reasons(stats: dict, others_cores: float | None, threads: int | None) -> list[str]:
    """Why side-by-side figures are unreliable, by ``edgeseg.measure.timing``'s rules: a spread over
    10% of p50, or other processes keeping busy cores this timing needed. Empty: clean."""
    reasons = [f"{n} spread {st.spread_ms:.2f} ms is {st.spread_ms / st.p50_ms:.0%} of p50" for n, st in stats.items()
               if st.p50_ms and st.spread_ms > NOISY_SPREAD_FRACTION * st.p50_ms]
    cores = usable_cores()
    free = max(cores - (min(int(threads), cores) if threads else cores), 0)
    if others_cores is not None and others_cores > free + OTHERS_MARGIN_CORES:
        reasons.append(f"other processes kept {others_cores:.1f} of {cores} cores busy")
    return reasons


def _winner(p50: dict[str, float], margin: float) -> str:
    best = min(p50, key=p50.get)
    default = DEFAULT_RUNTIMES[0]
    if default in p50 and best != default and p50[best] * (1 + margin) >= p50[default]:
        return default
    return best


def time_runtimes(model: str | Path, runtimes: Sequence[str] = DEFAULT_RUNTIMES, threads: int | None = 2,
                  warmup: int = 10, runs: int = 50, batch: int = 1, images: Sequence[np.ndarray] | None = None,
                  margin: float = MARGIN) -> RuntimeTiming:
    """Time ``model`` under each of ``runtimes`` here, in alternating blocks (see the module doc).

    ``images``: HxWx3 uint8 RGB images to time on (default: one fixed synthetic image).
    ``threads``: inference threads of every runtime (None: each runtime's own default).
    """
    model = Path(model)
    runtimes = list(dict.fromkeys(runtimes))
    bad = [r for r in runtimes if r not in runtime_names("onnx")]
    if bad or not runtimes:
        raise ConfigError(f"runtimes to compare must be among {', '.join(runtime_names('onnx'))}, got "
                          f"{', '.join(bad) or 'none'}")
    if int(runs) < 1 or int(warmup) < 0 or int(batch) < 1 or (threads is not None and int(threads) < 1):
        raise ConfigError(f"need runs >= 1, warmup >= 0, batch >= 1, threads >= 1; got runs={runs} "
                          f"warmup={warmup} batch={batch} threads={threads}")
    skipped: dict[str, str] = {}
    times: dict[str, list[int]] = {}
    versions: dict[str, str | None] = {}
    others_seen: list[float] = []
    load_before, x = load_average(), None
    cycles = max(1, min(BLOCKS, int(runs)))
    per = [int(runs) // cycles + (1 if k < int(runs) % cycles else 0) for k in range(cycles)]
    live = list(runtimes)
    for cyc in range(cycles):
        order = live[cyc % len(live):] + live[:cyc % len(live)] if live else []
        for name in order:
            try:
                seg = _open(model, name, threads)
            except EdgesegError as exc:  # not installed, or cannot load this graph: say so, time the others
                skipped[name] = str(exc).splitlines()[0]
                log.warning("runtime %s skipped: %s", name, skipped[name])
                live.remove(name)
                continue
            try:
                if x is None:
                    x = _batch(seg, int(batch), images)
                loop = interleave({name: (lambda s=seg, v=x: s.infer(v))}, warmup, per[cyc])
                times.setdefault(name, []).extend(loop.times[name])
                if loop.others_cores is not None:
                    others_seen.append(loop.others_cores)
                versions[name] = getattr(seg.runner, "version", None) or _version(name)
            finally:
                seg.close()  # alone in the process while timed: no idle pool of the other runtime
                gc.collect()
    if not times:
        raise RuntimeError(f"no runtime could run {model}: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    others = max(others_seen) if others_seen else None
    stats = {n: latency_stats(t) for n, t in times.items()}
    reasons = noise_reasons(stats, others, threads)
    p50 = {n: round(s.p50_ms, 4) for n, s in stats.items()}
    win = _winner(p50, margin)
    return RuntimeTiming(
        model=str(model), winner=win, p50_ms=p50, p90_ms={n: round(s.p90_ms, 4) for n, s in stats.items()},
        spread_ms={n: round(s.spread_ms, 4) for n, s in stats.items()},
        ratio_to_winner={n: round(v / p50[win], 4) for n, v in p50.items()}, skipped=skipped,
        threads=threads, batch=int(batch), warmup=int(warmup), runs=int(runs), margin=margin, cpu=cpu_facts(),
        load_before=load_before, load_after=load_average(), others_cores=others,
        noisy_reason="; ".join(reasons) or None,
        versions=versions, created=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _version(runtime: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(RUNTIMES[runtime].package)
    except metadata.PackageNotFoundError:
        return None


def runtime_section(timing: RuntimeTiming) -> dict:
    """The manifest's ``runtime`` section for this timing (what ``runtime="auto"`` reads)."""
    return {"preferred": timing.winner,
            "measured": {"p50_ms": dict(timing.p50_ms), "ratio_to_winner": dict(timing.ratio_to_winner),
                         "skipped": dict(timing.skipped), "threads": timing.threads, "batch": timing.batch,
                         "runs": timing.runs, "margin": timing.margin, "versions": dict(timing.versions),
                         "load_before": timing.load_before, "noisy_reason": timing.noisy_reason,
                         "created": timing.created},
            "cpu": dict(timing.cpu)}


def record_runtime(manifest: dict, timing: RuntimeTiming) -> dict:
    """``manifest`` (a dict about to be written as a bundle's edgeseg.json) with its ``runtime``
    section set from ``timing``; returns the same dict."""
    manifest["runtime"] = runtime_section(timing)
    return manifest


def record_in_bundle(bundle: str | Path, timing: RuntimeTiming) -> Path:
    """Rewrite ``bundle`` (atomically, same files) with ``timing`` as its manifest's ``runtime``
    section; returns the bundle path. The bundle is verified before it is rewritten."""
    from edgeseg.runtime.bundle import MANIFEST, read_bundle, write_bundle

    b = read_bundle(bundle)
    manifest = b.manifest.derive(runtime=runtime_section(timing))
    names = [n for n in b.manifest.files if n != MANIFEST]
    return write_bundle(bundle, {n: b.path / n for n in names}, manifest, overwrite=True)


__all__ = ["DEFAULT_RUNTIMES", "MARGIN", "Interleaved", "RuntimeTiming", "cpu_facts", "interleave", "noise_reasons",
           "record_in_bundle", "record_runtime", "runtime_section", "time_runtimes"]
