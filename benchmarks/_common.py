"""Shared helpers for the benchmark scripts (not part of the package)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = Path(os.environ.get("EDGESEG_DATA") or ROOT.parent / "shared" / "data")  # as the tests find it


def p50(seg, images, threads, warmup=10, runs=100) -> dict:
    from edgeseg.measure.timing import time_model

    timing = time_model(seg, images, warmup=warmup, runs=runs, keep_times=False, threads=threads)
    m, e = timing.first.model, timing.first.e2e
    return {"model": {k: getattr(m, k) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "spread_ms")},
            "e2e": {k: getattr(e, k) for k in ("p50_ms", "p90_ms", "p99_ms", "spread_ms")},
            "noisy": timing.noisy, "noisy_reason": timing.noisy_reason,
            "threads": threads, "warmup": warmup, "runs": runs}


def per_image_dice(seg, samples, num_classes=2) -> dict[str, float]:
    from edgeseg.data import folders as D
    from edgeseg.runtime.metrics import dice_score

    out = {}
    for s in samples:
        img, gt = D.load_pair(s, num_classes)
        out[s.name] = dice_score(seg.predict(img) == 1, gt == 1)
    return out


def save(name: str, obj: dict) -> Path:
    from edgeseg.measure.machine import machine_info

    RESULTS.mkdir(parents=True, exist_ok=True)
    obj = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine_info(), **obj}
    p = RESULTS / f"{name}.json"
    p.write_text(json.dumps(obj, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o)) + "\n")
    return p


def distribution(drops) -> dict:
    a = np.asarray(list(drops), dtype=np.float64)
    return {"mean": float(a.mean()), "median": float(np.median(a)), "p90": float(np.percentile(a, 90)),
            "max": float(a.max()), "min": float(a.min()), "share_over_0.05": float((a > 0.05).mean())}
