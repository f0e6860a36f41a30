"""What ``edgeseg compress`` tells its user: a headline, a table per stage, the INT8 decisions.

Everything reads the plain report dict that ``Compressor.run`` returns (and writes to
``report.json``): :func:`headline` (what was gained, what it cost, whether the Dice budget
was met), :func:`terminal_table`, :func:`markdown_report` and :func:`plot_stages` (Dice vs
latency per stage, the budget drawn as a line). The teacher is the reference: its own drop
columns say "reference" instead of zeros. Sizes are MB = 10^6 bytes; latencies are model-only
p50 (and p90, spread) on this machine; a stage timed on a busy machine is marked.
"""

from __future__ import annotations

from pathlib import Path

from edgeseg.compress.guard import QUANT_TOL

NA = "—"
REFERENCE = "reference"


def _f(v, fmt: str) -> str:
    return NA if v is None else format(v, fmt)


def headline(rep: dict) -> str:
    """One paragraph: speed-up and size reduction of the final stage vs the teacher, the Dice it
    cost, and whether the budget (``max_dice_drop``) was met or missed."""
    st = rep["stages"]
    t, f = st[0], st[-1]
    parts = []
    if t.get("p50_ms") and f.get("p50_ms"):
        parts.append(f"{t['p50_ms'] / f['p50_ms']:.1f}x faster ({t['p50_ms']:.1f} -> {f['p50_ms']:.1f} ms p50)")
    if t.get("size_mb") and f.get("size_mb"):
        parts.append(f"{t['size_mb'] / f['size_mb']:.1f}x smaller ({t['size_mb']:.2f} -> {f['size_mb']:.2f} MB)")
    gained = ", ".join(parts) or "no timing"
    drop = None if t.get("dice") is None or f.get("dice") is None else t["dice"] - f["dice"]
    cost = NA if drop is None else f"{drop:+.4f} Dice ({t['dice']:.4f} -> {f['dice']:.4f})"
    budget = (rep.get("recipe") or {}).get("max_dice_drop")
    if budget is None:
        verdict = "no Dice budget was set"
    elif drop is None:
        verdict = "budget unknown (no Dice)"
    elif drop <= budget:
        verdict = f"budget of {budget:g} Dice MET"
    else:
        verdict = f"budget of {budget:g} Dice MISSED by {drop - budget:.4f}"
    return f"{f['name']} ({f['precision']}) vs the teacher: {gained}; cost {cost}; {verdict}."


def warnings(rep: dict) -> list[str]:
    """Lines a user must not miss: INT8 slower than FP32, distillation that did not help,
    stages timed on a busy machine."""
    out = []
    for s in rep["stages"]:
        n = s.get("notes") or {}
        if n.get("warning"):
            out.append(f"warning: {s['name']}: {n['warning']}")
        if n.get("kept_start"):
            out.append(f"warning: {s['name']}: {n['kept_start']}")
        if s.get("noisy_reason"):
            out.append(f"warning: {s['name']} was timed on a busy machine ({s['noisy_reason']})")
    return out


def terminal_table(rep: dict) -> str:
    head = (f"{'stage':<10}{'precision':>10}{'params':>11}{'GFLOPs':>8}{'MB':>8}{'p50 ms':>9}{'p90 ms':>9}"
            f"{'Dice':>8}{'drop':>11}")
    lines = [head]
    for i, s in enumerate(rep["stages"]):
        def f(v, fmt, w):
            return format(_f(v, fmt), f">{w}")
        drop = format(REFERENCE, ">11") if i == 0 else f(s["dice_drop"], "+.4f", 11)
        lines.append(f"{s['name']:<10}{s['precision']:>10}{f(s['params'], ',', 11)}{f(s['gflops'], '.2f', 8)}"
                     f"{f(s['size_mb'], '.2f', 8)}{f(s['p50_ms'], '.1f', 9)}{f(s.get('p90_ms'), '.1f', 9)}"
                     f"{f(s['dice'], '.4f', 8)}{drop}")
    return "\n".join([headline(rep), "", *lines, *warnings(rep)])


def _int8_lines(n: dict) -> list[str]:
    lines = ["", "## INT8", "", f"- recipe `{n.get('recipe')}`, calibration `{n.get('method')}`"]
    weight_only = n.get("recipe") == "cpu-weights"
    if weight_only:
        lines.append("- weight-only INT8: Conv/MatMul weights stored as INT8 (per channel), dequantized once "
                     "when ONNX Runtime loads the bundle; activations stay float, so no block needs a fallback")
    else:
        lines.append(f"- Dice with every block in INT8: {_f(n.get('dice_all_int8'), '.4f')}")
    lines.append(f"- Dice of the FP32 model it was made from: {_f(n.get('dice_fp32'), '.4f')}")
    if n.get("fp32_over_budget_by"):
        lines.append(f"- the FP32 model already missed the Dice budget by {n['fp32_over_budget_by']:.4f} "
                     "before quantization (pruning/distillation cost); INT8 fallback cannot recover that, "
                     f"so INT8 itself was held to at most {QUANT_TOL} Dice below FP32")
    if n.get("float_blocks"):
        lines.append("- blocks kept in float (most sensitive first):")
        for b in n["float_blocks"]:
            lines.append(f"  - `{b['block']}`: alone recovers {b['dice_gain_alone']:+.4f} Dice; "
                         f"after keeping it, Dice {b['dice_after']:.4f}")
    elif weight_only:
        pass
    elif n.get("dice_all_int8", 0) >= n.get("dice_fp32", 1):
        lines.append("- INT8 cost no validation Dice here (all-INT8 >= FP32), so every block stays INT8")
    else:
        lines.append(f"- the all-INT8 model meets the guard's target (Dice >= {_f(n.get('target_dice'), '.4f')}): "
                     "every block stays INT8")
    if n.get("budget_missed_by"):
        lines.append(f"- budget missed by {n['budget_missed_by']:.4f} Dice even after fallback")
    return lines


