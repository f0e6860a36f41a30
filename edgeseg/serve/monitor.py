"""``edgeseg monitor``: what a service's request log says about the model in use.

:func:`summarise` reads the log (:mod:`edgeseg.serve.requestlog`) and gives latency percentiles
(overall and per version), the drift-flag rate over time, the predicted-area distribution of
the first half of the requests against the second (mean fractions and the Kolmogorov-Smirnov
distance between them: a shift in what the model sees or says), and live Dice per model version
from clinicians' feedback, over time. :func:`write_report` writes it as JSON, Markdown and a
PNG plot (matplotlib, the ``plot`` extra).
"""

from __future__ import annotations

import calendar
import time
from pathlib import Path
from typing import Callable

import numpy as np

from edgeseg.runtime.errors import InputError, MissingDependency
from edgeseg.runtime.files import atomic_dir, atomic_write_json, atomic_write_text
from edgeseg.serve.requestlog import read_log

MAX_BINS = 12


def _seconds(stamp: str) -> float:
    try:
        main, _, frac = stamp.rstrip("Z").partition(".")
        return calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or 0}")
    except (ValueError, AttributeError):
        raise InputError(f"log entry time {stamp!r} is not an ISO 8601 UTC time") from None


def _percentiles(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if not v.size:
        return {"count": 0}
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"count": int(v.size), "p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(v.max()),
            "mean": float(v.mean())}


def ks_distance(a, b) -> float | None:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    if not a.size or not b.size:
        return None
    grid = np.concatenate([a, b])
    cdf_a, cdf_b = np.searchsorted(a, grid, "right") / a.size, np.searchsorted(b, grid, "right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def _bins(times: np.ndarray, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
    n = max(1, min(MAX_BINS, int(np.sqrt(max(len(times), 1)))))
    edges = np.linspace(t0, t1 if t1 > t0 else t0 + 1.0, n + 1)
    return edges, np.clip(np.searchsorted(edges, times, "right") - 1, 0, n - 1)


def _fractions(entries: list[dict]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for e in entries:
        px = max(int(np.prod(e.get("image") or [0])), 1)
        for name, area in (e.get("areas") or {}).items():
            out.setdefault(name, []).append(area / px)
    return out


def summarise(log: str | Path) -> dict:
    entries = read_log(log)
    seg = [e for e in entries if e.get("type") == "segment" and e.get("status") == 200]
    fb = [e for e in entries if e.get("type") == "feedback" and "dice" in e]
    refused = [e for e in entries if e.get("status") not in (None, 200)]
    if not seg and not fb:
        raise InputError(f"{log} holds no answered request to summarise")
    st = np.array([_seconds(e["time"]) for e in seg])
    ft = np.array([_seconds(e["time"]) for e in fb])
    t0, t1 = float(np.min(np.concatenate([st, ft]))), float(np.max(np.concatenate([st, ft])))
    edges, idx = _bins(st, t0, t1)
    drift = []
    for b in range(len(edges) - 1):
        flags = [seg[i]["drifted"] for i in np.flatnonzero(idx == b) if seg[i].get("drifted") is not None]
        drift.append({"start_s": float(edges[b] - t0), "requests": int((idx == b).sum()), "checked": len(flags),
                      "drift_rate": (sum(flags) / len(flags)) if flags else None})
    half = len(seg) // 2
    first, second = _fractions(seg[:half]), _fractions(seg[half:])
    areas = {name: {"first_half_mean": float(np.mean(first[name])) if first.get(name) else None,
                    "second_half_mean": float(np.mean(second[name])) if second.get(name) else None,
                    "ks_distance": ks_distance(first.get(name, []), second.get(name, []))}
             for name in sorted(set(first) | set(second))}
    versions = sorted({e.get("version") for e in seg + fb if e.get("version")})
    live = {}
    fedges, fidx = _bins(ft, t0, t1)
    for v in versions:
        rows = [i for i, e in enumerate(fb) if e.get("version") == v]
        if not rows:
            continue
        over_time = []
        for b in range(len(fedges) - 1):
            d = [fb[i]["dice"] for i in rows if fidx[i] == b and fb[i]["dice"] is not None]
            if d:
                over_time.append({"start_s": float(fedges[b] - t0), "feedback": len(d), "dice": float(np.mean(d))})
        live[v] = {"feedback": len(rows), "dice_mean": float(np.mean([fb[i]["dice"] for i in rows])),
                   "fp_pixels_mean": float(np.mean([fb[i]["fp_pixels"] for i in rows])),
                   "fn_pixels_mean": float(np.mean([fb[i]["fn_pixels"] for i in rows])), "over_time": over_time}
    flagged = [e["drifted"] for e in seg if e.get("drifted") is not None]
    return {
        "log": str(log), "first": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)), "span_s": t1 - t0,
        "requests": len(seg), "refused": len(refused), "feedback": len(fb),
        "latency_ms": _percentiles([e["latency_ms"] for e in seg]),
        "latency_ms_by_version": {v: _percentiles([e["latency_ms"] for e in seg if e.get("version") == v])
                                  for v in versions},
        "drift_rate": (sum(flagged) / len(flagged)) if flagged else None, "drift_over_time": drift,
        "area_shift": areas, "live_dice": live,
        "_series": {"t": (st - t0).tolist(), "latency": [e["latency_ms"] for e in seg],
                    "versions": [e.get("version") for e in seg], "first": first, "second": second},
    }


