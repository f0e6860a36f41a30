"""Present ``edgeseg.measure.bench`` results: terminal table, CSV, Markdown and PNG plots.

Everything here reads the plain dict that ``bench`` returns (or its JSON file), so a report
can be rebuilt later from a saved result. :func:`write_report` writes a ``--out`` folder whole
(temporary folder, renamed at the end) under the one output-folder policy. Tables carry p50, p90 and the robust spread; a row
timed on a busy machine gets a ``!`` and a warning line saying why; a figure that does not
apply shows "—" and the reference's own drop columns say "reference". Sizes and memory are
MB = 10^6 bytes. matplotlib is optional (``pip install
edgeseg[plot]``) and imported only by the plotting functions; they use the object-oriented
API with the Agg canvas, so no global pyplot state or display is touched.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from edgeseg.errors import DependencyError

# (header, row key, format) for the terminal table and the Markdown summary.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("model", "name", "s"),
    ("backend", "backend", "s"),
    ("size MB", "size_mb", ".2f"),
    ("precision", "precision", "s"),
    ("Dice", "dice", ".4f"),
    ("Dice drop", "dice_drop_mean", "+.4f"),
    ("p50 ms", "p50_ms", ".2f"),
    ("p90 ms", "p90_ms", ".2f"),
    ("spread ms", "spread_ms", ".2f"),
    ("img/s", "throughput_ips", ".1f"),
    ("RSS MB", "rss_loop_max_mb", ".0f"),
)


NA = "—"
REFERENCE = "reference"
REPORT_KIND = "bench"  # the output-folder marker of a ``bench --out`` folder (edgeseg.outputs)


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return NA
    if spec == "s":
        return str(value)
    return format(value, spec)


_COL = {key: i for i, (_, key, _) in enumerate(COLUMNS)}


def _cells(result: dict) -> list[list[str]]:
    out = []
    for r in result.get("rows", []):
        cells = [_fmt(r.get(key), spec) for _, key, spec in COLUMNS]
        if r.get("is_reference"):
            cells[0] += " *"
            cells[_COL["dice_drop_mean"]] = REFERENCE
        if r.get("noisy"):
            cells[_COL["p50_ms"]] += " !"
        if r.get("throughput_batch") not in (None, 1):
            cells[_COL["throughput_ips"]] += f" @{r['throughput_batch']}"
        if r.get("cuda_peak_mb") is not None:
            cells[_COL["rss_loop_max_mb"]] += f" (cuda {r['cuda_peak_mb']:.0f})"
        out.append(cells)
    return out


def noise_warnings(result: dict) -> list[str]:
    """One line per row whose timing was taken on a busy machine."""
    return [f"warning: {r.get('name')} on {r.get('backend')} was timed on a busy machine "
            f"({r.get('noisy_reason')}); its latency is not a clean figure"
            for r in result.get("rows", []) if r.get("noisy")]


def format_table(result: dict) -> str:
    """Rows model x backend; a trailing note says what the figures are."""
    headers = [h for h, _, _ in COLUMNS]
    cells = _cells(result)
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    left = {0, 1, 3}

    def line(vals):
        return "  ".join(v.ljust(w) if i in left else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths)))

    lines = [line(headers), line(["-" * w for w in widths])] + [line(c) for c in cells]
    lines.append(_note(result))
    lines += noise_warnings(result)
    return "\n".join(lines)


def _note(result: dict) -> str:
    s = result.get("settings", {})
    m = result.get("machine", {}) or {}
    cpu = (m.get("cpu") or {}).get("model") or "unknown CPU"
    ref = result.get("reference")
    rows = result.get("rows") or [{}]
    lb = rows[0].get("latency_batch", 1)
    parts = [f"model-only latency at batch {lb}, {s.get('runs')} runs after {s.get('warmup')} warm-up",
             f"threads {s.get('threads') or 'default'}",
             f"{(result.get('data') or {}).get('n_images')} images",
             f"{cpu}, {(m.get('cores') or {}).get('affinity')} cores"]
    parts.append(f"* reference: {ref['model']}" if ref else "no reference (no Dice drop)")
    parts.append("sizes in MB = 10^6 bytes; spread = 1.4826 x MAD; ! = noisy timing")
    return "; ".join(parts)


# --------------------------------------------------------------------------- CSV / Markdown
def _scalar(v) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def csv_rows(result: dict) -> list[dict]:
    """One flat dict per row: every scalar figure of the row (nested blocks stay in the JSON)."""
    return [{k: v for k, v in r.items() if _scalar(v)} for r in result.get("rows", [])]


def write_csv(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = csv_rows(result)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
    return path


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    esc = [[c.replace("|", "\\|") for c in r] for r in rows]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in esc]
    return out


def format_markdown(result: dict) -> str:
    s = result.get("settings", {})
    m = result.get("machine", {}) or {}
    v = m.get("versions") or {}
    cpu = m.get("cpu") or {}
    lines = ["# edgeseg bench", ""]
    lines.append(f"Created {result.get('created')} with edgeseg {result.get('edgeseg_version')}.")
    lines.append("")
    lines.append("## Machine")
    lines.append("")
    lines.append(f"- CPU: {cpu.get('model')} ({cpu.get('machine')}); flags: {', '.join(cpu.get('flags') or []) or '-'}")
    cores = m.get("cores") or {}
    lines.append(f"- cores: {cores.get('logical')} logical, {cores.get('affinity')} usable; RAM {m.get('ram_gb')} GB")
    lines.append(f"- OS: {m.get('platform')}")
    lines.append("- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val is not None))
    lines.append(f"- ONNX Runtime providers: {', '.join(m.get('onnxruntime_providers') or []) or '-'}")
    for g in m.get("gpus") or []:
        lines.append(f"- GPU: {g.get('name')} (driver {g.get('driver')}, {g.get('memory')})")
    if m.get("jetson"):
        j = m["jetson"]
        lines.append(f"- Jetson: {j.get('model')}, L4T {j.get('l4t')}, JetPack {j.get('jetpack')}, "
                     f"power mode {j.get('power_mode')}")
    lines += ["", "## Settings", ""]
    d = result.get("data") or {}
    lines.append(f"- data: {d.get('path')} split {d.get('split') or '(all)'}, {d.get('n_images')} images "
                 f"(sha256 {str(d.get('fingerprint'))[:12]})")
    lines.append(f"- runs {s.get('runs')}, warm-up {s.get('warmup')}, batch sizes {s.get('batch_sizes')}, "
                 f"threads {s.get('threads') or 'default'}, providers {s.get('providers')}, torch device {s.get('device')}")
    lines.append(f"- lesion detection: {s.get('rule')} threshold {s.get('rule_threshold')}; "
                 f"Dice drop threshold {s.get('drop_threshold')}")
    ref = result.get("reference")
    lines.append(f"- reference: {ref['model']} on {ref['backend']} (Dice {ref['dice']:.4f})" if ref
                 else "- reference: none")
    lines += ["", "## Summary", ""]
    lines += _md_table([h for h, _, _ in COLUMNS], _cells(result))
    warnings = noise_warnings(result)
    if warnings:
        lines += [""] + [f"> **{w}**" for w in warnings]
    lines += ["", "Sizes and memory in MB (10^6 bytes); spread = 1.4826 x median absolute deviation; "
              "`!` marks a timing taken on a busy machine."]
    lines += ["", "## Latency (ms per batch call)", ""]
    hdr = ["model", "backend", "batch", "part", "p50", "p90", "p99", "mean", "std", "min", "spread", "img/s"]
    body, noise_rows = [], []
    for r in result.get("rows", []):
        for b, lat in (r.get("latency") or {}).items():
            if "error" in lat:
                body.append([r["name"], r["backend"], b, "error", lat["error"]] + [""] * 7)
                continue
            for part, tp in (("model", "throughput_ips"), ("e2e", "e2e_throughput_ips")):
                st = lat[part]
                body.append([r["name"], r["backend"], b, part] +
                            [_fmt(st.get(k), ".2f") for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms",
                                                                "min_ms", "spread_ms")] + [_fmt(lat.get(tp), ".1f")])
        n = r.get("noise") or {}
        if n:
            noise_rows.append([r["name"], r["backend"], "yes" if n.get("noisy") else "no",
                               _fmt(n.get("others_cores"), ".2f"),
                               f"{_fmt(n.get('load_before'), '.2f')} / {_fmt(n.get('load_after'), '.2f')}",
                               f"{n.get('threads')} of {n.get('cores')}", "; ".join(n.get("reasons") or []) or NA])
    lines += _md_table(hdr, body)
    if noise_rows:
        lines += ["", "## Noise while timing", "",
                  "Cores kept busy by other processes during the timed loops (measured from /proc/stat minus this "
                  "process's CPU time), the 1-minute load average before / after, and the threads timed.", ""]
        lines += _md_table(["model", "backend", "noisy", "other cores busy", "load before / after", "threads",
                            "reason"], noise_rows)
    lines += ["", "## Accuracy vs reference", ""]
    hdr = ["model", "backend", "Dice", "IoU", "drop mean", "drop median", "drop p95", "worst image (drop)",
           "share drop > thr", "agreement Dice"]
    body = []
    for r in result.get("rows", []):
        a = r.get("accuracy") or {}
        dr = a.get("drop") or {}
        worst = f"{dr['worst_image']} ({dr['max']:+.4f})" if dr else NA
        drops = [_fmt(dr.get("mean"), "+.4f"), _fmt(dr.get("median"), "+.4f"), _fmt(dr.get("p95"), "+.4f"), worst,
                 _fmt(dr.get("share_over_threshold"), ".1%"), _fmt(a.get("agreement_dice"), ".4f")]
        if r.get("is_reference"):
            drops = [REFERENCE] * len(drops)
        body.append([r["name"], r["backend"], _fmt(a.get("dice"), ".4f"), _fmt(a.get("iou"), ".4f"), *drops])
    lines += _md_table(hdr, body)
    lines += ["", "## Lesion-level sensitivity by lesion area (share of the image)", ""]
    buckets = [b[0] for b in (s.get("size_buckets") or [])] + ["all"]
    body = []
    for r in result.get("rows", []):
        les = (r.get("accuracy") or {}).get("lesions") or {}
        cells = [r["name"], r["backend"]]
        for b in buckets:
            e = les.get(b) or {}
            txt = f"{e.get('detected', 0)}/{e.get('lesions', 0)}"
            if e.get("sensitivity") is not None:
                txt += f" ({e['sensitivity']:.0%})"
            if e.get("lost_vs_reference"):
                txt += f", lost {e['lost_vs_reference']}"
            cells.append(txt)
        body.append(cells)
    lines += _md_table(["model", "backend"] + buckets, body)
    lines.append("")
    return "\n".join(lines)


def write_markdown(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(format_markdown(result), encoding="utf-8")
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- plots
def require_matplotlib():
    """Import matplotlib's object API, or say which extra to install."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise DependencyError("plots need matplotlib, which is not installed: pip install edgeseg[plot]") from None
    return Figure, FigureCanvasAgg


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (latency, dice) no other point beats on both (lower latency,
    higher Dice), sorted by latency."""
    idx = [i for i, (x, y) in enumerate(points) if x is not None and y is not None]
    front = []
    for i in idx:
        xi, yi = points[i]
        dominated = any((points[j][0] <= xi and points[j][1] >= yi) and (points[j][0] < xi or points[j][1] > yi)
                        for j in idx if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def save_figure(fig, canvas_cls, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas_cls(fig)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    tmp.replace(path)
    return path


def plot_latency(result: dict, path: str | Path, part: str = "model") -> Path:
    """Box plot of the per-call latency distribution of every row (first batch size)."""
    Figure, Canvas = require_matplotlib()
    rows = result.get("rows", [])
    data, labels = [], []
    for r in rows:
        lat = (r.get("latency") or {}).get(str(r.get("latency_batch", 1))) or {}
        times = (lat.get(part) or {}).get("times_ms")
        if times:
            data.append(times)
            labels.append(f"{r['name']}\n{r['backend']}")
    fig = Figure(figsize=(max(4.0, 1.6 * len(data) + 2), 4.0))
    ax = fig.add_subplot()
    if data:
        ax.boxplot(data, showfliers=True, whis=(1, 99))
        ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
        meds = sorted(sorted(d)[len(d) // 2] for d in data)
        if meds[0] > 0 and meds[-1] / meds[0] > 20:  # rows orders of magnitude apart: log scale
            ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no per-call times recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("latency per call (ms)")
    ax.set_title(f"{'model-only' if part == 'model' else 'end-to-end'} latency "
                 "(box: quartiles, whiskers: p1-p99)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, Canvas, Path(path))


def plot_pareto(result: dict, path: str | Path) -> Path:
    """Dice vs model-only p50, with the Pareto front (faster and at least as accurate)."""
    Figure, Canvas = require_matplotlib()
    rows = result.get("rows", [])
    pts = [(r.get("p50_ms"), r.get("dice")) for r in rows]
    fig = Figure(figsize=(6.0, 4.5))
    ax = fig.add_subplot()
    for r, (x, y) in zip(rows, pts):
        if x is None or y is None:
            continue
        ax.scatter([x], [y], s=40, marker="*" if r.get("is_reference") else "o", zorder=3)
        ax.annotate(f"{r['name']} ({r['backend']})", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front = pareto_front(pts)
    if front:
        ax.scatter([pts[i][0] for i in front], [pts[i][1] for i in front], s=160, facecolors="none",
                   edgecolors="k", alpha=0.6, zorder=2, label="Pareto front")
    if len(front) > 1:
        ax.step([pts[i][0] for i in front], [pts[i][1] for i in front], where="post", color="k", alpha=0.5,
                linestyle="--")
    if front:
        ax.legend(fontsize=8)
    ax.set_xlabel("model-only p50 latency (ms)")
    ax.set_ylabel("mean Dice")
    ax.set_title("accuracy vs latency", fontsize=10)
    ax.grid(alpha=0.3)
    return save_figure(fig, Canvas, Path(path))


def check_report_dir(out: str | Path, inputs=(), overwrite: bool = False, json_file: str | Path | None = None) -> str:
    """Before any work: ``out`` must be new, or an earlier ``bench --out`` report (its marker)
    to replace when ``overwrite``; a folder of foreign files, or one that is, lies inside or
    contains an input, is refused (one ``ConfigError`` line, see ``edgeseg.outputs``). A
    ``json_file`` inside ``out`` is refused too: the folder is replaced whole."""
    from edgeseg.errors import ConfigError
    from edgeseg.outputs import check_output

    if json_file is not None and Path(out).resolve() in Path(json_file).resolve().parents:
        raise ConfigError(f"--json {json_file} lies inside --out {out}, which is replaced whole: write it elsewhere")
    return check_output(out, REPORT_KIND, inputs=inputs, overwrite=overwrite, flag="--out")


def write_report(result: dict, out: str | Path, plots: bool = True, overwrite: bool = False,
                 inputs=()) -> dict[str, Path]:
    """CSV, Markdown and (with matplotlib) PNGs into ``out``; returns {kind: path}.

    ``out`` follows the one output-folder policy (:func:`check_report_dir`, checked before
    anything is written): the files are written into a temporary folder beside it, marked as a
    bench report, and renamed into place at the end, so a failure leaves the previous report."""
    from edgeseg.outputs import mark
    from edgeseg.runtime.files import atomic_dir

    out = Path(out)
    if plots:
        require_matplotlib()  # before writing anything
    check_report_dir(out, inputs, overwrite)
    with atomic_dir(out) as tmp:
        names = {"csv": write_csv(result, tmp / "bench.csv").name,
                 "markdown": write_markdown(result, tmp / "bench.md").name}
        if plots:
            names["latency_png"] = plot_latency(result, tmp / "latency.png").name
            names["pareto_png"] = plot_pareto(result, tmp / "pareto.png").name
        mark(tmp, REPORT_KIND, rows=[f"{r.get('name')} on {r.get('backend')}" for r in result.get("rows", [])])
    return {k: out / n for k, n in names.items()}
