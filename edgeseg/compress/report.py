"""What ``edgeseg compress`` tells its user: a headline, a table per stage, the INT8 decisions.

Everything reads the plain report dict that ``Compressor.run`` returns (and writes to
``report.json``): :func:`headline` (what was gained, what it cost, whether the Dice budget
was met), :func:`budget_lines` (the verdict on every budget, loud when over budget),
:func:`terminal_table`, :func:`markdown_report` (with the whole Pareto table of the search's
points), :func:`plot_stages` (Dice vs latency along the chosen model's chain, the budget drawn
as a line) and :func:`plot_points` (agreement with the teacher vs latency for every point,
the agreement budget drawn as a line). The teacher is the reference: its own drop
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


def budget_lines(rep: dict) -> list[str]:
    """The verdict: one line when every budget holds; otherwise a loud line saying whether a
    bundle was written, then one line per missed budget."""
    b = rep.get("budgets") or {}
    p = b.get("point") or {}
    if b.get("met"):
        pts = rep.get("points") or []
        return [f"budgets MET by {p.get('point')} (the fastest of the {sum(bool(q.get('met')) for q in pts)} of "
                f"{len(pts)} points meeting every budget): {_figures(p.get('fidelity') or {})}"]
    if b.get("accepted_over_budget"):
        head = (f"OVER BUDGET: {p.get('point')} misses {len(b.get('lines') or [])} budget(s); its bundle was written "
                "ONLY because --accept-over-budget was given, and its manifest says over_budget")
    else:
        head = ("OVER BUDGET: no model meets every budget, so NO BUNDLE was written (the stages are kept: rerun with "
                "--accept-over-budget to take the closest one, or with other budgets; nothing is redone)")
    return [head, *(b.get("lines") or [])]


def _figures(f: dict) -> str:
    if not f:
        return "not measured"
    q = f.get("image_quantile", 0.95)
    return (f"mean drop {_f(f.get('mean_drop'), '+.4f')}, p{q * 100:g} image drop {_f(f.get('image_drop'), '+.4f')}, "
            f"agreement {_f(f.get('agreement'), '.4f')}, lost lesions {f.get('lost_lesions')}/{f.get('lesions')}")


def pareto_table(rep: dict) -> list[str]:
    """Markdown rows: every point of the search with its latency, size and budget figures."""
    b = rep.get("budgets") or {}
    lim = b.get("limits") or {}
    chosen = (b.get("point") or {}).get("point")
    q = lim.get("image_quantile", 0.95)
    lines = [f"| point | runner | p50 ms | size MB | Dice | mean drop (<= {lim.get('max_dice_drop')}) | "
             f"p{q * 100:g} image drop (<= {lim.get('max_image_drop')}) | agreement (>= {lim.get('min_agreement')}) "
             f"| lost lesions (<= {lim.get('max_lost_lesions')}) | budgets | Pareto |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(rep.get("points") or [], key=lambda p: p.get("p50_ms") or float("inf")):
        f = p.get("fidelity") or {}
        verdict = "met" if p.get("met") else "missed: " + ", ".join(m["budget"] for m in p.get("missed") or [])
        name = f"**{p['point']}** (chosen)" if p["point"] == chosen else p["point"]
        lines.append(f"| {name} | {p.get('runner')} | {_f(p.get('p50_ms'), '.1f')}{' !' if p.get('noisy') else ''} | "
                     f"{_f(p.get('size_mb'), '.2f')} | {_f(p.get('dice'), '.4f')} | {_f(f.get('mean_drop'), '+.4f')} | "
                     f"{_f(f.get('image_drop'), '+.4f')} | {_f(f.get('agreement'), '.4f')} | "
                     f"{f.get('lost_lesions', NA)}/{f.get('lesions', NA)} | {verdict} | "
                     f"{'yes' if p.get('pareto') else ''} |")
    return lines


def _search_lines(rep: dict) -> list[str]:
    s = (rep.get("budgets") or {}).get("search") or {}
    if not s:
        return []
    tb = s.get("time_budget_min")
    out = ["", "## Search", "",
           f"- mode: {s.get('mode')}; timed with {s.get('runtime')}; time budget "
           f"{'none' if tb is None else f'{tb:g} min'}; this run took {s.get('elapsed_s')} s"]
    for cnd in s.get("candidates") or []:
        what = ", ".join(f"{k}={v}" for k, v in (cnd.get("overrides") or {}).items() if v is not None) or "as is"
        extra = cnd.get("reason") or f"{cnd.get('epochs', 0)} distillation epoch(s), {cnd.get('seconds')} s"
        out.append(f"- `{cnd['candidate']}` ({what}): {cnd['status']}; {extra}")
    return out


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
    return "\n".join([headline(rep), "", *lines, *warnings(rep), "", *budget_lines(rep)])


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
    verdict = budget_lines(rep)
    lines = ["# edgeseg compress report", ""]
    if not (rep.get("budgets") or {}).get("met", True):
        lines += [f"> **{verdict[0]}**", ""] + [f"- **{x}**" for x in verdict[1:]] + [""]
    lines += [f"**{headline(rep)}**", ""]
    lines += [f"> **{w}**" for w in warnings(rep)]
    lines += ["", f"- teacher: `{rep['checkpoint']}`",
              f"- bundle: `{rep['bundle']}`" if rep.get("bundle") else "- bundle: **none written (over budget)**",
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
    if rep.get("points"):
        lim = (rep.get("budgets") or {}).get("limits") or {}
        lines += ["", "## Budgets and every candidate (validation split)", "", *verdict, "",
                  f"Budgets: mean Dice drop <= {lim.get('max_dice_drop')}, p{lim.get('image_quantile', 0.95) * 100:g} "
                  f"per-image Dice drop <= {lim.get('max_image_drop')}, mean agreement with the teacher's masks >= "
                  f"{lim.get('min_agreement')}, lost lesions (teacher's connected components of >= "
                  f"{lim.get('min_lesion_px', 9)} px at the model's input that the model no longer "
                  f"touches) <= {lim.get('max_lost_lesions')}. Plot: `agreement_vs_latency.png`.", "",
                  *pareto_table(rep), *_search_lines(rep)]
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
    from edgeseg.measure.reliability import stage_lines  # [calibration] ECE per stage, when measured

    lines += stage_lines(rep["stages"])
    return "\n".join(lines) + "\n"


def plot_stages(rep: dict, path: Path) -> Path:
    """Validation Dice vs p50 latency per stage, with the Dice budget drawn as a line."""
    from edgeseg.measure.report import require_matplotlib

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
    return _save(fig, Canvas, ax, path, "validation Dice", "edgeseg compress: Dice vs latency per stage")


def _save(fig, Canvas, ax, path: Path, ylabel: str, title: str) -> Path:
    from edgeseg.measure.report import save_figure

    ax.set_xlabel("model-only p50 latency, ms (this machine)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return save_figure(fig, Canvas, Path(path))


def plot_points(rep: dict, path: Path) -> Path:
    """Agreement with the teacher's masks vs p50 latency for every point of the search; points
    meeting every budget filled, the others hollow; the agreement budget drawn as a line."""
    from edgeseg.measure.report import require_matplotlib

    Figure, Canvas = require_matplotlib()
    pts = [p for p in rep.get("points") or [] if p.get("p50_ms") and (p.get("fidelity") or {}).get("agreement")]
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    chosen = ((rep.get("budgets") or {}).get("point") or {}).get("point")
    for met, style in ((True, dict(color="#338833", marker="o", linestyle="none", label="meets every budget")),
                       (False, dict(color="#aa3333", marker="o", mfc="none", linestyle="none",
                                    label="misses a budget"))):
        sel = [p for p in pts if bool(p.get("met")) == met]
        if sel:
            ax.plot([p["p50_ms"] for p in sel], [p["fidelity"]["agreement"] for p in sel], **style)
    for i, p in enumerate(pts):
        ax.annotate(p["point"] + (" (chosen)" if p["point"] == chosen else ""),
                    (p["p50_ms"], p["fidelity"]["agreement"]), textcoords="offset points",
                    xytext=(5, 5 if i % 2 == 0 else -11), fontsize=7)
    lim = ((rep.get("budgets") or {}).get("limits") or {}).get("min_agreement")
    if lim is not None:
        ax.axhline(lim, color="#aa3333", linestyle="--", linewidth=1, label=f"budget: agreement >= {lim:g}")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, Canvas, ax, path, "agreement (Dice with the teacher's masks), validation",
                 "edgeseg compress: every candidate, agreement vs latency")
