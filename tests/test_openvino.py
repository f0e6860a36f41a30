"""OpenVINO as a runner: the runtime table (choose_runtime / open_runner), the OpenVINO runner
against ONNX Runtime on the same bundles, its refusals (missing package, quantized
activations), `--runtime` in the CLI, and edgeseg.measure.runtimes (timing both, recording the
winner, `runtime="auto"`). The runner tests shared with ONNX Runtime are in test_runtime.py."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import blocking_imports, one_line_error, rgb
from edgeseg.data import folders as D
from edgeseg.errors import ConfigError
from edgeseg.measure import runtimes as MR
from edgeseg.runtime import Segmenter
from edgeseg.runtime.bundle import read_bundle
from edgeseg.runtime.errors import BundleError, EdgesegError, MissingDependency
from edgeseg.runtime.runners import RUNTIMES, Runtime, choose_runtime, open_runner
from edgeseg.runtime.runners.base import Runner
from edgeseg.runtime.runners.openvino import OpenVINORunner

BLOCK_OPENVINO = """
import builtins
_real = builtins.__import__
def _guard(name, *a, **k):
    if name.split('.')[0] == 'openvino':
        raise ModuleNotFoundError("No module named 'openvino'")
    return _real(name, *a, **k)
builtins.__import__ = _guard
"""


@pytest.fixture(scope="module")
def images(embedded):
    return [D.read_image(s.image) for s in D.discover(embedded, "test", require_masks=False)[:6]] + [rgb(45, 61, 3)]


@pytest.fixture(scope="module")
def int8_bundle(tiny_bundle, embedded, tmp_path_factory):
    from edgeseg.quantize import quantize

    return quantize(tiny_bundle, tmp_path_factory.mktemp("q") / "int8", "cpu", calib=embedded,
                    calib_split="calibration", calib_count=8, method="minmax")


@pytest.fixture(scope="module")
def weights_bundle(tiny_bundle, tmp_path_factory):
    from edgeseg.quantize import quantize

    return quantize(tiny_bundle, tmp_path_factory.mktemp("w") / "w8", "cpu-weights")


def _agreement(a: Segmenter, b: Segmenter, images) -> list[float]:
    return [float((a.predict(im) == b.predict(im)).mean()) for im in images]


# --------------------------------------------------------------------------- the runtime table
def test_every_runtime_in_the_table_is_chosen_by_name():
    assert set(RUNTIMES) == {"onnxruntime", "openvino", "tensorrt"}
    for name, r in RUNTIMES.items():
        for fmt in r.formats:
            assert choose_runtime(name, fmt) == name
    assert choose_runtime(None, "bundle") == choose_runtime(None, "onnx") == "onnxruntime"
    assert choose_runtime(None, "engine") == "tensorrt"
    with pytest.raises(EdgesegError, match="does not open a engine model"):
        choose_runtime("openvino", "engine")
    with pytest.raises(EdgesegError, match="unknown runtime 'mxnet'; choose one of onnxruntime, openvino"):
        choose_runtime("mxnet", "bundle")


def test_auto_takes_the_recorded_runtime_when_usable(monkeypatch):
    ov = {"runtime": {"preferred": "openvino"}, "precision": "fp32"}
    assert choose_runtime("auto", "bundle", ov) == "openvino"
    assert choose_runtime("auto", "bundle", {"precision": "fp32"}) == "onnxruntime"  # nothing recorded
    assert choose_runtime("auto", "bundle", None) == "onnxruntime"  # a bare ONNX file
    assert choose_runtime("auto", "engine", ov) == "tensorrt"  # openvino does not open engines
    int8 = {**ov, "precision": "int8", "quantization": {"weight_only": False}}
    assert choose_runtime("auto", "bundle", int8) == "onnxruntime"  # refused by the OpenVINO runner
    w8 = {**ov, "precision": "int8", "quantization": {"weight_only": True}}
    assert choose_runtime("auto", "bundle", w8) == "openvino"
    monkeypatch.setattr(Runtime, "installed", lambda self: self.name != "openvino")
    assert choose_runtime("auto", "bundle", ov) == "onnxruntime"  # recorded but not installed here


def test_open_runner_refuses_providers_for_openvino(tiny_bundle):
    with pytest.raises(EdgesegError, match="providers .* are ONNX Runtime's"):
        open_runner("openvino", tiny_bundle / "model.onnx", providers=["cuda"])
    with pytest.raises(EdgesegError, match="choose_runtime"):
        open_runner("auto", tiny_bundle / "model.onnx")


# --------------------------------------------------------------------------- the runner
def test_openvino_runner_reports_the_graph_like_onnxruntime(tiny_bundle):
    ort, ov = Segmenter(tiny_bundle), Segmenter(tiny_bundle, runtime="openvino", threads=2)
    assert isinstance(ov.runner, Runner) and ov.runner.name == "openvino-cpu" and ov.runtime == "openvino"
    assert ov.runner.properties["INFERENCE_PRECISION_HINT"] == "f32"
    assert ov.runner.properties["INFERENCE_NUM_THREADS"] == 2
    assert ov.runner.batch_of_one  # batch-1 calls run a graph compiled for batch 1 (static shapes)
    x = ort.prepare([rgb(30, 40, k) for k in range(3)])  # other sizes: the exported graph, compiled on first use
    np.testing.assert_allclose(ov.infer(x)["logits"], ort.infer(x)["logits"], rtol=1e-4, atol=1e-4)
    assert ov.runner.output_names == ort.runner.output_names
    assert ov.runner.output_types == ort.runner.output_types == {"logits": ("float32", 4)}
    assert [d if isinstance(d, int) else None for d in ort.runner.input_shape] == ov.runner.input_shape
    assert ov.runner.metadata()["edgeseg"] == ort.runner.metadata()["edgeseg"]  # ONNX metadata_props


def test_openvino_loads_the_verified_bytes_not_the_file(tiny_bundle, tmp_path):
    seg = Segmenter(tiny_bundle)
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not a model")
    r = OpenVINORunner(bogus, model_bytes=seg.bundle.model_bytes)
    x = seg.prepare([rgb()])
    np.testing.assert_allclose(r.infer(x)["logits"], seg.infer(x)["logits"], atol=1e-4)
    with pytest.raises(BundleError, match="OpenVINO cannot load model.onnx"):
        OpenVINORunner(bogus)
    r.close()
    with pytest.raises(BundleError, match="closed"):
        r.infer(x)


def test_fp32_masks_equal_onnxruntime(tiny_bundle, images):
    """Same FP32 graph, same arithmetic up to summation order (INFERENCE_PRECISION_HINT=f32 keeps
    OpenVINO off bfloat16 on AMX CPUs): logits agree to ~1e-6 relative (measured 4e-6 absolute on
    the Kvasir teacher), so a pixel can only flip where two class logits tie within 1e-4; such
    ties are rare, hence at most 0.1% of an image's pixels may differ."""
    ort, ov = Segmenter(tiny_bundle), Segmenter(tiny_bundle, runtime="openvino")
    x = ort.prepare(images)
    np.testing.assert_allclose(ov.infer(x)["logits"], ort.infer(x)["logits"], rtol=1e-4, atol=1e-4)
    assert min(_agreement(ort, ov, images)) >= 0.999


