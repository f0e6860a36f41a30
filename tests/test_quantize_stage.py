"""`quantize(src, out, target)` and `edgeseg quantize`: bundle in, INT8 bundle out that the runtime
loads, with the target, method, calibration set and session settings recorded; bad inputs refused
with one line before any work."""

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import run_cli
from edgeseg.data import folders as D
from edgeseg.data.calibration import load_calibration
from edgeseg.errors import ConfigError, DataError
from edgeseg.export.onnx import export_onnx
from edgeseg.model.variants import build_model
from edgeseg.quantize import TARGETS, WEIGHT_ONLY_SESSION_CONFIG, quantize
from edgeseg.quantize.stage import int8_manifest
from edgeseg.runtime.bundle import read_bundle, write_bundle
from edgeseg.runtime.files import sha256_file
from edgeseg.runtime.preprocess import Preprocess
from edgeseg.runtime.segmenter import Segmenter

SIZE = 64
PP = Preprocess(SIZE, SIZE)


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("fp32")
    meta = {"preprocess": PP.to_dict(), "classes": ["background", "lesion"], "precision": "fp32"}
    onnx_path = export_onnx(build_model("tiny").eval(), d / "tiny.onnx", SIZE, SIZE, metadata=meta)
    manifest = {"model": "model.onnx", "preprocess": PP.to_dict(), "classes": ["background", "lesion"],
                "outputs": [{"name": "logits", "kind": "logits"}], "precision": "fp32",
                "parity": {"note": "fp32 export parity"}, "provenance": {"note": "test"}}
    return write_bundle(d / "bundle", {"model.onnx": onnx_path}, manifest)


def _image(embedded):
    return D.read_image(D.discover(embedded, "test", require_masks=False)[0].image)


@pytest.mark.slow
def test_cli_writes_an_int8_bundle_the_runtime_loads(fp32_bundle, embedded, tmp_path):
    out = tmp_path / "int8"
    r = run_cli("quantize", fp32_bundle, "-o", out, "--target", "cpu", "--calib", embedded,
                "--calib-split", "calibration", "--calib-count", 8, "--method", "minmax")
    assert r.returncode == 0, r.stderr
    m = read_bundle(out).manifest
    q = m["quantization"]
    info = load_calibration(embedded, PP, count=8, split="calibration")[1]
    assert m["precision"] == "int8" and q["target"] == "cpu" and q["method"] == "minmax"
    assert q["calibration_set"]["count"] == 8 and q["calibration_set"]["sha256"] == info["sha256"]
    assert "root" not in q["calibration_set"] and str(embedded) not in str(m.to_dict())  # no absolute paths
    fp32_parity = read_bundle(fp32_bundle).manifest["parity"]
    par = m["parity"]  # the INT8 model's own check, not the FP32 export's block
    assert par != fp32_parity and par["against"] == "fp32 source" and par["measured"] and par["images"] == 8
    assert 0.5 < par["worst_image_agreement"] <= par["mask_agreement"] <= 1.0
    assert m["provenance"]["quantized_from"]["model_sha256"] == sha256_file(read_bundle(fp32_bundle).model_file)
    seg = Segmenter(out)
    mask = seg.predict(_image(embedded))
    assert mask.ndim == 2 and set(np.unique(mask)) <= {0, 1}


def test_weight_only_bundle_records_its_session_config(fp32_bundle, embedded, tmp_path):
    out = quantize(fp32_bundle, tmp_path / "w8", "cpu-weights")
    m = read_bundle(out).manifest
    assert m["quantization"]["weight_only"] is True and m["quantization"]["method"] is None
    assert m["onnxruntime"]["session_config"] == dict(WEIGHT_ONLY_SESSION_CONFIG) == dict(
        TARGETS["cpu-weights"].session_config)
    seg = Segmenter(out)
    assert seg.runner.session_config == dict(WEIGHT_ONLY_SESSION_CONFIG)
    assert m["parity"]["measured"] is False and "evaluate" in m["parity"]["why"]
    assert seg.predict(_image(embedded)).shape == _image(embedded).shape[:2]
    with pytest.raises(ConfigError, match="weight-only"):
        quantize(fp32_bundle, tmp_path / "w8b", "cpu-weights", calib=embedded)
    with pytest.raises(ConfigError, match="weight-only"):
        quantize(fp32_bundle, tmp_path / "w8c", "cpu-weights", method="minmax")


