"""Calibration on the workstation: the reliability diagram and a per-model calibration report.

The math is torch-free and lives in the runtime (:mod:`edgeseg.runtime.confidence` for the ECE
and its bins, :mod:`edgeseg.runtime.temperature` for temperature scaling); this module draws
(matplotlib, imported when called) and compares models:

- :func:`plot_reliability`: accuracy against mean confidence per bin (bars), the diagonal a
  perfectly calibrated model would follow, and the share of pixels per bin; ECE in the title.
- :func:`calibration_report`: for several models scored on the same labelled images (e.g. the
  stages of ``edgeseg compress``), the ECE of the probabilities as the model gives them (with
  its bundle's recorded temperature, if any), of its raw probabilities (T = 1), and after a
  temperature fitted on these same images (so that figure is in-sample: an upper bound on what
  scaling can do).
"""

from __future__ import annotations

import io
from pathlib import Path

from edgeseg.runtime.files import atomic_write_bytes


def plot_reliability(rel: dict, path: str | Path, title: str = "") -> Path:
    """A reliability diagram PNG from ``ReliabilityBins.to_dict()`` output, written atomically."""
    from edgeseg.measure.report import require_matplotlib

    Figure, Canvas = require_matplotlib()
    edges = rel["edges"]
    width = edges[1] - edges[0]
    mids = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    used = [i for i, c in enumerate(rel["count"]) if c]
    fig = Figure(figsize=(5, 6))
    Canvas(fig)
    ax, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    ax.bar([mids[i] for i in used], [rel["accuracy"][i] for i in used], width=width * 0.95, color="#4c72b0",
           edgecolor="black", label="accuracy in bin")
    ax.plot([rel["confidence"][i] for i in used], [rel["accuracy"][i] for i in used], "o", color="#dd8452",
            label="(mean confidence, accuracy)")
    ax.set_ylabel("accuracy (share of pixels right)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ece = rel.get("ece")
    ax.set_title((title + "\n" if title else "") + (f"ECE {ece:.4f}" if ece is not None else "no pixels"),
                 fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    total = max(sum(rel["count"]), 1)
    ax2.bar(mids, [c / total for c in rel["count"]], width=width * 0.95, color="grey")
    ax2.set_ylabel("share of pixels")
    ax2.set_xlabel(f"top-class confidence ({rel['bins']} equal-width bins)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write_bytes(Path(path), buf.getvalue())


def calibration_report(models: dict, samples) -> dict:
    """``{name: {"ece", "ece_raw", "temperature", "temperature_fitted", "ece_fitted"}}`` for each
    ``name: Segmenter`` in ``models``, all on the same labelled ``samples`` (``data.Sample`` or
    ``(name, image, gt)`` triples)."""
    from edgeseg.export.confidence import fit, run_images

    out = {}
    for name, seg in models.items():
        runs = run_images(seg, samples)
        sec = fit(seg, runs, "scored images")
        rec = seg.temperature
        own = sec["ece"]["before"] if rec == 1.0 else _ece_at(seg, runs, rec)
        out[name] = {"ece": own, "temperature": rec, "ece_raw": sec["ece"]["before"],
                     "temperature_fitted": sec["value"], "ece_fitted": sec["ece"]["after"]}
    return out


def _ece_at(seg, runs, t: float) -> float | None:
    from edgeseg.runtime.confidence import ReliabilityBins

    keep, seg.temperature = seg.temperature, t
    try:
        rel = ReliabilityBins()
        for o, hw, gt in runs:
            rel.add(seg.finish(o, [hw], True)[0][1], gt)
        return rel.ece()
    finally:
        seg.temperature = keep


def stage_calibration(seg, samples) -> dict:
    """:func:`calibration_report` of one model (e.g. one ``edgeseg compress`` stage)."""
    return calibration_report({"model": seg}, samples)["model"]


def stage_lines(stages: list[dict]) -> list[str]:
    """A compress report's calibration section from its stages' ``notes["calibration"]``
    (:func:`stage_calibration`, or just ``{"ece", "temperature"}``: the other columns then read
    "—"); no lines when no stage has one."""
    rep = {s["name"]: s["notes"]["calibration"] for s in stages if (s.get("notes") or {}).get("calibration")}
    if not rep:
        return []
    return ["", "## Calibration per stage (validation split)", "",
            "ECE: pixels pooled, top-class confidence, 15 equal-width bins. Compression changes calibration; "
            "the fitted T is what temperature scaling on these images would give (in-sample).", "",
            *calibration_lines(rep)]


def calibration_lines(rep: dict) -> list[str]:
    """Markdown table rows of :func:`calibration_report` (for a compress or bench report)."""
    lines = ["| model | ECE as shipped | T recorded | ECE at T=1 | T fitted here | ECE at fitted T (in-sample) |",
             "|---|---|---|---|---|---|"]

    def f(v, fmt: str) -> str:
        return "—" if v is None else format(v, fmt)

    for name, r in rep.items():
        lines.append(f"| {name} | {f(r.get('ece'), '.4f')} | {f(r.get('temperature'), '.3f')} "
                     f"| {f(r.get('ece_raw'), '.4f')} | {f(r.get('temperature_fitted'), '.3f')} "
                     f"| {f(r.get('ece_fitted'), '.4f')} |")
    return lines
