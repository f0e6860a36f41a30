"""Time the README's demo: ``edgeseg compress`` with no arguments (the embedded demo teacher).

    python benchmarks/demo_compress.py [--repeat 1] [--keep DIR]

Runs ``edgeseg compress -o <temporary folder> -q`` in a subprocess, exactly as a user would, and
records its exit code (0: every budget met; 3: no bundle, a budget missed), the budget figures
of the chosen model and the budget lines it printed, its wall time, the CPU time it used (user + sys, the command and its children), the load
average before and after, how many cores *other* processes kept busy meanwhile (from
/proc/stat: machine busy time minus the demo's own CPU time, over the wall time), each stage's
duration and result from the demo's report, and the machine (``machine_info``). On a shared
machine the wall time grows with the others' load; the CPU seconds are the steadier figure.

Writes benchmarks/results/demo_compress.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, save  # noqa: E402


def _busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat; None where it cannot be read."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def run_once(out: Path) -> dict:
    exe = Path(sys.executable).with_name("edgeseg")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edgeseg"]
    cmd += ["compress", "-o", str(out), "-q"]
    load_before = os.getloadavg()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    j0 = _busy_jiffies()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    j1 = _busy_jiffies()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_after = os.getloadavg()
    if proc.returncode not in (0, 3):  # 3: ran to the end, but no model met every budget (no bundle)
        sys.exit(f"the demo failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    user, sys_ = ru1.ru_utime - ru0.ru_utime, ru1.ru_stime - ru0.ru_stime
    others = None
    if j0 and j1:
        hz = os.sysconf("SC_CLK_TCK")
        machine_busy_s = (j1[0] - j0[0]) / hz
        others = round(max(machine_busy_s - user - sys_, 0.0) / wall, 2)
    rep = json.loads((out / "report.json").read_text())
    return {
        "wall_s": round(wall, 1), "cpu_user_s": round(user, 1), "cpu_sys_s": round(sys_, 1),
        "cpu_s": round(user + sys_, 1), "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after], "others_busy_cores": others,
        "stages": [{"name": s["name"], "seconds": s["seconds"], "dice": s["dice"], "p50_ms": s["p50_ms"],
                    "noisy": bool(s.get("noisy_reason"))} for s in rep["stages"]],
        "headline": proc.stdout.splitlines()[0] if proc.stdout else None,
        "exit_code": proc.returncode, "budgets_met": (rep.get("budgets") or {}).get("met"),
        "budget_figures": ((rep.get("budgets") or {}).get("point") or {}).get("fidelity"),
        "budget_lines": [ln for ln in proc.stderr.splitlines() if "budget" in ln.lower()],
        "recipe": {k: rep["recipe"].get(k) for k in ("distill_epochs", "calib_count", "runs", "warmup", "threads",
                                                     "calib_method", "max_dice_drop", "max_image_drop",
                                                     "image_quantile", "min_agreement", "max_lost_lesions", "search",
                                                     "target")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=1, help="Runs of the demo (each into a new folder).")
    ap.add_argument("--keep", type=Path, default=None, help="Keep the last run's output here (a new folder).")
    a = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="edgeseg-demo-") as td:
        for k in range(a.repeat):
            out = (a.keep if a.keep and k == a.repeat - 1 else Path(td) / f"demo{k}")
            runs.append(run_once(out))
            print(f"run {k + 1}/{a.repeat}: {runs[-1]['wall_s']:.0f} s wall, {runs[-1]['cpu_s']:.0f} s CPU "
                  f"(user + sys), load average {runs[-1]['load_average_before'][0]:.2f} -> "
                  f"{runs[-1]['load_average_after'][0]:.2f}, others kept {runs[-1]['others_busy_cores']} cores busy",
                  file=sys.stderr)
    best = min(runs, key=lambda r: r["wall_s"])
    path = save("demo_compress", {
        "command": "edgeseg compress -o OUT -q", "cores": os.cpu_count(), "runs": runs,
        "best_wall_s": best["wall_s"], "best_cpu_s": min(r["cpu_s"] for r in runs),
        "note": "wall time on a shared machine grows with the others' load (others_busy_cores); the CPU seconds "
                "(user + sys of the demo) are what the demo itself costs"})
    print(path)


if __name__ == "__main__":
    main()
