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
        assert len(acc["per_image"]) == 4 and "dice_drop" in acc["per_image"][0]
        drop = acc["drop"]
        assert {"mean", "median", "p95", "max", "worst_image", "share_over_threshold", "threshold"} <= set(drop)
        assert drop["worst_image"] in {p["name"] for p in acc["per_image"]}
        les = acc["lesions"]
        assert set(les) == {"<1%", "1-5%", ">5%", "all"}
        assert les["all"]["lesions"] == sum(les[b]["lesions"] for b in ("<1%", "1-5%", ">5%")) > 0
        assert "lost_vs_reference" in les["all"] and "lesion_sens_all" in row
    # The reference compared with itself loses nothing; the exported bundle matches torch.
    assert ref["accuracy"]["drop"]["mean"] == 0 and ref["accuracy"]["agreement_dice"] == 1
    assert abs(onnx["dice_drop_mean"]) < 0.02 and onnx["agreement_dice"] > 0.95
    assert "torch-cpu" in result["stdout"] and "p50 ms" in result["stdout"]


def test_report_files(result):
    rep = result["dir"] / "report"
    rows = list(csv.DictReader(open(rep / "bench.csv")))
    assert len(rows) == 2 and {"name", "backend", "p50_ms", "dice", "dice_drop_mean", "size_mb"} <= set(rows[0])
    md = (rep / "bench.md").read_text()
    assert "| model | backend | size MB" in md and "Lesion-level sensitivity" in md and "## Machine" in md
    for png in ("latency.png", "pareto.png"):
        assert (rep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_baseline_doctored_fails_and_itself_passes(result, tiny_ckpt, tiny_bundle, embedded, tmp_path):
    from edgeseg.measure.bench import compare_baseline

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
    from edgeseg.measure.bench import compare_baseline

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
    from edgeseg.measure.bench import connected_components, lesion_hits, lesion_sensitivity

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
    from edgeseg.measure.bench import accuracy
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
    from edgeseg.measure.bench import time_model
    from edgeseg.runners import open_model

    seg = open_model(tiny_bundle, threads=1)
    images = [D.read_image(s.image) for s in D.discover(embedded, "val")[:2]]
    t = time_model(seg, images, warmup=1, runs=3, batch_sizes=(1, 3), keep_times=False)
    assert set(t["batch"]) == {"1", "3"} and t["runs"] == 3
    assert "times_ms" not in t["batch"]["1"]["model"]
    assert t["batch"]["3"]["model"]["n"] == 3 and t["memory"]["rss_peak_mb"] > 0


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
    from edgeseg.measure import bench

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
    import edgeseg.measure.bench as B
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
    monkeypatch.setattr(B, "INA3221_ROOT", str(tmp_path))
    assert [r[0] for r in B.power_rails(str(tmp_path))] == ["VDD_IN", "VDD_CPU_GPU_CV"]
    images = [D.read_image(s.image) for s in D.discover(embedded, "val")[:2]]
    res = B.time_model(Segmenter(tiny_bundle), images, warmup=1, runs=20)["batch"]["1"]
    e = res["energy"]
    assert e["rail"] == "VDD_IN" and e["mean_power_w"] == 10.0
    seconds = sum(res["model"]["times_ms"]) / 1000
    assert abs(e["energy_per_image_mj"] / (10.0 * seconds / 20 * 1000) - 1) < 1e-2  # times_ms are rounded
    monkeypatch.setattr(B, "INA3221_ROOT", str(tmp_path / "none"))
    assert B.time_model(Segmenter(tiny_bundle), images, warmup=1, runs=3)["batch"]["1"]["energy"] is None
