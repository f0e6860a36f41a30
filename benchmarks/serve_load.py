"""Load test of `edgeseg serve` (issue 12): a real uvicorn server in a subprocess on 127.0.0.1,
CLIENTS concurrent clients x REQUESTS requests each (bounded by --time-budget), a rollback in the
middle; every answer must be 200, name a version, and carry exactly the mask that a serial
`Segmenter.predict` of that version gives. Loopback only; nothing leaves the machine.

The two versions: v1 = the embedded demo teacher's bundle (runs/serve-demo/bundle, exported
once, as `edgeseg serve` does), v2 = its weight-only INT8 copy (`--target cpu-weights`, no
calibration needed), so the versions are distinct models. v2 is active at the start; the
rollback (to v1) is sent when half the planned requests have been answered or half the time
budget has passed, whichever comes first.

    python benchmarks/serve_load.py                      # 8 clients x 500, at most 300 s of load
    python benchmarks/serve_load.py --clients 2 --requests 20 --no-save   # a quick check

Saves benchmarks/results/serve_load.{json,md} with the machine and its load average.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, save


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(work: Path) -> Path:
    from edgeseg.cli.serve import _demo_bundle
    from edgeseg.quantize.stage import quantize
    from edgeseg.serve.store import ModelStore

    os.chdir(ROOT)  # the demo bundle lives in the clone's runs/
    v1 = _demo_bundle().resolve()
    v2 = quantize(v1, work / "v2-bundle", "cpu-weights")
    st = ModelStore(work / "store", create=True)
    st.add(v1, "v1")
    st.add(v2, "v2")
    st.activate("v1")
    st.activate("v2")  # rollback goes back to v1
    return work / "store"


def start_server(store: Path, port: int, log: Path) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "edgeseg", "serve", str(store), "--port", str(port), "--log", str(log)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 180:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("server not ready after 180 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=500, help="per client")
    ap.add_argument("--time-budget", type=float, default=300.0, help="seconds of load at most; clients stop after")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--render", action="store_true", help="only re-write serve_load.md from the saved JSON")
    args = ap.parse_args()
    if args.render:
        (RESULTS / "serve_load.md").write_text(markdown(json.loads((RESULTS / "serve_load.json").read_text())))
        return
    import httpx
    from PIL import Image

    from edgeseg.measure.machine import load_average
    from edgeseg.runtime import Segmenter

    work = Path(tempfile.mkdtemp(prefix="serve_load-"))
    store = prepare(work)
    files = sorted((ROOT / "calibration_data" / "images").glob("*.jpg"))
    bodies = [f.read_bytes() for f in files]
    images = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in bodies]
    want = {}
    serial_ms = {}
    for v in ("v1", "v2"):
        seg = Segmenter(store / "versions" / v)
        seg.predict(images[0])
        t0 = time.perf_counter()
        want[v] = [seg.predict(im) for im in images]
        serial_ms[v] = (time.perf_counter() - t0) * 1000 / len(images)
    differ = sum(int((a != b).any()) for a, b in zip(want["v1"], want["v2"]))

    port = free_port()
    load_before = load_average()
    proc = start_server(store, port, work / "log")
    base = f"http://127.0.0.1:{port}"
    planned = args.clients * args.requests
    records: list[tuple] = []  # (client, image, status, version, ok_mask, t_start, t_end)
    lock = threading.Lock()
    deadline = time.monotonic() + args.time_budget
    rollback: dict = {}

    def client(k: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as c:
            for j in range(args.requests):
                if time.monotonic() > deadline:
                    return
                i = (k * 7 + j) % len(bodies)
                t0 = time.monotonic()
                try:
                    r = c.post("/v1/segment", content=bodies[i], headers={"content-type": "image/jpeg",
                                                                         "accept": "image/png"})
                    status, version = r.status_code, r.headers.get("x-edgeseg-model-version")
                    ok = (status == 200 and version in want
                          and np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), want[version][i]))
                except httpx.HTTPError as exc:
                    status, version, ok = f"transport: {type(exc).__name__}", None, False
                with lock:
                    records.append((k, i, status, version, bool(ok), t0, time.monotonic()))

    def roller() -> None:
        while time.monotonic() < deadline:
            with lock:
                done = len(records)
            if done >= planned // 2 or time.monotonic() - t_start >= args.time_budget / 2:
                t = time.monotonic()
                r = httpx.post(f"{base}/v1/models/rollback", timeout=120)
                rollback.update({"sent_after_requests": done, "status": r.status_code, "answer": r.json(),
                                 "t_sent": t, "t_done": time.monotonic()})
                return
            time.sleep(0.05)

    t_start = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)] + [threading.Thread(target=roller)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t_start
    load_after = load_average()
    metrics = httpx.get(f"{base}/metrics", timeout=30).text
    proc.terminate()
    proc.wait(timeout=60)

    lat = np.array([(r[6] - r[5]) * 1000 for r in records])
    errors = [r for r in records if r[2] != 200]
    wrong = [r for r in records if r[2] == 200 and not r[4]]
    by_version = {v: sum(1 for r in records if r[3] == v) for v in ("v1", "v2")}
    in_flight = (sum(1 for r in records if r[5] < rollback["t_sent"] < r[6]) if rollback else None)
    result = {
        "what": "edgeseg serve under load: a real uvicorn server on 127.0.0.1, concurrent httpx clients, a rollback "
                "mid-run; masks compared with serial Segmenter.predict of the version each answer names",
        "clients": args.clients, "requests_per_client_planned": args.requests, "planned": planned,
        "time_budget_s": args.time_budget, "completed": len(records),
        "finished_all_planned": len(records) == planned, "errors": len(errors),
        "error_samples": [str(r[2]) for r in errors[:5]], "masks_differing_from_serial": len(wrong),
        "answers_by_version": by_version, "images": len(images), "images_where_v1_and_v2_masks_differ": differ,
        "rollback": {k: v for k, v in rollback.items() if not k.startswith("t_")} | (
            {"requests_in_flight_at_rollback": in_flight, "took_ms": (rollback["t_done"] - rollback["t_sent"]) * 1000}
            if rollback else {}),
        "wall_s": wall, "throughput_rps": len(records) / wall if wall else None,
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
                       "p99": float(np.percentile(lat, 99)), "max": float(lat.max()), "mean": float(lat.mean())}
        if lat.size else None,
        "serial_predict_ms_per_image": serial_ms,
        "load_average_1min": {"before": load_before, "after": load_after}, "cpu_count": os.cpu_count(),
        "server_metrics_requests": [ln for ln in metrics.splitlines() if ln.startswith("edgeseg_requests_total")],
    }
    print(json.dumps(result, indent=2))
    if not args.no_save:
        p = save("serve_load", result)
        (RESULTS / "serve_load.md").write_text(markdown(json.loads(p.read_text())))
        print(f"saved {p} and serve_load.md", file=sys.stderr)
    if errors or wrong or not rollback or rollback.get("status") != 200:
        sys.exit(1)


def markdown(r: dict) -> str:
    lat, rb = r["latency_ms"], r["rollback"]
    cpu = (r.get("machine") or {}).get("cpu") or {}
    return "\n".join([
        "# edgeseg serve: load test", "",
        f"`python benchmarks/serve_load.py` on {r['created']}: {r['clients']} clients x "
        f"{r['requests_per_client_planned']} requests planned ({r['planned']}), load bounded to {r['time_budget_s']:.0f} s.",
        f"Machine: {cpu.get('model', 'unknown CPU')}, {r['cpu_count']} CPUs; 1-min load average "
        f"{r['load_average_1min']['before']:.2f} before, {r['load_average_1min']['after']:.2f} after (shared with "
        "other work).", "",
        "| completed | all planned finished | errors | masks unlike serial predict | p50 ms | p90 ms | p99 ms | "
        "throughput req/s |", "|---|---|---|---|---|---|---|---|",
        f"| {r['completed']} | {'yes' if r['finished_all_planned'] else 'no (time budget)'} | {r['errors']} | "
        f"{r['masks_differing_from_serial']} | {lat['p50']:.1f} | {lat['p90']:.1f} | {lat['p99']:.1f} | "
        f"{r['throughput_rps']:.2f} |", "",
        f"Rollback v2 -> v1 sent after {rb.get('sent_after_requests')} answers, answered {rb.get('status')} in "
        f"{rb.get('took_ms', float('nan')):.0f} ms with {rb.get('requests_in_flight_at_rollback')} requests in flight; "
        f"answers by version: {r['answers_by_version']}. The two versions' masks differ on "
        f"{r['images_where_v1_and_v2_masks_differ']} of {r['images']} images, so a mask served by the wrong model "
        "would show.", "",
        "Serial `Segmenter.predict` in this process, ms per image: "
        + ", ".join(f"{v} {ms:.1f}" for v, ms in r["serial_predict_ms_per_image"].items())
        + ". Latencies are client-side (request sent to answer decoded), on a loaded machine.", ""])


if __name__ == "__main__":
    main()