def markdown_report(rep: dict) -> str:
    lines = ["# edgeseg compress report", "", f"**{headline(rep)}**", ""]
    lines += [f"> **{w}**" for w in warnings(rep)]
    lines += ["", f"- teacher: `{rep['checkpoint']}`", f"- bundle: `{rep['bundle']}`",
              f"- validation: `{rep['validation']['data']}` split `{rep['validation']['split']}` "
              f"({rep['validation']['images']} images)",
              f"- calibration: {rep['calibration'].get('count')} images, sha256 `{rep['calibration'].get('sha256')}`",
              f"- machine: {rep['machine'].get('cpu', {}).get('model', '?')}, threads {rep['threads']}",
              "- sizes in MB (10^6 bytes); latency: model-only, ms per image on this machine (p50, p90, and the "
              "spread = 1.4826 x median absolute deviation)", "",
              "| stage | runner | precision | params | GFLOPs | size MB | p50 ms | p90 ms | spread ms | Dice | IoU | "
              "Dice drop | worst image (drop) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, s in enumerate(rep["stages"]):
        if i == 0:
            drop = worst = REFERENCE
        else:
            drop = _f(s["dice_drop"], "+.4f")
            worst = NA if s["worst_image"] is None else f"{s['worst_image']} ({s['worst_drop']:+.3f})"
        p50 = _f(s["p50_ms"], ".1f") + (" !" if s.get("noisy_reason") else "")
        lines.append(f"| {s['name']} | {s['runner']} | {s['precision']} | {_f(s['params'], ',')} | "
                     f"{_f(s['gflops'], '.2f')} | {_f(s['size_mb'], '.2f')} | {p50} | {_f(s.get('p90_ms'), '.1f')} | "
                     f"{_f(s.get('spread_ms'), '.2f')} | {_f(s['dice'], '.4f')} | {_f(s['iou'], '.4f')} | {drop} | "
                     f"{worst} |")
    lines.append("")
    lines.append("`!`: timed on a busy machine (see the warnings above).")
    q = next((s for s in rep["stages"] if s["name"] == "quantize"), None)
    if q:
        lines += _int8_lines(q["notes"])
    d = next((s for s in rep["stages"] if s["name"] == "distill"), None)
    if d and d["notes"].get("selection"):
        sel = d["notes"]["selection"]
        lines += ["", "## Distillation", "",
                  f"- epochs kept by validation agreement (Dice) with the teacher's masks: starting point "
                  f"{_f(sel.get('start_agreement'), '.4f')}, best epoch {sel.get('best_epoch')} "
                  f"{_f(sel.get('best_agreement'), '.4f')}; kept: {sel.get('kept')}"]
    lines += ["", "Per-image Dice drop against the teacher (validation):", ""]
    for s in rep["stages"][1:]:
        dist = s["notes"].get("per_image_drop")
        if dist:
            lines.append(f"- {s['name']}: mean {dist['mean']:+.4f}, median {dist['median']:+.4f}, "
                         f"p90 {dist['p90']:+.4f}, max {dist['max']:+.4f}, share > 0.05: {dist['share_over_0.05']:.1%}")
    return "\n".join(lines) + "\n"


def plot_stages(rep: dict, path: Path) -> Path:
    """Validation Dice vs p50 latency per stage, with the Dice budget drawn as a line."""
    from edgeseg.measure.report import require_matplotlib, save_figure

    Figure, Canvas = require_matplotlib()
    rows = [r for r in rep["stages"] if r.get("p50_ms") is not None and r.get("dice") is not None]
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    ax.plot([r["p50_ms"] for r in rows], [r["dice"] for r in rows], "o-", color="#3366aa")
    for i, r in enumerate(rows):  # alternate label sides so neighbouring stages do not overlap
        ax.annotate(r["name"], (r["p50_ms"], r["dice"]), textcoords="offset points",
                    xytext=(6, 6 if i % 2 == 0 else -12), fontsize=8)
    budget = (rep.get("recipe") or {}).get("max_dice_drop")
    if budget is not None and rows:
        ax.axhline(rows[0]["dice"] - budget, color="#aa3333", linestyle="--", linewidth=1,
                   label=f"budget: teacher Dice - {budget:g}")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("model-only p50 latency, ms (this machine)")
    ax.set_ylabel("validation Dice")
    ax.set_title("edgeseg compress: Dice vs latency per stage", fontsize=10)
    ax.grid(alpha=0.3)
    return save_figure(fig, Canvas, Path(path))