def test_weight_only_int8_runs_and_agrees(weights_bundle, images):
    """Weight-only: the same INT8 weights dequantized once, float activations; OpenVINO keeps the
    weights compressed and decompresses them in its kernels (measured: max logit difference 0.01-0.04
    on the Kvasir teacher, mask agreement >= 0.995 per image). Allowed: 1% of pixels per image."""
    ort, ov = Segmenter(weights_bundle), Segmenter(weights_bundle, runtime="openvino")
    assert ov.runner.int8_activations == 0
    assert min(_agreement(ort, ov, images)) >= 0.99


@pytest.mark.slow  # an end-to-end run: in the full suite, not the fast subset
def test_int8_activations_are_refused_in_one_line(int8_bundle, images):
    """OpenVINO's masks for edgeseg's INT8 Q/DQ graphs drift far from the FP32 model's (measured on
    the Kvasir teacher: benchmarks/results/runtimes_kvasir.md), so the runner refuses them; the
    refusal names what to use instead. A benchmark may still open them explicitly."""
    with pytest.raises(BundleError) as e:
        Segmenter(int8_bundle, runtime="openvino")
    msg = str(e.value)
    assert "\n" not in msg and "--runtime onnxruntime" in msg and "cpu-weights" in msg
    seg = Segmenter(int8_bundle)
    r = OpenVINORunner(seg.bundle.model_file, model_bytes=seg.bundle.model_bytes, allow_int8_activations=True)
    assert r.int8_activations > 0
    assert r.infer(seg.prepare(images[:2]))["logits"].shape == seg.infer(seg.prepare(images[:2]))["logits"].shape