def markdown(s: dict) -> str:
    lat = s["latency_ms"]
    lines = [f"# Service log summary: {s['log']}", "",
             (f"{s['requests']} answered requests, {s['refused']} refused, {s['feedback']} feedback, over "
              f"{s['span_s']:.1f} s from {s['first']}."), ""]
    if lat.get("count"):
        lines += [(f"Latency (ms): p50 {lat['p50']:.1f}, p90 {lat['p90']:.1f}, p99 {lat['p99']:.1f}, "
                  f"max {lat['max']:.1f}."),
                  ""]
    rate = s["drift_rate"]
    lines += [f"Drift-flag rate: {'n/a (no drift guard)' if rate is None else f'{rate:.1%}'}.", "",
              "| class | mean area, first half | mean area, second half | KS distance |", "|---|---|---|---|"]
    for name, a in s["area_shift"].items():
        f = lambda v, fmt: "n/a" if v is None else format(v, fmt)
        lines.append(f"| {name} | {f(a['first_half_mean'], '.4f')} | {f(a['second_half_mean'], '.4f')} | "
                     f"{f(a['ks_distance'], '.3f')} |")
    lines += ["", "| version | feedback | live Dice | mean FP px | mean FN px |", "|---|---|---|---|---|"]
    lines += [f"| {v} | {d['feedback']} | {d['dice_mean']:.4f} | {d['fp_pixels_mean']:.0f} | "
              f"{d['fn_pixels_mean']:.0f} |"
              for v, d in s["live_dice"].items()] or ["| (no feedback) | | | | |"]
    return "\n".join(lines) + "\n"


def plot(s: dict, path: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependency('the monitor plot needs matplotlib: pip install "edgeseg[plot]"') from None
    ser = s["_series"]
    fig, ax = plt.subplots(2, 2, figsize=(11, 7.5))
    for v in sorted(set(ser["versions"])):
        pts = [(t, y) for t, y, w in zip(ser["t"], ser["latency"], ser["versions"]) if w == v]
        ax[0, 0].scatter([p[0] for p in pts], [p[1] for p in pts], s=6, label=v)
    ax[0, 0].set(title="latency per request", xlabel="seconds since first request", ylabel="ms")
    d = [(b["start_s"], b["drift_rate"]) for b in s["drift_over_time"] if b["drift_rate"] is not None]
    ax[0, 1].plot([p[0] for p in d], [p[1] for p in d], "o-")
    ax[0, 1].set(title="drift-flag rate", xlabel="seconds since first request", ylabel="fraction flagged",
                 ylim=(-0.05, 1.05))
    for name in list(ser["second"])[1:] or list(ser["second"]):  # the foreground classes (background last resort)
        ax[1, 0].hist(ser["first"].get(name, []), bins=20, alpha=0.5, label=f"{name}: first half")
        ax[1, 0].hist(ser["second"][name], bins=20, alpha=0.5, label=f"{name}: second half")
    ax[1, 0].set(title="predicted area (fraction of the image)", xlabel="fraction", ylabel="requests")
    for v, live in s["live_dice"].items():
        ax[1, 1].plot([b["start_s"] for b in live["over_time"]], [b["dice"] for b in live["over_time"]], "o-", label=v)
    ax[1, 1].set(title="live Dice from feedback, per version", xlabel="seconds since first request", ylabel="Dice",
                 ylim=(-0.05, 1.05))
    for a in ax.flat:
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(s: dict, out: str | Path, marker: Callable[[Path], object] | None = None) -> Path:
    """summary.json, summary.md and monitor.png in ``out``, all or nothing."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        atomic_write_json(tmp / "summary.json", {k: v for k, v in s.items() if not k.startswith("_")})
        atomic_write_text(tmp / "summary.md", markdown(s))
        plot(s, tmp / "monitor.png")
        if marker is not None:
            marker(tmp)
    return out


__all__ = ["ks_distance", "markdown", "plot", "summarise", "write_report"]
