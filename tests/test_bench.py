import csv
import json
import sys

import numpy as np
import pytest

from conftest import run_cli, write_img

STATS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "spread_ms")
TINY = ("--runs", "5", "--warmup", "1", "--max-images", "4", "--batch-sizes", "1,2", "-q")


def one_line_error(r, contains):
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    err = [ln for ln in lines if ln.startswith("error:")]
    assert len(err) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert contains.lower() in err[0].lower(), r.stderr


@pytest.fixture(scope="module")
def result(tiny_ckpt, tiny_bundle, embedded, tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    r = run_cli("bench", tiny_ckpt, tiny_bundle, "--data", embedded, "--split", "val", *TINY,
                "--json", d / "bench.json", "--out", d / "report")
    assert r.returncode == 0, r.stderr
    return {"dir": d, "stdout": r.stdout, "json": json.loads((d / "bench.json").read_text())}


@pytest.mark.slow
def test_json_holds_every_figure(result, tiny_ckpt, tiny_bundle):
    res = result["json"]
    assert {"schema", "created", "machine", "settings", "data", "reference", "rows"} <= set(res)
    m = res["machine"]
    assert m["cpu"]["model"] and isinstance(m["cpu"]["flags"], list) and "avx2" in m["cpu"]["has"]
    assert m["cores"]["logical"] >= 1 and m["cores"]["affinity"] >= 1 and m["ram_gb"] > 0
    assert m["versions"]["numpy"] and m["versions"]["onnxruntime"] and m["versions"]["python"]
    assert "CPUExecutionProvider" in m["onnxruntime_providers"]
    assert "gpus" in m and "jetson" in m
    s = res["settings"]
    assert s["runs"] == 5 and s["warmup"] == 1 and s["batch_sizes"] == [1, 2] and s["max_images"] == 4
    assert res["data"]["n_images"] == 4 and res["reference"]["model"] == str(tiny_ckpt)

    rows = {r["backend"]: r for r in res["rows"]}
    assert set(rows) == {"torch-cpu", "onnxruntime-cpu"}
    ref, onnx = rows["torch-cpu"], rows["onnxruntime-cpu"]
    assert ref["is_reference"] and not onnx["is_reference"]
    assert onnx["model"] == str(tiny_bundle) and onnx["precision"] == "fp32" and ref["precision"] == "fp32"
    for row in (ref, onnx):
        assert row["size_mb"] > 0
        for b in ("1", "2"):
            lat = row["latency"][b]
            for part in ("model", "e2e"):
                st = lat[part]
                assert all(st[k] is not None and st[k] >= 0 for k in STATS), st
                assert st["min_ms"] <= st["p50_ms"] <= st["p90_ms"] <= st["p99_ms"]
                assert len(st["times_ms"]) == st["n"] == 5
            assert lat["throughput_ips"] > 0 and lat["e2e_throughput_ips"] > 0
            assert set(lat["stages"]) == {"prepare_p50_ms", "infer_p50_ms", "finish_p50_ms"}
        for k in STATS:
            assert row[k] == row["latency"]["1"]["model"][k]
            assert row[f"e2e_{k}"] == row["latency"]["1"]["e2e"][k]
        assert row["throughput_ips"] > 0 and row["throughput_batch"] in (1, 2)
        mem = row["memory"]
        assert mem["rss_peak_mb"] > 0 and mem["rss_loop_max_mb"] > 0 and mem["rss_loop_delta_mb"] is not None
        assert "cuda_peak_mb" in mem and row["rss_loop_max_mb"] == mem["rss_loop_max_mb"]
        acc = row["accuracy"]
        assert 0 <= row["dice"] <= 1 and 0 <= row["iou"] <= 1 and acc["n_images"] == 4
        assert len(acc["per_image"]) == 4
        les = acc["lesions"]
        assert set(les) == {"<1%", "1-5%", ">5%", "all"}
        assert les["all"]["lesions"] == sum(les[b]["lesions"] for b in ("<1%", "1-5%", ">5%")) > 0
        assert "lesion_sens_all" in row
        noise = row["noise"]
        assert {"noisy", "reasons", "load_before", "load_after", "others_cores", "cores", "threads"} <= set(noise)
        assert row["noisy"] == noise["noisy"] == bool(noise["reasons"])
        assert (row["noisy_reason"] is None) == (not row["noisy"])
    # The exported bundle matches torch; its drop figures are measured against the reference.
    drop = onnx["accuracy"]["drop"]
    assert {"mean", "median", "p95", "max", "worst_image", "share_over_threshold", "threshold"} <= set(drop)
    assert drop["worst_image"] in {p["name"] for p in onnx["accuracy"]["per_image"]}
    assert "dice_drop" in onnx["accuracy"]["per_image"][0]
    assert "lost_vs_reference" in onnx["accuracy"]["lesions"]["all"]
    assert abs(onnx["dice_drop_mean"]) < 0.02 and onnx["agreement_dice"] > 0.95
    # The reference compared with itself has no drop figures (they would be zeros by construction).
    assert ref["accuracy"]["is_reference"] and ref["accuracy"]["drop"] is None
    assert ref["dice_drop_mean"] is None and ref["worst_image"] is None and ref["agreement_dice"] is None
    out = result["stdout"]
    assert "torch-cpu" in out and "p50 ms" in out and "p90 ms" in out and "spread ms" in out
    ref_line = next(ln for ln in out.splitlines() if ln.startswith(ref["name"] + " *"))
    assert "reference" in ref_line  # the reference's drop column says so instead of +0.0000
    for row in (ref, onnx):
        assert (f"warning: {row['name']} on {row['backend']}" in out) == row["noisy"]


@pytest.mark.slow
def test_report_files(result):
    rep = result["dir"] / "report"
    rows = list(csv.DictReader(open(rep / "bench.csv")))
    assert len(rows) == 2 and {"name", "backend", "p50_ms", "dice", "dice_drop_mean", "size_mb"} <= set(rows[0])
    md = (rep / "bench.md").read_text()
    assert "| model | backend | size MB" in md and "Lesion-level sensitivity" in md and "## Machine" in md
    assert "p90 ms" in md and "spread ms" in md and "## Noise while timing" in md
    res = result["json"]
    ref = next(r for r in res["rows"] if r["is_reference"])
    acc_part = md.split("## Accuracy vs reference")[1]
    acc_line = next(ln for ln in acc_part.splitlines() if ln.startswith(f"| {ref['name']} |"))
    assert "reference" in acc_line and "+0.0000" not in acc_line
    for row in res["rows"]:
        assert (f"**warning: {row['name']} on {row['backend']}" in md) == row["noisy"]
    for png in ("latency.png", "pareto.png"):
        assert (rep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_baseline_doctored_fails_and_itself_passes(result, tiny_ckpt, tiny_bundle, embedded, tmp_path):
    from edgeseg.measure.baseline import compare_baseline

    res = result["json"]
    assert compare_baseline(res, res) == []
    fast = json.loads(json.dumps(res))
    for row in fast["rows"]:
        for lat in row["latency"].values():
            for part in ("model", "e2e"):
                lat[part]["p50_ms"] /= 1000.0
                lat[part]["spread_ms"] = 0.0
    (tmp_path / "fast.json").write_text(json.dumps(fast))
    args = ("bench", tiny_ckpt, tiny_bundle, "--data", embedded, "--split", "val", *TINY)
    r = run_cli(*args, "--baseline", tmp_path / "fast.json")
    one_line_error(r, "regression")
    assert "p50" in r.stderr
    # The same result as baseline: a very loose tolerance keeps this machine's noise out of the test.
    r = run_cli(*args, "--baseline", result["dir"] / "bench.json", "--tol", "1000")
    assert r.returncode == 0, r.stderr
    assert "no regression" in r.stdout


def test_compare_baseline_rules():
    from edgeseg.measure.baseline import compare_baseline

    def res(p50, spread, dice):
        st = {"p50_ms": p50, "spread_ms": spread}
        return {"rows": [{"name": "m", "backend": "onnxruntime-cpu", "dice": dice,
                          "latency": {"1": {"model": dict(st), "e2e": dict(st)}}}]}

    assert compare_baseline(res(10.5, 0.1, 0.80), res(10.0, 0.1, 0.80)) == []  # within 10%
    assert len(compare_baseline(res(12.0, 0.1, 0.80), res(10.0, 0.1, 0.80))) == 2  # model + e2e
    assert compare_baseline(res(12.0, 1.0, 0.80), res(10.0, 0.1, 0.80)) == []  # within 3 x spread
    (msg,) = compare_baseline(res(10.0, 0.1, 0.75), res(10.0, 0.1, 0.80))
    assert "Dice" in msg
    from edgeseg.errors import ConfigError

    other = res(10.0, 0.1, 0.8)
    other["rows"][0]["name"] = "x"
    with pytest.raises(ConfigError, match="shares no"):
        compare_baseline(res(10.0, 0.1, 0.8), other)


def test_lesion_detection_on_hand_made_mask():
    from edgeseg.measure.accuracy import connected_components, lesion_hits, lesion_sensitivity

    gt = np.zeros((100, 100), np.uint8)
    gt[10:15, 10:15] = 1  # 25 px = 0.25% of the image
    gt[50:80, 50:80] = 1  # 900 px = 9%
    gt[20:40, 70:75] = 1  # 100 px = 1%
    labels, areas = connected_components(gt)
    assert sorted(areas.tolist()) == [25, 100, 900] and labels.max() == 3
    pred = np.zeros_like(gt)
    pred[50:80, 50:80] = 1  # covers the large lesion only
    pred[20:29, 70:75] = 1  # 45% of the medium one: not detected (< 50%)
    hits = lesion_hits(pred, gt)
    by_area = {h["area"]: h for h in hits}
    assert by_area[900]["detected"] and by_area[900]["coverage"] == 1.0
    assert not by_area[25]["detected"] and by_area[25]["coverage"] == 0.0
    assert not by_area[100]["detected"] and by_area[100]["coverage"] == pytest.approx(0.45)
    sens = lesion_sensitivity(hits)
    assert (sens["<1%"]["lesions"], sens["<1%"]["detected"]) == (1, 0)
    assert (sens["1-5%"]["lesions"], sens["1-5%"]["detected"]) == (1, 0)
    assert (sens[">5%"]["lesions"], sens[">5%"]["detected"]) == (1, 1)
    assert (sens["all"]["lesions"], sens["all"]["detected"], sens["all"]["sensitivity"]) == (3, 1, pytest.approx(1 / 3))
    # IoU rule: 45 px predicted inside the 100-px lesion, nothing outside -> IoU 0.45 > 0.1.
    iou_hits = {h["area"]: h for h in lesion_hits(pred, gt, rule="iou")}
    assert iou_hits[100]["detected"] and iou_hits[100]["iou"] == pytest.approx(0.45)
    # A lesion the reference found and the model lost.
    ref_hits = lesion_hits(gt, gt)
    lost = lesion_sensitivity(hits, ref_hits)
    assert lost["all"]["lost_vs_reference"] == 2 and lost[">5%"]["lost_vs_reference"] == 0
    assert lesion_hits(pred, np.zeros_like(gt)) == []


def test_accuracy_with_reference_masks(tiny_bundle, embedded):
    from edgeseg.data import folders as D
    from edgeseg.measure.accuracy import accuracy
    from edgeseg.runners import open_model

    samples = D.discover(embedded, "val")[:3]
    seg = open_model(tiny_bundle)
    gts = {s.name: D.load_pair(s)[1] for s in samples}
    acc = accuracy(seg, gts, samples)  # reference = the ground truth itself (Dice 1 on every image)
    assert acc["drop"]["reference_dice"] == 1.0
    assert acc["drop"]["mean"] == pytest.approx(1.0 - acc["dice"])
    assert acc["drop"]["worst_image"] in gts


def test_time_model_in_process(tiny_bundle, embedded):
    from edgeseg.data import folders as D
    from edgeseg.measure.timing import LatencyStats, Timing, time_model
    from edgeseg.runners import open_model

    seg = open_model(tiny_bundle, threads=1)
    images = [D.read_image(s.image) for s in D.discover(embedded, "val")[:2]]
    t = time_model(seg, images, warmup=1, runs=3, batch_sizes=(1, 3), keep_times=False, threads=1)
    assert isinstance(t, Timing) and set(t.batches) == {1, 3} and t.runs == 3 and t.errors == {}
    assert isinstance(t.first.model, LatencyStats) and t.first.batch == 1 and t.first.model.times_ms is None
    assert t.batches[3].model.n == 3 and t.memory.rss_peak_mb > 0
    assert t.first.model.min_ms <= t.first.model.p50_ms <= t.first.model.p90_ms <= t.first.model.max_ms
    assert t.noise.threads == 1 and t.noise.wall_s > 0
    # the JSON form keeps the bench schema's shape
    d = t.to_dict()
    assert set(d["batch"]) == {"1", "3"} and "times_ms" not in d["batch"]["1"]["model"]
    assert d["batch"]["3"]["model"]["n"] == 3 and d["memory"]["rss_peak_mb"] == t.memory.rss_peak_mb
    assert d["noisy"] == t.noisy and json.loads(json.dumps(d)) == d


@pytest.mark.slow
def test_bad_inputs(tiny_bundle, embedded, tmp_path):
    one_line_error(run_cli("bench", tmp_path / "nope", "--data", embedded), "not found")
    (tmp_path / "empty/images").mkdir(parents=True)
    (tmp_path / "empty/masks").mkdir()
    one_line_error(run_cli("bench", tiny_bundle, "--data", tmp_path / "empty"), "no images")
    one_line_error(run_cli("bench", tiny_bundle, "--data", tmp_path / "absent"), "not found")
    one_line_error(run_cli("bench", tiny_bundle, "--data", embedded, "--batch-sizes", "1,x"), "--batch-sizes")
    one_line_error(run_cli("bench", tiny_bundle, "--data", embedded, "--runs", "0"), "--runs")
    (tmp_path / "bad.json").write_text("{not json")
    one_line_error(run_cli("bench", tiny_bundle, "--data", embedded, "--baseline", tmp_path / "bad.json"),
                   "not valid JSON")
    one_line_error(run_cli("bench", tiny_bundle, "--data", embedded, "--baseline", tmp_path / "none.json"),
                   "baseline file not found")


def test_empty_data_without_masks_is_one_line(tiny_bundle, tmp_path):
    write_img(tmp_path / "d/images/a.png", np.zeros((20, 30, 3), np.uint8))
    (tmp_path / "d/masks").mkdir()
    one_line_error(run_cli("bench", tiny_bundle, "--data", tmp_path / "d"), "no mask")


def test_missing_matplotlib_names_the_extra(monkeypatch, tmp_path):
    from edgeseg.measure import report
    from edgeseg.errors import DependencyError

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(DependencyError, match=r"pip install edgeseg\[plot\]"):
        report.plot_pareto({"rows": []}, tmp_path / "p.png")
    with pytest.raises(DependencyError, match=r"edgeseg\[plot\]"):
        report.write_report({"rows": []}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_pareto_front():
    from edgeseg.measure.report import pareto_front

    pts = [(10.0, 0.80), (5.0, 0.78), (20.0, 0.79), (5.0, 0.70), (30.0, 0.85), (None, 0.9)]
    assert pareto_front(pts) == [1, 0, 4]


def test_machine_info_parsers_and_never_raises(monkeypatch):
    from edgeseg.measure import machine as bench

    assert bench.parse_tegra_release("# R36 (release), REVISION: 3.0, GCID: 36106755, BOARD: generic") == "36.3.0"
    assert bench.jetpack_for("36.3.0") == "6.0" and bench.jetpack_for("35.4.1") == "5.1.2"
    assert bench.jetpack_for(None) is None and bench.parse_tegra_release("garbage") is None
    assert bench.parse_nvpmodel("NV Power Mode: MAXN\n0") == "MAXN (0)"

    def boom(*a, **k):
        raise OSError("probe failed")

    monkeypatch.setattr(bench, "_read", boom)
    monkeypatch.setattr(bench, "_run", boom)
    info = bench.machine_info()
    assert info["jetson"] is None and info["gpus"] is None and "versions" in info


def test_jetson_energy_per_image_from_power_rails(tiny_bundle, embedded, tmp_path, monkeypatch):
    """A fake INA3221 sysfs tree (what JetPack exposes): VDD_IN at 5 V x 2 A = 10 W."""
    import edgeseg.measure.sampling as S
    import edgeseg.measure.timing as B
    from edgeseg.data import folders as D
    from edgeseg.runtime import Segmenter

    hw = tmp_path / "1-0040/hwmon/hwmon3"
    hw.mkdir(parents=True)
    (hw / "in1_label").write_text("VDD_IN\n")
    (hw / "in1_input").write_text("5000\n")
    (hw / "curr1_input").write_text("2000\n")
    (hw / "in2_label").write_text("VDD_CPU_GPU_CV\n")
    (hw / "in2_input").write_text("5000\n")
    (hw / "curr2_input").write_text("500\n")
    monkeypatch.setattr(S, "INA3221_ROOT", str(tmp_path))
    assert [r[0] for r in S.power_rails(str(tmp_path))] == ["VDD_IN", "VDD_CPU_GPU_CV"]
    images = [D.read_image(s.image) for s in D.discover(embedded, "val")[:2]]
    res = B.time_model(Segmenter(tiny_bundle), images, warmup=1, runs=20).first
    e = res.energy
    assert e["rail"] == "VDD_IN" and e["mean_power_w"] == 10.0
    seconds = sum(res.model.times_ms) / 1000
    assert abs(e["energy_per_image_mj"] / (10.0 * seconds / 20 * 1000) - 1) < 1e-2  # times_ms are rounded
    monkeypatch.setattr(S, "INA3221_ROOT", str(tmp_path / "none"))
    assert B.time_model(Segmenter(tiny_bundle), images, warmup=1, runs=3).first.energy is None


def test_noise_rules():
    from edgeseg.measure.timing import NOISY_SPREAD_FRACTION, BatchTiming, assess_noise, latency_stats

    def batch(times_ms):
        st = latency_stats([int(t * 1e6) for t in times_ms])
        return BatchTiming(batch=1, model=st, e2e=st, stages={}, throughput_ips=1.0, e2e_throughput_ips=1.0)

    steady, jumpy = batch([10.0] * 20), batch([10.0, 14.0] * 10)
    assert jumpy.model.spread_ms > NOISY_SPREAD_FRACTION * jumpy.model.p50_ms
    assert assess_noise([steady], cores=4, threads=2, wall_s=1.0, others_cores=0.2, load_before=9.0) == []
    (r,) = assess_noise([jumpy], cores=4, threads=2, wall_s=1.0, others_cores=0.2, load_before=0.0)
    assert "spread" in r and "of p50" in r
    # other processes on the cores the timed threads need: measured CPU time wins over the load average
    (r,) = assess_noise([steady], cores=2, threads=2, wall_s=1.0, others_cores=0.9, load_before=0.0)
    assert "other processes kept 0.9 of 2 cores" in r
    assert assess_noise([steady], cores=4, threads=2, wall_s=1.0, others_cores=2.4, load_before=9.0) == []
    # no CPU accounting (or a loop too short for it): the 1-minute load average decides
    (r,) = assess_noise([steady], cores=2, threads=2, wall_s=1.0, others_cores=None, load_before=3.5)
    assert "load average 3.5" in r
    (r,) = assess_noise([steady], cores=2, threads=2, wall_s=0.01, others_cores=0.0, load_before=3.5)
    assert "load average" in r
    assert assess_noise([steady], cores=8, threads=2, wall_s=1.0, others_cores=None, load_before=3.5) == []


def test_time_model_marks_a_busy_machine(tiny_bundle, embedded, monkeypatch):
    """Injected probes: a fake load average, and fake CPU accounting showing other processes."""
    import edgeseg.measure.timing as T
    from edgeseg.data import folders as D
    from edgeseg.runners import open_model

    seg = open_model(tiny_bundle, threads=1)
    images = [D.read_image(s.image) for s in D.discover(embedded, "val")[:2]]
    monkeypatch.setattr(T, "cpu_busy_s", lambda: None)  # like a machine without /proc/stat
    monkeypatch.setattr(T, "load_average", lambda: 64.0)
    t = T.time_model(seg, images, warmup=1, runs=3, threads=1)
    assert t.noisy and "load average 64.0" in t.noisy_reason
    d = t.to_dict()
    assert d["noisy"] is True and d["noise"]["load_before"] == d["noise"]["load_after"] == 64.0
    assert any("load average" in r for r in d["noise"]["reasons"])
    # quiet: no other process busy, load 0 -> only the spread rule may still speak
    monkeypatch.setattr(T, "load_average", lambda: 0.0)
    t = T.time_model(seg, images, warmup=1, runs=3, threads=1)
    assert all("spread" in r for r in t.noise.reasons)
    # other processes busy: the busy counter grows 100 CPU-seconds between the two reads
    ticks = iter([0.0, 100.0])
    monkeypatch.setattr(T, "cpu_busy_s", lambda: next(ticks))
    monkeypatch.setattr(T, "MIN_ACCOUNTED_S", 0.0)
    t = T.time_model(seg, images, warmup=1, runs=3, threads=1)
    assert t.noisy and "other processes kept" in t.noisy_reason and t.noise.others_cores > 1


def test_report_marks_noise_and_reference_rows():
    from edgeseg.measure import report

    def row(name, ref, noisy):
        return {"name": name, "backend": "onnxruntime-cpu", "is_reference": ref, "p50_ms": 5.0, "p90_ms": 6.0,
                "spread_ms": 0.5, "dice": 0.8, "dice_drop_mean": None if ref else 0.01, "noisy": noisy,
                "noisy_reason": "1-minute load average 9.0 on 2 cores before timing 2 thread(s)" if noisy else None,
                "accuracy": {"dice": 0.8, "iou": 0.7, "drop": None if ref else {"mean": 0.01, "max": 0.1,
                                                                               "worst_image": "a.png"}}}

    res = {"rows": [row("teacher", True, False), row("int8", False, True)], "reference": None}
    table = report.format_table(res)
    lines = table.splitlines()
    assert "reference" in lines[2] and "+0.0000" not in lines[2] and "!" not in lines[2]
    assert "+0.0100" in lines[3] and "5.00 !" in lines[3]
    (warn,) = [ln for ln in lines if ln.startswith("warning:")]
    assert "int8 on onnxruntime-cpu" in warn and "load average 9.0" in warn
    md = report.format_markdown(res)
    assert md.count("**warning:") == 1 and "| teacher | onnxruntime-cpu | 0.8000 | 0.7000 | reference |" in md
    assert "a.png (+0.1000)" in md


def test_sizes_are_megabytes_of_10_6_bytes(tmp_path):
    from edgeseg.measure.bench import model_size_mb

    (tmp_path / "m.onnx").write_bytes(b"\0" * 2_500_000)
    assert model_size_mb(tmp_path / "m.onnx") == 2.5


# --------------------------------------------------------------------------- the --out folder
def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_report_folder_follows_the_output_policy(result, tmp_path, monkeypatch):
    from edgeseg.errors import ConfigError
    from edgeseg.measure import report

    res = result["json"]
    out = tmp_path / "rep"
    report.write_report(res, out, plots=False)
    assert json.loads((out / ".edgeseg-output.json").read_text())["kind"] == "bench"
    first = _files(out)
    with pytest.raises(ConfigError, match="--overwrite"):  # an earlier report is never overwritten silently
        report.write_report(res, out, plots=False)
    assert _files(out) == first
    (out / "stale.csv").write_text("from an older report")
    # a failure while writing leaves the previous report as it was, and no temporary folder

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(report, "write_markdown", broken)
    with pytest.raises(OSError):
        report.write_report(res, out, plots=False, overwrite=True)
    monkeypatch.undo()
    assert (out / "stale.csv").is_file() and [p.name for p in tmp_path.iterdir()] == ["rep"]
    report.write_report(res, out, plots=False, overwrite=True)  # replaced whole, not merged
    assert not (out / "stale.csv").exists() and (out / "bench.md").is_file()
    # foreign folders are never touched, with or without --overwrite
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="files edgeseg did not write"):
            report.write_report(res, foreign, plots=False, overwrite=overwrite)
    assert _files(foreign) == {"mine.txt": b"mine"}


@pytest.mark.slow
def test_bench_out_is_checked_before_any_work(tiny_bundle, embedded, tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("mine")
    for extra in ((), ("--overwrite",)):
        r = run_cli("bench", tiny_bundle, "--data", embedded, "--split", "val", *TINY, "--out", foreign, *extra)
        one_line_error(r, "files edgeseg did not write")
        assert "p50" not in r.stdout  # refused before benchmarking anything
    assert _files(foreign) == {"mine.txt": b"mine"}
    one_line_error(run_cli("bench", tiny_bundle, "--data", embedded, "--split", "val", *TINY,
                           "--out", embedded / "report"), "lies inside the input")
    one_line_error(run_cli("bench", tiny_bundle, "--data", embedded, "--split", "val", *TINY,
                           "--out", tiny_bundle.parent), "contains the input")
    one_line_error(run_cli("bench", tiny_bundle, "--data", embedded, "--split", "val", *TINY,
                           "--out", tmp_path / "r", "--json", tmp_path / "r/b.json"), "lies inside --out")
    assert not (embedded / "report").exists() and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_bench_out_again_needs_overwrite(result, tiny_bundle, embedded, tmp_path):
    import shutil

    rep = shutil.copytree(result["dir"] / "report", tmp_path / "report")  # an earlier bench --out
    before = _files(rep)
    one_line_error(run_cli("bench", tiny_bundle, "--data", embedded, "--split", "val", *TINY, "--out", rep),
                   "--overwrite")
    assert _files(rep) == before
    (rep / "stale.txt").write_text("old")
    r = run_cli("bench", tiny_bundle, "--data", embedded, "--split", "val", *TINY, "--out", rep, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert not (rep / "stale.txt").exists() and (rep / "pareto.png").is_file()
    assert len(list(csv.DictReader(open(rep / "bench.csv")))) == 1  # the new result, replaced whole
