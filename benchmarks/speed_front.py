"""Issue-10 speed targets: every model a compress search measured, timed side by side with
PyTorch eager FP32 (the teacher as ``transformers`` runs it) and ONNX Runtime on the plain
(unfolded) export, in one process, on this machine.

    python benchmarks/speed_front.py [--search runs/kvasir_search4] [--result compress_search_quiet]
                                     [--runs 100] [--warmup 10] [--threads 2]

What it times (model-only, batch 1, ``--threads`` intra-op threads, the same pre-processed
Kvasir val image; each configuration alone in its own process, since idle thread pools of other
ONNX Runtime, OpenVINO and torch instances in one process steal each other's cores on a 2-core
machine; ``--cycles`` blocks over all configurations with the order rotating, so a slow spell
of the machine falls on all alike; p50 over every timed call):

  eager           the teacher (benchmarks/teachers/kvasir-b0) in PyTorch, FP32, inference mode
  ort/plain       the unfolded FP32 export (``edgeseg export --no-fold``; runs/runtimes/plain,
                  made by benchmarks/runtimes.py or here when missing) under ONNX Runtime
  ort/<point>     each point of the search (``--search`` OUT/report.json or state.json: every
                  candidate's FP32 and INT8 model) under ONNX Runtime
  ov/<point>      the same under OpenVINO, where edgeseg's OpenVINO runner accepts the graph
                  (it refuses INT8 Q/DQ graphs: the reason is recorded)

Then, per point: speed-up over eager and over ort/plain, size against the folded FP32 ONNX,
and the budget figures the search measured on validation, with the test-split figures from
``benchmarks/results/<--result>.json`` when that run scored them. The issue's targets are
checked row by row: >= 12x over eager within every budget, >= 8x smaller than the FP32 ONNX,
and a lossless tier >= 2x faster than ONNX Runtime on the plain export.

Saves benchmarks/results/speed_front.{json,md} with CPU flags, load and versions.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, SHARED, save

TEACHER = DEFAULT_TEACHER = ROOT / "benchmarks" / "teachers" / "kvasir-b0"
DATA = DEFAULT_DATA = SHARED / "kvasir-seg"
PLAIN = DEFAULT_PLAIN = ROOT / "runs" / "runtimes" / "plain"


def points_of(search: Path) -> list[dict]:
    """Every exported model of the search, from its state (and, when finished, its report)."""
    rep = search / "report.json"
    if rep.is_file():
        r = json.loads(rep.read_text())
        chosen = ((r.get("budgets") or {}).get("point") or {}).get("point")
        return [{**p, "chosen": p["point"] == chosen} for p in r["points"]]
    st = json.loads((search / "state.json").read_text())
    out = []
    for cand, h in (st.get("candidates") or {}).items():
        for name, res in (h.get("stages") or {}).items():
            if name in ("export", "quantize"):
                out.append({"point": f"{cand}/{res['precision']}", "path": res["path"], "size_mb": res.get("size_mb"),
                            "fidelity": res.get("fidelity") or {}, "met": None, "chosen": False})
    return out


def child(kind: str, path: str, threads: int, warmup: int, runs: int) -> None:
    """Time one configuration alone in this process; print its per-call times as JSON."""
    from edgeseg.data import folders as D
    from edgeseg.measure.runtimes import interleave
    from edgeseg.runtime.segmenter import Segmenter

    image = D.load_pair(D.discover(os.environ.get("SPEED_FRONT_DATA", DATA), "val")[0], 2)[0]
    if kind == "eager":
        import torch

        from edgeseg.model.checkpoint import load_checkpoint

        torch.set_num_threads(threads)
        model, _ = load_checkpoint(path)
        model.eval()
        xt = torch.from_numpy(Segmenter(os.environ.get("SPEED_FRONT_PLAIN", PLAIN), threads=1).prepare([image]))

        def call():
            with torch.inference_mode():
                return model(pixel_values=xt).logits
    else:
        seg = Segmenter(path, threads=threads, runtime=kind)
        x = seg.prepare([image])

        def call():
            return seg.runner.infer(x)
    il = interleave({"c": call}, warmup=warmup, runs=runs)
    print(json.dumps({"times_ns": il.times["c"], "others_cores": il.others_cores}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        cp = argparse.ArgumentParser()
        cp.add_argument("--child", nargs=2)
        cp.add_argument("--threads", type=int)
        cp.add_argument("--runs", type=int)
        cp.add_argument("--warmup", type=int)
        c = cp.parse_args()
        return child(c.child[0], c.child[1], c.threads, c.warmup, c.runs)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--search", default=str(ROOT / "runs/kvasir_search4"))
    ap.add_argument("--result", default="compress_search_quiet", help="the compress_search.py result with test figures")
    ap.add_argument("--runs", type=int, default=40, help="timed calls per configuration and cycle")
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--teacher", default=str(DEFAULT_TEACHER), help="the search's teacher (timed in PyTorch eager)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="dataset whose first val image is timed")
    ap.add_argument("--plain", default=None, help="the teacher's unfolded export (made when missing)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="speed_front")
    a = ap.parse_args()


    from edgeseg.measure.machine import machine_info
    from edgeseg.measure.runtimes import cpu_facts, noise_reasons
    from edgeseg.measure.timing import latency_stats
    from edgeseg.runtime.errors import EdgesegError
    from edgeseg.runtime.segmenter import Segmenter

    teacher, data = Path(a.teacher), Path(a.data)
    plain = Path(a.plain) if a.plain else DEFAULT_PLAIN if teacher.name == "kvasir-b0" else \
        ROOT / "runs" / f"plain_{teacher.name}"
    os.environ["SPEED_FRONT_DATA"], os.environ["SPEED_FRONT_PLAIN"] = str(data), str(plain)  # for the children
    search = Path(a.search)
    if not (plain / "edgeseg.json").is_file():
        subprocess.run([sys.executable, "-m", "edgeseg", "export", str(teacher), "-o", str(plain), "--no-fold",
                        "--data", str(data), "--split", "val"], check=True, stdout=subprocess.DEVNULL)
    points = points_of(search)
    configs = {"eager": ("eager", str(teacher)), "ort/plain": ("onnxruntime", str(plain))}
    skipped = {}
    for p in points:
        path = search / p["path"]
        for rt, tag in (("onnxruntime", "ort"), ("openvino", "ov")):
            try:  # opened here only to learn whether the runtime accepts it; timed in a child process
                seg = Segmenter(path, threads=a.threads, runtime=rt)
            except EdgesegError as exc:
                skipped[f"{tag}/{p['point']}"] = str(exc).splitlines()[0]
                continue
            if tag == "ort":
                p["onnx_mb"] = round(seg.bundle.model_file.stat().st_size / 1e6, 3)
            del seg
            configs[f"{tag}/{p['point']}"] = (rt, str(path))
    gc.collect()
    # each configuration timed alone in its own process (idle thread pools of other ONNX Runtime,
    # OpenVINO and torch instances in one process steal cores from each other on a 2-core machine),
    # in --cycles blocks whose order rotates, so a slow spell of the machine falls on all alike
    times = {n: [] for n in configs}
    others, loads = {n: [] for n in configs}, []
    names = list(configs)
    for cyc in range(a.cycles):
        order = names[cyc % len(names):] + names[:cyc % len(names)]
        for n in order:
            kind, path = configs[n]
            loads.append(os.getloadavg()[0])
            out = subprocess.run([sys.executable, __file__, "--child", kind, path, "--threads", str(a.threads),
                                  "--runs", str(a.runs), "--warmup", str(a.warmup)], check=True,
                                 capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            times[n] += r["times_ns"]
            others[n].append(r["others_cores"] or 0.0)
        print(f"cycle {cyc + 1}/{a.cycles} done", flush=True)
    stats = {n: latency_stats(t) for n, t in times.items()}
    most_others = max((max(v) for v in others.values() if v), default=0.0)
    reasons = noise_reasons(stats, most_others, a.threads)
    eager_p50, plain_p50 = stats["eager"].p50_ms, stats["ort/plain"].p50_ms
    stats = {n: (v, eager_p50, plain_p50) for n, v in stats.items()}
    il = type("L", (), {"load_before": round(max(loads), 2), "others_cores": round(most_others, 3)})
    groups = {n: {"p50_ms": round(v[0].p50_ms, 3), "p90_ms": round(v[0].p90_ms, 3), "spread_ms": round(v[0].spread_ms, 3),
                  "others_cores_max": round(max(others[n]), 3)} for n, v in stats.items()}
    test = {}
    res_file = RESULTS / f"{a.result}.json"
    if res_file.is_file():
        test = (json.loads(res_file.read_text()).get("test") or {}).get("points") or {}
    fp32_mb = next((p.get("onnx_mb") for p in points if p["point"] == "fold/fp32"), None)
    rows = []
    for p in points:
        for tag in ("ort", "ov"):
            k = f"{tag}/{p['point']}"
            if k not in stats:
                continue
            s, e_p50, pl_p50 = stats[k]
            f = p.get("fidelity") or {}
            rows.append({"config": k, "point": p["point"], "p50_ms": round(s.p50_ms, 3), "spread_ms": round(s.spread_ms, 3),
                         "x_eager": round(e_p50 / s.p50_ms, 2), "x_ort_plain": round(pl_p50 / s.p50_ms, 2),
                         "onnx_mb": p.get("onnx_mb"),
                         "x_smaller": round(fp32_mb / p["onnx_mb"], 2) if fp32_mb and p.get("onnx_mb") else None,
                         "val": {k2: f.get(k2) for k2 in ("mean_drop", "image_drop", "agreement", "lost_lesions",
                                                          "lesions")},
                         "met": p.get("met"), "chosen": p.get("chosen"), "test": test.get(p["point"])})
    rows.sort(key=lambda r: r["p50_ms"])
    res = {"command": "python benchmarks/speed_front.py " + " ".join(sys.argv[1:]), "threads": a.threads,
           "runs": a.runs, "warmup": a.warmup, "cpu": cpu_facts(machine_info()), "load_before": il.load_before,
           "others_cores": il.others_cores, "noisy": reasons, "eager_p50_ms": round(eager_p50, 3),
           "ort_plain_p50_ms": round(plain_p50, 3), "fp32_onnx_mb": fp32_mb,
           "groups": groups,
           "skipped": skipped, "rows": rows}
    met = [r for r in rows if r["met"]]
    best = met[0] if met else None
    lossless = [r for r in rows if r["point"] == "fold/fp32"]
    res["targets"] = {
        "12x_within_budgets": None if best is None else {"config": best["config"], "x_eager": best["x_eager"],
                                                         "reached": best["x_eager"] >= 12},
        "8x_smaller_within_budgets": None if not met else {"best": max((r["x_smaller"] or 0) for r in met),
                                                           "reached": max((r["x_smaller"] or 0) for r in met) >= 8},
        "lossless_2x_over_ort_plain": None if not lossless else {"x": max(r["x_ort_plain"] for r in lossless),
                                                                 "reached": max(r["x_ort_plain"] for r in lossless) >= 2},
    }
    save(a.name, res)
    flags = ", ".join(k for k, v in res["cpu"]["flags"].items() if v) or "none"
    md = [f"# {a.name}: every searched model against PyTorch eager, side by side", "",
          f"CPU {res['cpu']['model']} ({flags}); {a.threads} threads, batch 1, model-only; each configuration "
          f"timed alone in its own process, {a.runs} calls after {a.warmup} warm-up, in {a.cycles} cycles over all "
          f"configurations (order rotating; p50 of all {a.runs * a.cycles} calls); highest load average before a "
          f"block {il.load_before}, other processes kept at most {il.others_cores} cores busy; {'noisy: ' + '; '.join(reasons) if reasons else 'clean by the noise rules'}.", "",
          f"PyTorch eager FP32 p50 **{eager_p50:.1f} ms**; ONNX Runtime on the plain "
          f"(unfolded) export {plain_p50:.1f} ms; folded FP32 ONNX {fp32_mb} MB.", "",
          "| config | p50 ms (spread) | x eager | x ORT plain | ONNX MB | x smaller | val: mean drop / p95 drop / "
          "agreement / lost | budgets (val) | test: mean drop / p95 drop / agreement / lost |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v, t = r["val"], r["test"]
        vs = (f"{v['mean_drop']:+.4f} / {v['image_drop']:+.4f} / {v['agreement']:.4f} / {v['lost_lesions']}/{v['lesions']}"
              if v.get("agreement") is not None else "-")
        ts = (f"{t['mean_drop']:+.4f} / {t['image_drop']:+.4f} / {t['agreement']:.4f} / {t['lost_lesions']}/{t['lesions']}"
              if t else "-")
        md.append(f"| {r['config']}{' (chosen)' if r['chosen'] else ''} | {r['p50_ms']:.2f} ({r['spread_ms']:.2f}) | "
                  f"{r['x_eager']:.1f}x | {r['x_ort_plain']:.2f}x | {r['onnx_mb']} | {r['x_smaller'] or '-'}x | {vs} | "
                  f"{'met' if r['met'] else ('missed' if r['met'] is False else '?')} | {ts} |")
    if skipped:
        md += ["", "Not timed: " + "; ".join(f"{k} ({v})" for k, v in skipped.items())]
    tg = res["targets"]
    md += ["", "## Targets (issue 10)", "",
           "- >= 12x over eager within every budget: "
           + ("no model met every budget" if tg["12x_within_budgets"] is None else
              f"fastest within budget {tg['12x_within_budgets']['config']} at {tg['12x_within_budgets']['x_eager']}x: "
              f"{'reached' if tg['12x_within_budgets']['reached'] else 'NOT reached'}"),
           "- >= 8x smaller than the FP32 ONNX within every budget: "
           + ("-" if tg["8x_smaller_within_budgets"] is None else
              f"best {tg['8x_smaller_within_budgets']['best']}x: "
              f"{'reached' if tg['8x_smaller_within_budgets']['reached'] else 'NOT reached'}"),
           "- lossless tier >= 2x over ONNX Runtime on the plain export: "
           + ("-" if tg["lossless_2x_over_ort_plain"] is None else
              f"{tg['lossless_2x_over_ort_plain']['x']}x: "
              f"{'reached' if tg['lossless_2x_over_ort_plain']['reached'] else 'NOT reached'}"),
           "", f"Command: `{res['command']}`"]
    (RESULTS / f"{a.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
