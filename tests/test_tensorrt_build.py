"""edgeseg's engine builder (``build_engine`` and ``python3 -m edgeseg.export.tensorrt``),
driven end to end against the fake ``tensorrt`` of tests/trt_fakes.py: what it checks before
TensorRT, the builder settings it applies per TensorRT version, and the sidecar it writes."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from trt_fakes import H, W, bundle, drift_stats, fake, make_bundle  # noqa: F401

import edgeseg.runtime.runners.tensorrt as rtt
from edgeseg.errors import BundleError, ConfigError, EdgesegError
from edgeseg.export import tensorrt as xtrt
from edgeseg.export.tensorrt.__main__ import main as cli_main
from edgeseg.runtime.errors import MissingDependency

# missing dependencies and bad requests: refused before TensorRT is needed -------------------


def test_missing_tensorrt_is_a_dependency_error_naming_the_extra(monkeypatch, bundle, tmp_path):
    from edgeseg.errors import DependencyError

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(DependencyError, match=r"pip install edgeseg\[tensorrt\]"):
        xtrt.build_engine(bundle, tmp_path / "m.engine")


def test_cli_reports_missing_tensorrt_in_one_line(monkeypatch, bundle, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert cli_main([str(bundle), "-o", str(tmp_path / "m.engine")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: TensorRT is not installed") and "edgeseg[tensorrt]" in err
    assert not (tmp_path / "m.engine").exists()



def test_build_checks_arguments_before_needing_tensorrt(monkeypatch, bundle, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ConfigError, match=".engine or .plan"):
        xtrt.build_engine(bundle, tmp_path / "m.trt")
    with pytest.raises(ConfigError):
        xtrt.build_engine(bundle, tmp_path / "m.engine", batch=(4, 2, 1))
    with pytest.raises(ConfigError):
        xtrt.build_engine(bundle, tmp_path / "m.engine", precision="int4")
    with pytest.raises(ConfigError):
        xtrt.build_engine(bundle, tmp_path / "m.engine", workspace_mb=0)
    with pytest.raises(BundleError):
        xtrt.build_engine(tmp_path / "no-bundle", tmp_path / "m.engine")


def test_build_refuses_a_tampered_bundle(monkeypatch, bundle, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with open(bundle / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="sha256"):
        xtrt.build_engine(bundle, tmp_path / "m.engine")


def test_build_refuses_qdq_tensorrt_cannot_take(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    b = make_bundle(tmp_path, "int8", zp_dtype=np.uint8, zp_value=128)
    with pytest.raises(BundleError, match="symmetric"):
        xtrt.build_engine(b, tmp_path / "m.engine")



# builds against the fake TensorRT -----------------------------------------------------------


def test_fake_build_trt10_fp32(fake, bundle, tmp_path):
    trt = fake("10.3.0.30")
    out = xtrt.build_engine(bundle, tmp_path / "m.engine", batch=(1, 2, 4), workspace_mb=256)
    rec = trt._state["builds"][-1]
    assert rec["network_flags"] == 0 and rec["flags"] == [] and rec["workspace"] == 256 << 20
    assert rec["profiles"] == [{"pixel_values": ((1, 3, H, W), (2, 3, H, W), (4, 3, H, W))}]
    assert rec["device"] == "GPU"
    side = json.loads(rtt.sidecar_path(out).read_text())
    assert side["precision"] == "fp32" and side["tensorrt"]["version"] == "10.3.0"
    assert side["gpu"]["name"] == "FakeGPU" and side["profile"]["max"] == [4, 3, H, W]
    assert side["preprocess"] == json.loads((bundle / "edgeseg.json").read_text())["preprocess"]
    assert out.read_bytes().startswith(b"FAKETRT:")  # engine bytes untouched: no header prepended
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".m.engine")) == []  # no temp files


@pytest.mark.parametrize("kind,precision,want", [("fp32", "fp16", ["FP16"]), ("fp16", "auto", ["FP16"]),
                                                 ("int8", "auto", ["INT8"]), ("int8", "fp16", ["FP16", "INT8"])])
def test_fake_build_trt10_sets_precision_flags(fake, tmp_path, kind, precision, want):
    trt = fake("10.3.0.30")
    xtrt.build_engine(make_bundle(tmp_path, kind), tmp_path / "m.engine", precision=precision)
    assert trt._state["builds"][-1]["flags"] == want


@pytest.mark.parametrize("kind", ["fp32", "fp16", "int8"])
def test_fake_build_trt11_strongly_typed_without_precision_flags(fake, tmp_path, kind):
    trt = fake("11.0.0.1")  # this fake has no BuilderFlag.FP16/INT8, as in TensorRT 11
    out = xtrt.build_engine(make_bundle(tmp_path, kind), tmp_path / "m.engine")
    rec = trt._state["builds"][-1]
    assert rec["network_flags"] == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert rec["flags"] == []
    side = json.loads(rtt.sidecar_path(out).read_text())
    assert side["precision"] == kind and side["tensorrt"]["strongly_typed"] is True


def test_fake_build_trt11_refuses_contradicting_precision(fake, bundle, tmp_path):
    trt = fake("11.0.0.1")
    with pytest.raises(ConfigError, match="strongly typed"):
        xtrt.build_engine(bundle, tmp_path / "m.engine", precision="fp16")
    assert trt._state["builds"] == [] and not (tmp_path / "m.engine").exists()


def test_fake_build_trt11_without_the_deprecated_enum_member(fake, bundle, tmp_path):
    trt = fake("11.2.0", strongly_typed_enum=False)
    xtrt.build_engine(bundle, tmp_path / "m.engine")
    assert trt._state["builds"][-1]["network_flags"] == 0


def test_fake_build_dla(fake, tmp_path):
    b = make_bundle(tmp_path, "int8")
    fake("10.3.0.30", dla_cores=0)
    with pytest.raises(ConfigError, match="no DLA cores"):
        xtrt.build_engine(b, tmp_path / "m.engine", dla_core=0)
    trt = fake("10.3.0.30", dla_cores=2)
    with pytest.raises(ConfigError, match="core 2 does not exist"):
        xtrt.build_engine(b, tmp_path / "m.engine", dla_core=2)
    out = xtrt.build_engine(b, tmp_path / "m.engine", dla_core=1, batch=(2, 2, 2))
    rec = trt._state["builds"][-1]
    assert rec["device"] == "DLA" and rec["dla_core"] == 1 and rec["flags"] == ["GPU_FALLBACK", "INT8"]
    side = json.loads(rtt.sidecar_path(out).read_text())
    assert side["dla_core"] == 1 and side["gpu_fallback"] is True
    fake("11.1.0", dla_cores=2)
    with pytest.raises(ConfigError, match="11.0 through 11.3"):
        xtrt.build_engine(b, tmp_path / "m.engine", dla_core=0)


def test_fake_build_timing_cache_round_trip(fake, bundle, tmp_path):
    trt = fake()
    cache = tmp_path / "cache" / "timing.cache"
    xtrt.build_engine(bundle, tmp_path / "m.engine", timing_cache=cache)
    assert trt._state["cache_loaded"] == b"" and cache.read_bytes() == b"+"
    xtrt.build_engine(bundle, tmp_path / "m.engine", timing_cache=cache)
    assert trt._state["cache_loaded"] == b"+" and cache.read_bytes() == b"++"


def test_fake_build_reports_parser_errors(fake, bundle, tmp_path):
    trt = fake()
    trt._state["parse_fail"] = True
    with pytest.raises(BundleError, match="node 3: Unsupported operator FancyOp"):
        xtrt.build_engine(bundle, tmp_path / "m.engine")


def test_fake_build_failure_writes_nothing(fake, bundle, tmp_path):
    trt = fake()
    trt._state["build_fail"] = True
    with pytest.raises(EdgesegError, match="could not build"):
        xtrt.build_engine(bundle, tmp_path / "m.engine")
    assert list(tmp_path.glob("m.engine*")) == []


def test_fake_cli(fake, bundle, tmp_path, capsys):
    fake()
    assert cli_main([str(bundle), "-o", str(tmp_path / "m.plan"), "--batch", "1,2,4", "--precision", "fp16"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["precision"] == "fp16" and out["tensorrt"] == "10.3.0" and out["profile"]["opt"] == [2, 3, H, W]
    assert (tmp_path / "m.plan.json").is_file()



def test_fake_build_sidecar_carries_the_drift_statistics(fake, tmp_path):
    fake()
    stats = drift_stats()
    b = make_bundle(tmp_path, "fp16", input_stats=stats)
    side = json.loads(rtt.sidecar_path(xtrt.build_engine(b, tmp_path / "m.engine")).read_text())
    assert side["input_stats"] == stats == json.loads((b / "edgeseg.json").read_text())["input_stats"]
    assert side["built_with"].startswith("edgeseg ")


def test_dependency_errors_share_the_runtime_base():
    """One ``except MissingDependency`` catches the runtime's and the toolkit's errors."""
    from edgeseg.errors import DependencyError

    assert issubclass(DependencyError, MissingDependency) and issubclass(MissingDependency, EdgesegError)


def test_python_m_entry_point_runs_as_the_device_cli(bundle, tmp_path):
    """``python3 -m edgeseg.export.tensorrt`` (the package's __main__), where tensorrt is missing:
    one error line naming the extra, exit status 2, no traceback, no engine."""
    import subprocess

    code = ("import sys, runpy; sys.modules['tensorrt'] = None; "
            "sys.argv = ['x', sys.argv[1], '-o', sys.argv[2]]; "
            "runpy.run_module('edgeseg.export.tensorrt', run_name='__main__')")
    p = subprocess.run([sys.executable, "-c", code, str(bundle), str(tmp_path / "m.engine")], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("error: TensorRT is not installed") and "edgeseg[tensorrt]" in p.stderr
    assert not (tmp_path / "m.engine").exists()


def test_fake_build_sidecar_carries_what_the_runtime_applies(fake, tmp_path):
    """The engine's sidecar keeps the bundle's intensity policy, temperature and uncertainty
    profile: a Segmenter on the engine must map pixels and temper probabilities as on the bundle."""
    from edgeseg.runtime.bundle import read_bundle, write_bundle

    fake()
    src = read_bundle(make_bundle(tmp_path, "fp16", name="plain"))
    extra = {"intensity": {"kind": "minmax", "low": 0.0, "high": 4095.0},
             "temperature": {"value": 1.3}, "uncertainty": {"note": "profile"}}
    b = write_bundle(tmp_path / "rich", {"model.onnx": src.model_file}, src.manifest.derive(**extra))
    side = json.loads(rtt.sidecar_path(xtrt.build_engine(b, tmp_path / "m.engine")).read_text())
    for key, value in extra.items():
        assert side[key] == value