def test_onnx_in_onnx_out(fp32_bundle, embedded, tmp_path):
    src = read_bundle(fp32_bundle).model_file
    out = quantize(src, tmp_path / "q.onnx", "tensorrt", calib=embedded, calib_split="calibration", calib_count=8,
                   method="minmax")
    assert out.is_file() and Segmenter(out).predict(_image(embedded)).ndim == 2
    with pytest.raises(ConfigError, match=r"\.onnx"):
        quantize(src, tmp_path / "q_dir", "tensorrt", calib=embedded)


def _cli(*args):
    from edgeseg.cli import app

    return CliRunner().invoke(app, ["quantize", *map(str, args)])


def test_cli_bad_inputs_one_line(fp32_bundle, embedded, tmp_path):
    r = _cli(fp32_bundle, "-o", tmp_path / "a", "--target", "gpu", "--calib", embedded)
    assert r.exit_code == 2 and "error:" in r.output and all(n in r.output for n in TARGETS)
    r = _cli(fp32_bundle, "-o", tmp_path / "b", "--target", "cpu", "--calib", tmp_path / "no-such-folder")
    assert r.exit_code == 2 and "calibration folder not found" in r.output
    r = _cli(fp32_bundle, "-o", tmp_path / "c", "--target", "tensorrt")  # no --calib: refused, never random data
    assert r.exit_code == 2 and "--calib" in r.output
    r = _cli(fp32_bundle, "-o", tmp_path / "d", "--target", "cpu", "--calib", embedded, "--method", "mse")
    assert r.exit_code == 2 and "minmax" in r.output
    r = _cli(tmp_path / "missing", "-o", tmp_path / "e", "--target", "cpu", "--calib", embedded)
    assert r.exit_code == 2 and "not found" in r.output
    assert "Traceback" not in r.output
    for name in "abcde":
        assert not (tmp_path / name).exists()


def test_outputs_are_checked_before_any_work(fp32_bundle, embedded, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for overwrite in (False, True):  # a folder edgeseg did not write is never replaced
        with pytest.raises(ConfigError, match="did not write"):
            quantize(fp32_bundle, foreign, "cpu-weights", overwrite=overwrite)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="inside"):
        quantize(fp32_bundle, fp32_bundle / "int8", "cpu-weights")
    first = quantize(fp32_bundle, tmp_path / "w8", "cpu-weights")
    with pytest.raises(ConfigError, match="--overwrite"):  # an earlier bundle is replaced only when asked
        quantize(fp32_bundle, first, "cpu-weights")
    assert quantize(fp32_bundle, first, "cpu-weights", overwrite=True) == first
    with pytest.raises(ConfigError, match="FP32"):  # an INT8 bundle is not quantized again
        quantize(first, tmp_path / "again", "cpu-weights")
    with pytest.raises(DataError, match="too few"):
        quantize(fp32_bundle, tmp_path / "few", "cpu", calib=embedded, calib_count=3)


def test_int8_manifest_drops_what_describes_the_fp32_graph(fp32_bundle):
    """A temperature and uncertainty profile fitted on the FP32 graph do not describe the INT8
    one: the INT8 manifest leaves them out (compress refits them on the INT8 graph)."""
    m = read_bundle(fp32_bundle).manifest.derive(temperature={"value": 1.4}, uncertainty={"note": "fp32 profile"})
    q = int8_manifest(m, "cpu-weights")
    assert q.precision == "int8"
    assert "temperature" not in q.sections and "uncertainty" not in q.sections and "parity" not in q.sections
    assert q.sections.get("provenance") == m.sections.get("provenance")
