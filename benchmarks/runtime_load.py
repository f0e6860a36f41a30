"""The device runtime under load: one Segmenter shared by many threads, and memory over time.

    python benchmarks/runtime_load.py [BUNDLE] [--threads 8] [--per-thread 1000] [--memory-iters 10000]

1. Correctness under concurrency: every image of a small set (embedded images of several sizes
   plus odd-sized synthetic ones) is first segmented single-threaded; then ``--threads``
   threads, started together on ONE shared ``Segmenter``, each run ``--per-thread`` inferences
   over the set (each thread from its own offset) and every mask is compared with the
   single-threaded one, pixel for pixel. Any difference or exception is counted.
2. Memory: ``--memory-iters`` more inferences on the same Segmenter (single thread), the
   resident set size (RSS, /proc) sampled every ``--sample-every``; the least-squares slope in
   MB per 1000 inferences is reported over all samples and after the first ``--warmup-iters``.

BUNDLE defaults to the embedded demo teacher (``calibration_data/teacher``, SegFormer-B0 at
128 px) exported with ``edgeseg.export.pipeline.export_bundle`` into a temporary folder.
Writes ``benchmarks/results/runtime_load.json`` with the counts actually used, the machine,
the thread settings and the library versions.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, save  # noqa: E402


def _images(n_embedded: int = 8) -> tuple[list[str], list[np.ndarray]]:
    from edgeseg.data import folders as D

    samples = D.discover(ROOT / "calibration_data", "test", require_masks=False)[:n_embedded]
    names = [s.name for s in samples]
    imgs = [D.read_image(s.image) for s in samples]
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (7, 300), (300, 7), (333, 517), (64, 64), (1080, 1920)]:  # odd sizes and aspect ratios
        base = imgs[len(names) % len(imgs)]
        ys = np.minimum((np.arange(h) * base.shape[0] / h).astype(int), base.shape[0] - 1)
        xs = np.minimum((np.arange(w) * base.shape[1] / w).astype(int), base.shape[1] - 1)
        img = np.clip(base[ys][:, xs].astype(np.int16) + rng.integers(-8, 9, (h, w, 3)), 0, 255).astype(np.uint8)
        names.append(f"synthetic_{h}x{w}")
        imgs.append(img)
    return names, imgs


def _slope_mb_per_1000(points: list[tuple[int, float]]) -> float | None:
    if len(points) < 2:
        return None
    x = np.array([p[0] for p in points], np.float64)
    y = np.array([p[1] for p in points], np.float64)
    return float(np.polyfit(x, y, 1)[0] * 1000.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", nargs="?", help="bundle dir (default: export the embedded demo teacher)")
    ap.add_argument("--threads", type=int, default=8, help="Python threads sharing one Segmenter")
    ap.add_argument("--per-thread", type=int, default=1000, help="inferences per thread")
    ap.add_argument("--memory-iters", type=int, default=10000, help="inferences of the memory phase")
    ap.add_argument("--sample-every", type=int, default=500, help="RSS sampling interval (inferences)")
    ap.add_argument("--warmup-iters", type=int, default=1000, help="memory samples before this are warm-up")
    ap.add_argument("--ort-threads", type=int, default=1, help="ONNX Runtime intra-op threads of the session")
    ap.add_argument("--providers", default="cpu")
    ap.add_argument("--out", default=None, help="result name under benchmarks/results (default runtime_load)")
    a = ap.parse_args()

    from edgeseg.measure.sampling import current_rss_mb
    from edgeseg.runtime import Segmenter
    from edgeseg.runtime.bundle import read_bundle

    tmp = None
    if a.bundle is None:
        from edgeseg.export.pipeline import export_bundle

        tmp = tempfile.TemporaryDirectory(prefix="edgeseg-load-")
        t = time.perf_counter()
        bundle_path, _ = export_bundle(ROOT / "calibration_data/teacher", Path(tmp.name) / "teacher", limit=4)
        print(f"exported the embedded teacher in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        source = "calibration_data/teacher exported by edgeseg.export.pipeline.export_bundle (fp32, folded)"
    else:
        bundle_path = Path(a.bundle)
        source = str(bundle_path)
    b = read_bundle(bundle_path)

    seg = Segmenter(bundle_path, providers=[a.providers], threads=a.ort_threads)
    names, imgs = _images()
    ref = [seg.predict(im) for im in imgs]  # single-threaded reference masks

    # ---------------------------------------------------------------- 1. shared by many threads
    barrier = threading.Barrier(a.threads)
    mismatches = [0] * a.threads
    done = [0] * a.threads
    errors: list[str] = []
    latencies: list[list[float]] = [[] for _ in range(a.threads)]
    first_bad: list[dict] = []

    def work(k: int) -> None:
        try:
            barrier.wait()
            for j in range(a.per_thread):
                i = (k * 3 + j) % len(imgs)
                t0 = time.perf_counter_ns()
                m = seg.predict(imgs[i])
                latencies[k].append((time.perf_counter_ns() - t0) / 1e6)
                if m.shape != ref[i].shape or not np.array_equal(m, ref[i]):
                    mismatches[k] += 1
                    if len(first_bad) < 5:
                        first_bad.append({"thread": k, "iteration": j, "image": names[i],
                                          "differing_pixels": int((m != ref[i]).sum()) if m.shape == ref[i].shape
                                          else None})
                done[k] += 1
        except Exception as exc:  # recorded, not raised: the run reports every failure
            errors.append(f"thread {k}: {type(exc).__name__}: {exc}")

    rss0 = current_rss_mb()
    t0 = time.perf_counter()
    ts = [threading.Thread(target=work, args=(k,)) for k in range(a.threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.concatenate([np.asarray(x) for x in latencies if x]) if any(latencies) else np.zeros(1)
    total = sum(done)
    concurrency = {
        "threads": a.threads, "per_thread": a.per_thread, "inferences": total,
        "mask_mismatches": int(sum(mismatches)), "exceptions": errors, "first_mismatches": first_bad,
        "identical_to_single_thread": total == a.threads * a.per_thread and not any(mismatches) and not errors,
        "wall_s": round(wall, 2), "throughput_per_s": round(total / wall, 2) if wall else None,
        "latency_ms": {k: round(float(np.percentile(lat, q)), 2) for k, q in (("p50", 50), ("p90", 90), ("p99", 99))},
        "rss_mb_before": rss0, "rss_mb_after": current_rss_mb(),
    }
    print(f"concurrency: {a.threads} threads x {a.per_thread}: {total} inferences in {wall:.1f} s, "
          f"{sum(mismatches)} mismatching masks, {len(errors)} exceptions", file=sys.stderr)

    # ---------------------------------------------------------------- 2. memory over time
    gc.collect()
    samples = [(0, current_rss_mb())]
    t0 = time.perf_counter()
    for j in range(1, a.memory_iters + 1):
        seg.predict(imgs[j % len(imgs)])
        if j % a.sample_every == 0:
            samples.append((j, current_rss_mb()))
    mem_wall = time.perf_counter() - t0
    after_warm = [p for p in samples if p[0] >= a.warmup_iters]
    rss = [p[1] for p in samples]
    memory = {
        "inferences": a.memory_iters, "sample_every": a.sample_every, "warmup_iters": a.warmup_iters,
        "rss_mb": [[i, round(v, 2)] for i, v in samples],
        "rss_mb_start": round(rss[0], 2), "rss_mb_end": round(rss[-1], 2), "rss_mb_max": round(max(rss), 2),
        "growth_mb": round(rss[-1] - rss[0], 2),
        "slope_mb_per_1000": None if _slope_mb_per_1000(samples) is None else round(_slope_mb_per_1000(samples), 4),
        "slope_mb_per_1000_after_warmup": (None if _slope_mb_per_1000(after_warm) is None
                                           else round(_slope_mb_per_1000(after_warm), 4)),
        "wall_s": round(mem_wall, 1),
        "note": "single thread, cycling through the image set; RSS from /proc/self/statm",
    }
    print(f"memory: {a.memory_iters} inferences, RSS {rss[0]:.1f} -> {rss[-1]:.1f} MB (max {max(rss):.1f}), "
          f"slope {memory['slope_mb_per_1000']} MB/1000 (after warm-up {memory['slope_mb_per_1000_after_warmup']})",
          file=sys.stderr)

    out = save(a.out or "runtime_load", {
        "what": "one Segmenter shared by many threads vs single-threaded masks; RSS over many inferences",
        "command": "python benchmarks/runtime_load.py " + " ".join(sys.argv[1:]),
        "counts_used": {"threads": a.threads, "per_thread": a.per_thread, "memory_iters": a.memory_iters,
                        "sample_every": a.sample_every, "warmup_iters": a.warmup_iters},
        "counts_default": {"threads": 8, "per_thread": 1000, "memory_iters": 10000, "sample_every": 500},
        "bundle": {"source": source, "precision": b.precision, "input": [b.preprocess.height, b.preprocess.width],
                   "model_sha256": b.manifest["files"][b.manifest["model"]]},
        "runtime": {"runner": seg.runner.name, "providers": seg.runner.providers, "ort_intra_op_threads": a.ort_threads,
                    "ort_inter_op_threads": 1},
        "images": {"count": len(imgs), "names": names, "sizes": [list(im.shape[:2]) for im in imgs]},
        "concurrency": concurrency,
        "memory": memory,
    })
    print(f"wrote {out}", file=sys.stderr)
    seg.close()
    if tmp is not None:
        tmp.cleanup()
    if not concurrency["identical_to_single_thread"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