def test_missing_openvino_is_one_line(tiny_bundle, monkeypatch):
    import builtins

    real = builtins.__import__

    def guard(name, *a, **k):
        if name.split(".")[0] == "openvino":
            raise ModuleNotFoundError("No module named 'openvino'")  # what a machine without it raises
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", guard)
    with pytest.raises(MissingDependency) as e:
        Segmenter(tiny_bundle, runtime="openvino")
    assert str(e.value) == 'OpenVINO is not installed: pip install "edgeseg[openvino]"'
    assert Segmenter(tiny_bundle).runner.name == "onnxruntime-cpu"  # the default never needs it


def test_cli_without_openvino_says_so_in_one_line(tiny_bundle, tmp_path):
    img = tmp_path / "in"
    img.mkdir()
    from conftest import write_img

    write_img(img / "a.png", rgb())
    code = BLOCK_OPENVINO + textwrap.dedent(f"""
        import sys
        sys.argv = ['edgeseg', 'predict', {str(tiny_bundle)!r}, {str(img)!r}, '-o', {str(tmp_path / 'out')!r},
                    '--runtime', 'openvino']
        from edgeseg.__main__ import main
        main()
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    one_line_error(r, 'pip install "edgeseg[openvino]"')
    assert not (tmp_path / "out").exists()


def test_runtime_with_openvino_never_imports_torch(tiny_bundle):
    code = blocking_imports('torch', 'transformers', 'torch_pruning', 'cv2', 'onnx') + textwrap.dedent(f"""
        import numpy as np
        from edgeseg.runtime import Segmenter
        seg = Segmenter({str(tiny_bundle)!r}, runtime='openvino')
        assert seg.predict(np.zeros((33, 47, 3), np.uint8)).shape == (33, 47)
        bad = [k for k in sys.modules if k.split('.')[0] in ('torch', 'transformers', 'cv2', 'onnx')]
        assert not bad, bad
        print(seg.runner.name)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "openvino-cpu", r.stderr


# --------------------------------------------------------------------------- measure.runtimes
@pytest.mark.slow  # an end-to-end run: in the full suite, not the fast subset
def test_time_runtimes_records_the_winner_and_auto_uses_it(tiny_bundle, tmp_path):
    import shutil

    t = MR.time_runtimes(tiny_bundle, threads=1, warmup=1, runs=5)
    assert set(t.p50_ms) == {"onnxruntime", "openvino"} and not t.skipped
    assert all(v > 0 for v in t.p50_ms.values()) and t.ratio_to_winner[t.winner] == 1.0
    assert t.winner == MR._winner(t.p50_ms, MR.MARGIN)
    assert set(t.cpu["flags"]) == {"avx2", "avx512", "vnni", "amx"} and t.threads == 1 and t.batch == 1
    b = shutil.copytree(tiny_bundle, tmp_path / "b")
    MR.record_in_bundle(b, t)
    m = read_bundle(b).manifest  # still verifies
    assert m["runtime"]["preferred"] == t.winner and m["runtime"]["measured"]["p50_ms"] == t.p50_ms
    assert m["runtime"]["cpu"] == t.cpu
    assert Segmenter(b, runtime="auto").runtime == t.winner
    forced = MR.RuntimeTiming(**{**t.to_dict(), "winner": "openvino"})
    MR.record_in_bundle(b, forced)
    assert Segmenter(b, runtime="auto").runner.name == "openvino-cpu"
    assert Segmenter(b).runner.name == "onnxruntime-cpu"  # auto only when asked


@pytest.mark.slow  # an end-to-end run: in the full suite, not the fast subset
def test_time_runtimes_times_each_runtime_alone_in_alternating_blocks(tiny_bundle, monkeypatch):
    """One runtime's session open at a time while it is timed (an idle pool of the other would
    steal its cores), blocks alternating with a rotating order, every run counted."""
    real_open = MR._open
    state = {"open": 0, "most": 0}
    calls, opened = [], []

    class Tracked:
        def __init__(self, seg, name):
            self.seg, self.name = seg, name
            opened.append(name)
            state["open"] += 1
            state["most"] = max(state["most"], state["open"])

        def __getattr__(self, k):
            return getattr(self.seg, k)

        def infer(self, x):
            assert state["open"] == 1
            calls.append(self.name)
            return self.seg.infer(x)

        def close(self):
            state["open"] -= 1
            self.seg.close()

    monkeypatch.setattr(MR, "_open", lambda m, name, threads: Tracked(real_open(m, name, threads), name))
    t = MR.time_runtimes(tiny_bundle, threads=1, warmup=2, runs=7)
    assert state["most"] == 1 and state["open"] == 0
    assert calls.count("onnxruntime") == calls.count("openvino") == MR.BLOCKS * 2 + 7  # warm-ups + runs
    assert opened == ["onnxruntime", "openvino", "openvino", "onnxruntime", "onnxruntime", "openvino"]
    assert set(t.p50_ms) == {"onnxruntime", "openvino"}


def test_winner_needs_a_margin_to_beat_onnxruntime():
    assert MR._winner({"onnxruntime": 10.0, "openvino": 9.8}, 0.05) == "onnxruntime"  # inside the noise
    assert MR._winner({"onnxruntime": 10.0, "openvino": 9.0}, 0.05) == "openvino"
    assert MR._winner({"onnxruntime": 9.0, "openvino": 10.0}, 0.05) == "onnxruntime"
    assert MR._winner({"openvino": 10.0}, 0.05) == "openvino"


@pytest.mark.slow  # an end-to-end run: in the full suite, not the fast subset
def test_time_runtimes_lists_what_it_could_not_run(int8_bundle, monkeypatch):
    t = MR.time_runtimes(int8_bundle, threads=1, warmup=0, runs=2)
    assert list(t.p50_ms) == ["onnxruntime"] and t.winner == "onnxruntime"
    assert "does not reproduce this INT8" in t.skipped["openvino"]
    with pytest.raises(ConfigError, match="must be among onnxruntime, openvino"):
        MR.time_runtimes(int8_bundle, runtimes=["tensorrt"])


def test_interleave_rotates_and_counts_every_call():
    order = []
    loop = MR.interleave({k: (lambda k=k: order.append(k)) for k in "abc"}, warmup=1, runs=3)
    assert order == list("abc") + list("abc") + list("bca") + list("cab")
    assert {k: len(v) for k, v in loop.times.items()} == {"a": 3, "b": 3, "c": 3}


# --------------------------------------------------------------------------- the CLI
def test_bench_runs_a_bundle_under_both_runtimes(tiny_bundle, embedded, tmp_path):
    import json

    from conftest import run_cli

    out = tmp_path / "b.json"
    r = run_cli("bench", tiny_bundle, "--data", embedded, "--split", "test", "--runs", 2, "--warmup", 0,
                "--max-images", 2, "--runtime", "onnxruntime", "--runtime", "openvino", "--threads", 1,
                "--json", out, "-q")
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [row["backend"] for row in rows] == ["onnxruntime-cpu", "openvino-cpu"]
    assert rows[0]["dice"] == pytest.approx(rows[1]["dice"], abs=1e-3)
    r = run_cli("bench", tiny_bundle, "--data", embedded, "--runtime", "tensorrt")
    one_line_error(r, "--runtime must name")


def test_evaluate_and_predict_take_runtime(tiny_bundle, embedded, tmp_path):
    import json

    from conftest import run_cli

    r = run_cli("evaluate", tiny_bundle, embedded, "--split", "test", "--runtime", "openvino", "--json",
                tmp_path / "e.json", "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "e.json").read_text())["runner"] == "openvino-cpu"
    r = run_cli("evaluate", tiny_bundle, embedded, "--runtime", "mxnet")
    one_line_error(r, "unknown runtime 'mxnet'")


def test_export_runtime_auto_is_checked_before_any_work(tiny_ckpt, tmp_path):
    from conftest import run_cli

    r = run_cli("export", tiny_ckpt, "-o", tmp_path / "b", "--runtime", "openvino")
    one_line_error(r, "--runtime for export takes only auto")
    r = run_cli("export", tiny_ckpt, "-o", tmp_path / "e.engine", "--format", "tensorrt", "--runtime", "auto")
    one_line_error(r, "--runtime only applies to --format bundle")
    r = run_cli("export", tiny_ckpt, "-o", tmp_path / "e.engine", "--format", "tensorrt", "--static-batch")
    one_line_error(r, "--static-batch only applies to --format bundle")
    assert not (tmp_path / "b").exists() and not (tmp_path / "e.engine").exists()


@pytest.mark.slow
def test_export_runtime_auto_records_the_measured_winner(tiny_ckpt, tmp_path):
    import json

    from conftest import run_cli

    r = run_cli("export", tiny_ckpt, "-o", tmp_path / "b", "--runtime", "auto")
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)["runtime"]
    section = read_bundle(tmp_path / "b").manifest["runtime"]  # the bundle still verifies
    assert section == printed and section["preferred"] in ("onnxruntime", "openvino")
    assert set(section["measured"]["p50_ms"]) == {"onnxruntime", "openvino"}
    assert Segmenter(tmp_path / "b", runtime="auto").runtime == section["preferred"]


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_static_batch_export_runs_batches_image_by_image(tiny_ckpt, tiny_bundle, tmp_path_factory, runtime, images):
    """`export --static-batch` (measured faster on CPU, benchmarks/results/runtimes_kvasir*.md): the
    graph takes batches of exactly 1; the runners run a larger batch image by image."""
    from edgeseg.export.onnx import ExportConfig
    from edgeseg.export.pipeline import export_bundle

    out = tmp_path_factory.getbasetemp() / f"static_{runtime}"
    if not out.exists():
        export_bundle(tiny_ckpt, out, ExportConfig(dynamic_batch=False), limit=4)
    seg, ref = Segmenter(out, runtime=runtime), Segmenter(tiny_bundle)
    assert seg.runner.input_shape[0] == 1 and read_bundle(out).manifest["export"]["dynamic_batch"] is False
    x = seg.prepare(images[:3])
    np.testing.assert_allclose(seg.infer(x)["logits"], ref.infer(x)["logits"], rtol=1e-4, atol=1e-4)
    assert all((a == b).all() for a, b in zip(seg.predict_batch(images[:3]), [seg.predict(im) for im in images[:3]]))
