"""`edgeseg monitor`: the summary of a request log (latency percentiles, drift rate over time,
area shift, live Dice per version) and its plot."""

import json

import numpy as np
import pytest
from conftest import one_line_error, run_cli


def synthetic_log(folder, n=40):
    """A log whose second half has larger areas, more drift, and a worse version v2."""
    from edgeseg.serve.requestlog import RequestLog
    from edgeseg.serve.store import timestamp

    log = RequestLog(folder)
    rng = np.random.default_rng(0)
    for i in range(n):
        late = i >= n // 2
        fg = int(rng.integers(3000, 4000) if late else rng.integers(500, 1000))
        v = "v2" if late else "v1"
        log.write({"type": "segment", "time": timestamp(1_800_000_000 + i), "status": 200, "request_id": f"r{i}",
                   "version": v, "sha256": "0" * 64, "latency_ms": float(10 + i), "image": [100, 100],
                   "drift_score": 1.0, "drifted": bool(late and i % 2), "areas": {"background": 10000 - fg,
                                                                                    "lesion": fg},
                   "mean_confidence": 0.9})
        log.write({"type": "feedback", "time": timestamp(1_800_000_000 + i + 0.5), "request_id": f"r{i}",
                   "version": v, "sha256": "0" * 64, "dice": 0.6 if late else 0.9, "fp_pixels": 10, "fn_pixels": 5,
                   "pixels": 10000})
    log.write({"type": "segment", "time": timestamp(1_800_000_000 + n), "status": 415, "error": "not an image"})
    return folder


def test_summary(tmp_path):
    from edgeseg.serve.monitor import summarise

    s = summarise(synthetic_log(tmp_path / "log"))
    assert s["requests"] == 40 and s["refused"] == 1 and s["feedback"] == 40
    lat = np.arange(10, 50, dtype=float)
    assert s["latency_ms"]["p50"] == pytest.approx(np.percentile(lat, 50))
    assert s["latency_ms"]["p99"] == pytest.approx(np.percentile(lat, 99))
    assert s["drift_rate"] == pytest.approx(10 / 40)
    rates = [b["drift_rate"] for b in s["drift_over_time"]]
    assert rates[0] == 0 and rates[-1] > 0.3  # the drift arrives late
    assert s["area_shift"]["lesion"]["ks_distance"] == 1.0  # the halves do not overlap at all
    assert s["area_shift"]["lesion"]["second_half_mean"] > 3 * s["area_shift"]["lesion"]["first_half_mean"]
    assert s["live_dice"]["v1"]["dice_mean"] == pytest.approx(0.9) and s["live_dice"]["v2"]["dice_mean"] == pytest.approx(0.6)
    assert all(b["dice"] == pytest.approx(0.6) for b in s["live_dice"]["v2"]["over_time"])


def test_ks_distance():
    from edgeseg.serve.monitor import ks_distance

    assert ks_distance([1, 2, 3], [1, 2, 3]) == 0
    assert ks_distance([0, 0], [1, 1]) == 1
    assert ks_distance([0, 1, 2, 3], [2, 3, 4, 5]) == pytest.approx(0.5)
    assert ks_distance([], [1]) is None


@pytest.mark.slow
def test_monitor_cli_plots(tmp_path):
    log = synthetic_log(tmp_path / "log")
    r = run_cli("monitor", log, "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["live_dice"]["v2"]["feedback"] == 20
    png = (tmp_path / "out" / "monitor.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "_series" not in summary and summary["requests"] == 40
    one_line_error(run_cli("monitor", log, "-o", tmp_path / "out"), "--overwrite")
    assert run_cli("monitor", log, "-o", tmp_path / "out", "--overwrite").returncode == 0


def test_monitor_bad_logs(tmp_path):
    one_line_error(run_cli("monitor", tmp_path / "missing"), "not found")
    (tmp_path / "empty").mkdir()
    one_line_error(run_cli("monitor", tmp_path / "empty"), "holds no requests.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    one_line_error(run_cli("monitor", bad), "not a JSON line")
