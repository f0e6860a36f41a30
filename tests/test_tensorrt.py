"""TensorRT engine building and running.

Three layers, so that most of it is checked on a CPU-only machine:

1. the pure decisions in ``edgeseg.export.tensorrt`` (version -> flags, precision checks, DLA,
   profile shapes, sidecar content) and ``edgeseg.runtime.runners.tensorrt`` (versions, shape checks);
2. ``build_engine`` and ``TensorRTRunner`` driven end to end against a *fake* ``tensorrt``
   module and a fake CUDA memory backend (a fake engine runs the ONNX with ONNX Runtime and
   moves real bytes through the fake device memory). The fakes follow the TensorRT 10/11 Python
   API as documented; they check edgeseg's orchestration, not TensorRT itself;
3. real builds, marked ``tensorrt``, which skip unless TensorRT (and cuda-python or pycuda) is
   importable: they build an engine from a tiny bundle and compare it with ONNX Runtime.
"""

from __future__ import annotations

import enum
import itertools
import json
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import edgeseg.runtime.runners.tensorrt as rtt  # noqa: E402
from edgeseg.errors import BundleError, ConfigError, DependencyError, EdgesegError, InputError  # noqa: E402
from edgeseg.export import tensorrt as xtrt  # noqa: E402
from edgeseg.runtime.bundle import read_bundle, write_bundle  # noqa: E402
from edgeseg.runtime.preprocess import Preprocess  # noqa: E402

H = W = 32
CLASSES = ["background", "lesion"]


# --------------------------------------------------------------------------------------------
# tiny models and bundles


def tiny_onnx(path: Path, kind: str = "fp32", batch: str | int = "N", zp_dtype=np.int8, zp_value: int = 0,
              size: int = H) -> Path:
    """Conv 3->2 channels, kernel 4, stride 4: pixel_values [N,3,32,32] -> logits [N,2,8,8].
    kind: fp32 | fp16 (FP16 weights, casts at the edges) | int8 (Q/DQ on the input)."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((2, 3, 4, 4)) * 0.2).astype(np.float32)
    b = np.array([0.1, -0.1], np.float32)
    nodes, inits = [], []
    x = "pixel_values"
    if kind == "fp16":
        nodes.append(helper.make_node("Cast", [x], ["x16"], to=TensorProto.FLOAT16))
        inits += [numpy_helper.from_array(w.astype(np.float16), "W"), numpy_helper.from_array(b.astype(np.float16), "B")]
        nodes.append(helper.make_node("Conv", ["x16", "W", "B"], ["y16"], kernel_shape=[4, 4], strides=[4, 4]))
        nodes.append(helper.make_node("Cast", ["y16"], ["logits"], to=TensorProto.FLOAT))
    else:
        if kind == "int8":
            inits += [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
                      numpy_helper.from_array(np.array(zp_value, zp_dtype), "zp")]
            nodes.append(helper.make_node("QuantizeLinear", [x, "s", "zp"], ["xq"], name="q_in"))
            nodes.append(helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xdq"], name="dq_in"))
            x = "xdq"
        inits += [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
        nodes.append(helper.make_node("Conv", [x, "W", "B"], ["logits"], kernel_shape=[4, 4], strides=[4, 4]))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 2, size // 4, size // 4])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_bundle(tmp_path: Path, kind: str = "fp32", name: str = "bundle", colors: bool = True, **kw) -> Path:
    src = tiny_onnx(tmp_path / f"{name}-src.onnx", kind, **kw)
    manifest = {
        "model": "model.onnx",
        "preprocess": Preprocess(height=H, width=W).to_dict(),
        "classes": list(CLASSES),
        "outputs": [{"name": "logits", "kind": "logits"}],
        "precision": {"int8": "int8"}.get(kind, kind),
    }
    if colors:
        manifest["colors"] = [[0, 0, 0], [255, 0, 0]]
    return write_bundle(tmp_path / name, {"model.onnx": src}, manifest)


@pytest.fixture
def bundle(tmp_path):
    return make_bundle(tmp_path)


def ort_run(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    from edgeseg.runtime.runners.onnxrt import OnnxRuntimeRunner

    return OnnxRuntimeRunner(onnx_path).infer(x)["logits"]


# --------------------------------------------------------------------------------------------
# 1. pure logic


@pytest.mark.parametrize("text,want", [("10.3.0.30", (10, 3, 0)), ("11.0", (11, 0, 0)), ("11.4.1", (11, 4, 1)),
                                       ("10.13.2.6", (10, 13, 2)), ("10.0.1b", (10, 0, 1)), ("12", (12, 0, 0))])
def test_parse_version(text, want):
    assert rtt.parse_version(text) == want


@pytest.mark.parametrize("text", ["", "abc", "v10"])
def test_parse_version_rejects_garbage(text):
    with pytest.raises(ValueError):
        rtt.parse_version(text)


def test_tensorrt_version_is_none_without_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert rtt.tensorrt_version() is None


def test_tensorrt_version_reads_the_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0.30"))
    assert rtt.tensorrt_version() == (10, 3, 0)


def _no_precision_flags(plan):
    return not {"FP16", "INT8", "BF16", "FP8"} & set(plan.builder_flags)


def test_trt10_fp32_bundle_builds_fp32_without_flags():
    p = xtrt.plan_build((10, 3, 0), "auto", "fp32")
    assert (p.precision, p.strongly_typed, p.network_flags, p.builder_flags) == ("fp32", False, (), ())


def test_trt10_fp16_request_sets_the_fp16_flag():
    assert xtrt.plan_build((10, 3, 0), "fp16", "fp32").builder_flags == ("FP16",)
    p = xtrt.plan_build((10, 3, 0), "auto", "fp16")
    assert (p.precision, p.builder_flags) == ("fp16", ("FP16",))


def test_trt10_int8_qdq_sets_int8_and_never_a_calibrator():
    p = xtrt.plan_build((10, 3, 0), "auto", "int8")
    assert (p.precision, p.builder_flags, p.strongly_typed) == ("int8", ("INT8",), False)
    assert xtrt.plan_build((10, 3, 0), "int8", "int8").builder_flags == ("INT8",)
    mixed = xtrt.plan_build((10, 3, 0), "fp16", "int8")
    assert mixed.builder_flags == ("INT8", "FP16") and mixed.precision == "int8+fp16"


def test_trt10_int8_without_qdq_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="Q/DQ") as e:
        xtrt.plan_build((10, 3, 0), "int8", "fp32")
    assert "calibrator" in str(e.value)


@pytest.mark.parametrize("req,model", [("fp32", "int8"), ("fp32", "fp16"), ("int8", "fp16")])
def test_trt10_contradictions_are_refused(req, model):
    with pytest.raises(ConfigError):
        xtrt.plan_build((10, 3, 0), req, model)


@pytest.mark.parametrize("version", [(11, 0, 0), (11, 4, 1), (12, 1, 0)])
@pytest.mark.parametrize("model", ["fp32", "fp16", "int8"])
def test_trt11_is_strongly_typed_and_takes_precision_from_the_onnx(version, model):
    p = xtrt.plan_build(version, "auto", model)
    assert p.strongly_typed and p.network_flags == ("STRONGLY_TYPED",)
    assert p.builder_flags == () and p.precision == model
    assert xtrt.plan_build(version, model, model).precision == model  # asking for what it is is fine


@pytest.mark.parametrize("req,model", [("fp16", "fp32"), ("fp32", "fp16"), ("int8", "fp32"), ("fp16", "int8"),
                                       ("int8", "fp16")])
def test_trt11_refuses_precision_requests_that_contradict_the_onnx(req, model):
    with pytest.raises(ConfigError, match="strongly typed") as e:
        xtrt.plan_build((11, 0, 0), req, model)
    assert model in str(e.value) and req in str(e.value)


def test_trt10_3_vs_11_0_vs_11_4_side_by_side():
    """The same FP16 bundle, three TensorRT releases."""
    p10 = xtrt.plan_build((10, 3, 0), "auto", "fp16")
    p110 = xtrt.plan_build((11, 0, 0), "auto", "fp16")
    p114 = xtrt.plan_build((11, 4, 1), "auto", "fp16", dla_core=0)
    assert p10.builder_flags == ("FP16",) and not p10.strongly_typed
    assert p110.builder_flags == () and p110.strongly_typed
    assert p114.builder_flags == ("GPU_FALLBACK",) and _no_precision_flags(p114)
    with pytest.raises(ConfigError, match="11.0 through 11.3"):
        xtrt.plan_build((11, 0, 0), "auto", "fp16", dla_core=0)
    assert xtrt.plan_build((10, 3, 0), "auto", "fp16", dla_core=1).builder_flags == ("FP16", "GPU_FALLBACK")


def test_old_tensorrt_is_a_dependency_error():
    with pytest.raises(DependencyError, match="10 or newer"):
        xtrt.plan_build((8, 6, 1), "auto", "fp32")


@pytest.mark.parametrize("version,ok", [((10, 3, 0), True), ((10, 7, 0), True), ((10, 8, 0), False),
                                        ((11, 0, 0), False), ((11, 3, 1), False), ((11, 4, 0), False),
                                        ((11, 4, 1), True), ((11, 5, 0), True)])
def test_dla_availability_by_release(version, ok):
    assert xtrt.dla_availability(version)[0] is ok


def test_dla_needs_fp16_or_int8():
    with pytest.raises(ConfigError, match="FP16 and INT8"):
        xtrt.plan_build((10, 3, 0), "auto", "fp32", dla_core=0)
    with pytest.raises(ConfigError, match="FP16 and INT8"):
        xtrt.plan_build((11, 4, 1), "auto", "fp32", dla_core=0)
    assert xtrt.plan_build((10, 3, 0), "fp16", "fp32", dla_core=0).precision == "fp16"


def test_dla_needs_static_shapes_and_a_valid_core():
    with pytest.raises(ConfigError, match="dynamic"):
        xtrt.plan_build((10, 3, 0), "auto", "int8", dla_core=0, batch=(1, 2, 4))
    assert xtrt.plan_build((10, 3, 0), "auto", "int8", dla_core=0, batch=(4, 4, 4)).dla_core == 0
    with pytest.raises(ConfigError):
        xtrt.plan_build((10, 3, 0), "auto", "int8", dla_core=-1)


def test_dla_without_gpu_fallback_is_noted():
    p = xtrt.plan_build((10, 3, 0), "auto", "int8", dla_core=0, gpu_fallback=False)
    assert "GPU_FALLBACK" not in p.builder_flags and p.notes


def test_no_dla_request_sets_nothing_dla():
    p = xtrt.plan_build((10, 3, 0), "auto", "fp32", gpu_fallback=False)
    assert p.dla_core is None and "GPU_FALLBACK" not in p.builder_flags


@pytest.mark.parametrize("text,want", [("auto", "auto"), ("FP16", "fp16"), ("int8-qdq", "int8"), ("half", "fp16"),
                                       ("float32", "fp32")])
def test_normalize_precision(text, want):
    assert xtrt.normalize_precision(text) == want


def test_normalize_precision_rejects_unknown():
    with pytest.raises(ConfigError, match="unknown precision"):
        xtrt.normalize_precision("bf16")
    with pytest.raises(ConfigError):
        xtrt.normalize_precision("auto", allow_auto=False)


@pytest.mark.parametrize("text,want", [("1,4,8", (1, 4, 8)), ("4", (4, 4, 4)), (2, (2, 2, 2)), ((1, 1, 2), (1, 1, 2)),
                                       (" 1, 2 ,2", (1, 2, 2))])
def test_parse_batch(text, want):
    assert xtrt.parse_batch(text) == want


@pytest.mark.parametrize("text", ["8,4,2", "0,1,1", "a", "1,2", "1,2,3,4", "-1"])
def test_parse_batch_rejects(text):
    with pytest.raises(ConfigError):
        xtrt.parse_batch(text)


def test_profile_defaults_to_the_bundles_own_shape(bundle):
    b = read_bundle(bundle)
    info = xtrt.inspect_onnx(b.model_file)
    assert info.input_name == "pixel_values" and info.input_shape == (None, 3, H, W)
    shapes = xtrt.profile_shapes(info.input_shape, b.preprocess.height, b.preprocess.width)
    assert shapes == {"min": (1, 3, H, W), "opt": (1, 3, H, W), "max": (1, 3, H, W)}
    shapes = xtrt.profile_shapes(info.input_shape, H, W, (1, 2, 4))
    assert shapes["min"] == (1, 3, H, W) and shapes["opt"] == (2, 3, H, W) and shapes["max"] == (4, 3, H, W)


def test_profile_follows_preprocess_when_hw_are_dynamic():
    shapes = xtrt.profile_shapes((None, 3, None, None), 512, 384)
    assert shapes["max"] == (1, 3, 512, 384)


def test_profile_refuses_inconsistent_shapes():
    with pytest.raises(BundleError, match="inconsistent"):
        xtrt.profile_shapes((None, 3, 64, 64), 32, 32)
    with pytest.raises(ConfigError, match="fixed batch of 1"):
        xtrt.profile_shapes((1, 3, 32, 32), 32, 32, (1, 2, 4))
    assert xtrt.profile_shapes((1, 3, 32, 32), 32, 32)["max"] == (1, 3, 32, 32)


@pytest.mark.parametrize("kind", ["fp32", "fp16", "int8"])
def test_detect_precision(tmp_path, kind):
    info = xtrt.inspect_onnx(tiny_onnx(tmp_path / "m.onnx", kind))
    assert info.precision == kind and info.qdq_problems == ()


def test_qdq_problems_flag_what_tensorrt_cannot_build(tmp_path):
    info = xtrt.inspect_onnx(tiny_onnx(tmp_path / "u8.onnx", "int8", zp_dtype=np.uint8, zp_value=128))
    assert info.precision == "int8" and len(info.qdq_problems) == 2 and "UINT8" in info.qdq_problems[0]
    info = xtrt.inspect_onnx(tiny_onnx(tmp_path / "nz.onnx", "int8", zp_value=3))
    assert any("non-zero zero point" in p for p in info.qdq_problems)


def test_inspect_onnx_refuses_non_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not a model")
    with pytest.raises(BundleError, match="not a readable ONNX"):
        xtrt.inspect_onnx(bad)


def test_sidecar_content(tmp_path):
    b = read_bundle(make_bundle(tmp_path, "int8"))
    plan = xtrt.plan_build((10, 3, 0), "auto", "int8")
    prof = xtrt.profile_shapes((None, 3, H, W), H, W, (1, 2, 4))
    side = xtrt.sidecar_content(b, plan, prof, "pixel_values", "ab" * 32, gpu={"name": "Orin"},
                                built_at=0.0, engine_name="m.engine")
    json.dumps(side)  # plain JSON
    assert side["preprocess"] == b.manifest["preprocess"] and Preprocess.from_dict(side["preprocess"]).height == H
    assert side["classes"] == CLASSES and side["outputs"] == [{"name": "logits", "kind": "logits"}]
    assert side["colors"] == [[0, 0, 0], [255, 0, 0]]
    assert side["precision"] == "int8" and side["engine_sha256"] == "ab" * 32 and side["engine"] == "m.engine"
    assert side["tensorrt"] == {"version": "10.3.0", "strongly_typed": False, "network_flags": [],
                                "builder_flags": ["INT8"]}
    assert side["gpu"] == {"name": "Orin"} and side["dla_core"] is None
    assert side["profile"] == {"input": "pixel_values", "min": [1, 3, H, W], "opt": [2, 3, H, W], "max": [4, 3, H, W]}
    src = side["source"]
    assert Path(src["bundle"]) == b.path.resolve() and src["model"] == "model.onnx"
    assert src["model_sha256"] == b.manifest["files"]["model.onnx"] and src["onnx_precision"] == "int8"
    assert src["manifest_sha256"] == b.manifest["manifest_sha256"]
    assert side["built_at"] == "1970-01-01T00:00:00Z"


def test_sidecar_without_colors_has_none(tmp_path):
    b = read_bundle(make_bundle(tmp_path, colors=False))
    side = xtrt.sidecar_content(b, xtrt.plan_build((11, 0, 0), "auto", "fp32"),
                                xtrt.profile_shapes((None, 3, H, W), H, W), "pixel_values", "0" * 64)
    assert "colors" not in side and side["tensorrt"]["strongly_typed"] is True


def test_check_input_shape():
    eng, prof = (-1, 3, 32, 32), ((1, 3, 32, 32), (4, 3, 32, 32))
    rtt.check_input_shape((2, 3, 32, 32), eng, prof)
    rtt.check_input_shape((9, 3, 32, 32), eng, prof)  # over max batch: infer splits it
    with pytest.raises(InputError, match="fixed at 32"):
        rtt.check_input_shape((1, 3, 64, 64), eng, prof)
    with pytest.raises(InputError, match="dimensions"):
        rtt.check_input_shape((3, 32, 32), eng, prof)
    with pytest.raises(InputError, match="profile"):
        rtt.check_input_shape((1, 3, 64, 64), (-1, 3, -1, -1), ((1, 3, 32, 32), (4, 3, 32, 32)))
    rtt.check_input_shape((6, 3, 32, 32), (2, 3, 32, 32), None)  # fixed batch 2: run as 3 x 2
    with pytest.raises(InputError, match="not a multiple"):
        rtt.check_input_shape((3, 3, 32, 32), (2, 3, 32, 32), None)


def test_sidecar_path_and_reading(tmp_path):
    e = tmp_path / "m.engine"
    assert rtt.sidecar_path(e).name == "m.engine.json"
    assert rtt.read_sidecar(e) == {}
    rtt.sidecar_path(e).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        rtt.read_sidecar(e)


def test_default_engine_path():
    assert xtrt.default_engine_path("runs/b0_int8") == Path("runs/b0_int8.engine")


# missing dependencies ------------------------------------------------------------------------


def test_missing_tensorrt_is_a_dependency_error_naming_the_extra(monkeypatch, bundle, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(DependencyError, match=r"pip install edgeseg\[tensorrt\]"):
        xtrt.build_engine(bundle, tmp_path / "m.engine")
    eng = tmp_path / "x.engine"
    eng.write_bytes(b"whatever")
    with pytest.raises(DependencyError, match=r"pip install edgeseg\[tensorrt\]"):
        rtt.TensorRTRunner(eng)


def test_cli_reports_missing_tensorrt_in_one_line(monkeypatch, bundle, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert xtrt.main([str(bundle), "-o", str(tmp_path / "m.engine")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: TensorRT is not installed") and "edgeseg[tensorrt]" in err
    assert not (tmp_path / "m.engine").exists()


def test_missing_cuda_library_is_a_dependency_error(monkeypatch):
    for mod in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart", "pycuda", "pycuda.driver"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(DependencyError) as e:
        rtt.open_cuda(0)
    assert "cuda-python" in str(e.value) and "pycuda" in str(e.value)


def test_runner_refuses_a_missing_engine(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        rtt.TensorRTRunner(tmp_path / "nope.engine")


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


# --------------------------------------------------------------------------------------------
# 2. fake tensorrt + fake CUDA memory: build_engine and TensorRTRunner end to end on CPU

MEMORY: dict[int, bytearray] = {}
_PTRS = itertools.count(0x1000, 0x1000)


class FakeCuda:
    name = "fake"
    stream_handle = 7

    def __init__(self, device=0):
        self.device = device
        self.mine: set[int] = set()
        self.closed = False

    def activate(self):
        pass

    def deactivate(self):
        pass

    def malloc(self, n):
        p = next(_PTRS)
        MEMORY[p] = bytearray(n)
        self.mine.add(p)
        return p

    def free(self, p):
        del MEMORY[p]
        self.mine.discard(p)

    def htod(self, p, arr):
        MEMORY[p][:arr.nbytes] = arr.tobytes()

    def dtoh(self, arr, p):
        arr[...] = np.frombuffer(bytes(MEMORY[p][:arr.nbytes]), dtype=arr.dtype).reshape(arr.shape)

    def sync(self):
        pass

    def close(self):
        self.closed = True


def make_fake_trt(version: str, dla_cores: int = 0, strongly_typed_enum: bool = True):
    """A stand-in for the parts of the tensorrt module edgeseg uses, per TensorRT 10/11 docs."""
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    state: dict = {"builds": [], "parse_fail": False, "build_fail": False}
    trt._state = state

    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = list(Severity)

        def __init__(self, min_severity=Severity.WARNING):
            self.min_severity = min_severity

    flags = {"FP16": 0, "INT8": 1, "GPU_FALLBACK": 3, "TF32": 6} if major < 11 else {"GPU_FALLBACK": 3, "TF32": 6}
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", flags)
    ncf = {"EXPLICIT_BATCH": 0} if major < 11 else {}
    if strongly_typed_enum:
        ncf["STRONGLY_TYPED"] = 1
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", ncf or {"UNUSED": 9})
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.DeviceType = enum.IntEnum("DeviceType", {"GPU": 0, "DLA": 1})
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    trt.DataType = enum.IntEnum("DataType", {"FLOAT": 0, "HALF": 1})
    trt.LayerType = enum.IntEnum("LayerType", {"CONVOLUTION": 0, "QUANTIZE": 1, "DEQUANTIZE": 2, "OTHER": 3})
    trt.Logger = Logger
    trt.nptype = lambda dt: {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16}[dt]

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, tuple(shape)

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.inputs: list = []
            self.outputs: list = []
            self.layers: list = []
            self.onnx = None

        @property
        def num_inputs(self):
            return len(self.inputs)

        @property
        def num_layers(self):
            return len(self.layers)

        def get_layer(self, i):
            return self.layers[i]

        def get_input(self, i):
            return self.inputs[i]

    class ParserError:
        def __init__(self, node, desc):
            self._node, self._desc = node, desc

        def node(self):
            return self._node

        def desc(self):
            return self._desc

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

        def parse_from_file(self, path):
            if state["parse_fail"]:
                self.errors = [ParserError(3, "Unsupported operator FancyOp")]
                return False
            m = onnx.load(path)
            for i in m.graph.input:
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim]
                self.network.inputs.append(Tensor(i.name, dims))
            self.network.outputs = [o.name for o in m.graph.output]
            kinds = {"Conv": trt.LayerType.CONVOLUTION, "QuantizeLinear": trt.LayerType.QUANTIZE,
                     "DequantizeLinear": trt.LayerType.DEQUANTIZE}
            self.network.layers = [types.SimpleNamespace(type=kinds.get(n.op_type, trt.LayerType.OTHER))
                                   for n in m.graph.node]
            self.network.onnx = str(path)
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class TimingCache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"+"

    class Config:
        def __init__(self):
            self.flags, self.pools, self.profiles = set(), {}, []
            self.cache = None
            self.default_device_type = trt.DeviceType.GPU
            self.DLA_core = -1

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def set_flag(self, flag):
            assert isinstance(flag, trt.BuilderFlag)
            self.flags.add(flag.name)

        def add_optimization_profile(self, p):
            self.profiles.append(p)
            return len(self.profiles) - 1

        def create_timing_cache(self, blob):
            state["cache_loaded"] = bytes(blob)
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        num_DLA_cores = dla_cores

        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags=0):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            record = {"network_flags": network.flags, "flags": sorted(config.flags),
                      "workspace": config.pools.get(trt.MemoryPoolType.WORKSPACE),
                      "profiles": [p.shapes for p in config.profiles],
                      "device": config.default_device_type.name, "dla_core": config.DLA_core}
            state["builds"].append(record)
            if state["build_fail"]:
                return None
            inp = network.inputs[0]
            (lo, opt, hi), = config.profiles[0].shapes.values()
            spec = {"trt": version, "onnx": network.onnx, "input": inp.name, "shape": list(inp.shape),
                    "profile": [lo, opt, hi], "outputs": network.outputs}
            return b"FAKETRT:" + json.dumps(spec).encode()

    class Engine:
        def __init__(self, spec):
            import onnxruntime as ort

            self.spec = spec
            self.sess = ort.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])
            self.names = [spec["input"]] + spec["outputs"]

        @property
        def num_io_tensors(self):
            return len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == self.spec["input"] else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return trt.DataType.FLOAT

        def get_tensor_shape(self, name):
            if name == self.spec["input"]:
                return tuple(self.spec["shape"])
            return (-1,) + self.out_shape(name, (1,) + tuple(self.spec["shape"][1:]))[1:]

        def out_shape(self, name, in_shape):
            outs = self.sess.run([name], {self.spec["input"]: np.zeros(in_shape, np.float32)})
            return tuple(outs[0].shape)

        def get_tensor_profile_shape(self, name, index):
            assert index == 0
            return [tuple(s) for s in self.spec["profile"]]

        def create_execution_context(self):
            return Context(self)

    class Context:
        def __init__(self, engine):
            static = all(d >= 0 for d in engine.spec["shape"])
            self.engine, self.addr, self.shape = engine, {}, tuple(engine.spec["shape"]) if static else None

        def set_input_shape(self, name, shape):
            lo, _, hi = self.engine.spec["profile"]
            if any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
                return False
            self.shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            if name == self.engine.spec["input"]:
                return self.shape
            return self.engine.out_shape(name, self.shape)

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr
            return True

        def execute_async_v3(self, stream):
            assert stream == FakeCuda.stream_handle
            spec = self.engine.spec
            n = int(np.prod(self.shape)) * 4
            x = np.frombuffer(bytes(MEMORY[self.addr[spec["input"]]][:n]), np.float32).reshape(self.shape)
            for name, y in zip(spec["outputs"], self.engine.sess.run(spec["outputs"], {spec["input"]: x})):
                MEMORY[self.addr[name]][:y.nbytes] = np.ascontiguousarray(y, np.float32).tobytes()
            return True

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            data = bytes(data)
            if not data.startswith(b"FAKETRT:"):
                return None
            spec = json.loads(data[len(b"FAKETRT:"):])
            if spec["trt"] != version:  # engines only load on the TensorRT that built them
                return None
            return Engine(spec)

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


@pytest.fixture
def fake(monkeypatch):
    """fake(version, **kw) installs a fake tensorrt module and the fake CUDA backend."""
    monkeypatch.setattr(rtt, "_LOGGER", None)
    monkeypatch.setattr(rtt, "open_cuda", lambda device=0: FakeCuda(device))
    monkeypatch.setattr(xtrt, "device_info", lambda device=0: {"name": "FakeGPU", "compute_capability": "8.7"})

    def install(version="10.3.0.30", **kw):
        trt = make_fake_trt(version, **kw)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(rtt, "_LOGGER", None)
        return trt

    return install


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
    assert side["preprocess"] == read_bundle(bundle).manifest["preprocess"]
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
    assert xtrt.main([str(bundle), "-o", str(tmp_path / "m.plan"), "--batch", "1,2,4", "--precision", "fp16"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["precision"] == "fp16" and out["tensorrt"] == "10.3.0" and out["profile"]["opt"] == [2, 3, H, W]
    assert (tmp_path / "m.plan.json").is_file()


@pytest.fixture
def engine(fake, bundle, tmp_path):
    fake()
    return xtrt.build_engine(bundle, tmp_path / "m.engine", batch=(1, 2, 4))


def test_fake_runner_matches_onnxruntime(engine, bundle):
    x = np.random.default_rng(1).standard_normal((3, 3, H, W)).astype(np.float32)
    with rtt.TensorRTRunner(engine) as r:
        assert r.name == "tensorrt" and r.input_name == "pixel_values" and r.output_names == ["logits"]
        assert r.profile == ((1, 3, H, W), (4, 3, H, W))
        out = r.infer(x)
        assert list(out) == ["logits"] and out["logits"].shape == (3, 2, 8, 8)
        np.testing.assert_array_equal(out["logits"], ort_run(bundle / "model.onnx", x))
        assert r.metadata() == json.loads(rtt.sidecar_path(engine).read_text())


def test_fake_runner_splits_batches_above_the_profile(engine, bundle):
    x = np.random.default_rng(2).standard_normal((9, 3, H, W)).astype(np.float32)
    r = rtt.TensorRTRunner(engine)
    np.testing.assert_array_equal(r.infer(x)["logits"], ort_run(bundle / "model.onnx", x))
    r.close()


def test_fake_runner_with_a_fixed_batch_engine(fake, tmp_path):
    fake()
    b = make_bundle(tmp_path, batch=2)
    eng = xtrt.build_engine(b, tmp_path / "m.engine", batch=(2, 2, 2))
    with pytest.raises(ConfigError, match="fixed batch of 2"):
        xtrt.build_engine(b, tmp_path / "m.engine")
    x = np.random.default_rng(7).standard_normal((6, 3, H, W)).astype(np.float32)
    with rtt.TensorRTRunner(eng) as r:
        assert r.profile is None and r.max_batch == 2
        np.testing.assert_array_equal(r.infer(x)["logits"], np.concatenate([ort_run(b / "model.onnx", x[i:i + 2])
                                                                              for i in (0, 2, 4)]))
        with pytest.raises(InputError, match="not a multiple"):
            r.infer(x[:3])


def test_fake_runner_rejects_bad_input(engine):
    r = rtt.TensorRTRunner(engine)
    with pytest.raises(InputError):
        r.infer(np.zeros((3, H, W), np.float32))
    with pytest.raises(InputError, match="fixed at 32"):
        r.infer(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(InputError):
        r.infer([[1.0]])
    r.close()


def test_fake_runner_close_frees_device_memory(engine):
    r = rtt.TensorRTRunner(engine)
    r.infer(np.zeros((2, 3, H, W), np.float32))
    cuda = r._cuda
    assert cuda.mine
    r.close()
    assert not cuda.mine and cuda.closed
    r.close()  # twice is fine
    with pytest.raises(EdgesegError, match="closed"):
        r.infer(np.zeros((1, 3, H, W), np.float32))


def test_fake_runner_is_thread_safe(engine, bundle):
    r = rtt.TensorRTRunner(engine)
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1 + i % 4, 3, H, W)).astype(np.float32) for i in range(16)]
    results = [None] * len(xs)

    def work(i):
        results[i] = r.infer(xs[i])["logits"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, y in zip(xs, results):
        np.testing.assert_array_equal(y, ort_run(bundle / "model.onnx", x))
    r.close()


def test_fake_runner_refuses_a_stale_sidecar(engine):
    side = rtt.sidecar_path(engine)
    meta = json.loads(side.read_text())
    meta["engine_sha256"] = "0" * 64
    side.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="sidecar"):
        rtt.TensorRTRunner(engine)


def test_fake_runner_explains_a_foreign_engine(engine, fake):
    fake("11.0.0.1")  # engine was built by the 10.3 fake
    with pytest.raises(BundleError, match="rebuild it on this device") as e:
        rtt.TensorRTRunner(engine)
    assert "10.3.0" in str(e.value) and "FakeGPU" in str(e.value)


def test_fake_engine_through_segmenter_matches_the_bundle(engine, bundle):
    from edgeseg.runtime.segmenter import Segmenter

    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (50, 70, 3), dtype=np.uint8) for _ in range(3)]
    a, b = Segmenter(engine), Segmenter(bundle)
    assert a.classes == b.classes and a.preprocess_spec == b.preprocess_spec
    for ma, mb in zip(a.predict_batch(images), b.predict_batch(images)):
        np.testing.assert_array_equal(ma, mb)
    a.close()
    b.close()


# the on-device recipes in export/, against the same fakes ----------------------------------

ROOT = Path(__file__).resolve().parents[1]

FAKE_TRTEXEC = """#!{python}
import json, os, sys
import onnx
args = dict(a[2:].split("=", 1) if "=" in a else (a[2:], True) for a in sys.argv[1:])
log = os.environ["FAKE_TRTEXEC_LOG"]
with open(log, "w") as f:
    json.dump(sys.argv[1:], f)
if "help" in args:
    print("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --help")
    sys.exit(0)
name = args["minShapes"].split(":")[0]
shape = lambda k: [int(v) for v in args[k].split(":")[1].split("x")]
m = onnx.load(args["onnx"])
spec = {{"trt": os.environ["FAKE_TRT_VERSION"], "onnx": os.path.abspath(args["onnx"]), "input": name,
        "shape": [-1] + shape("minShapes")[1:], "profile": [shape("minShapes"), shape("optShapes"),
        shape("maxShapes")], "outputs": [o.name for o in m.graph.output]}}
open(args["saveEngine"], "wb").write(b"FAKETRT:" + json.dumps(spec).encode())
open(args["timingCacheFile"], "ab").write(b"+")
"""


@pytest.fixture
def trtexec(tmp_path):
    import shutil
    import subprocess

    if shutil.which("bash") is None:
        pytest.skip("bash is needed to run export/jetson_build.sh")
    exe = tmp_path / "bin" / "trtexec"
    exe.parent.mkdir()
    exe.write_text(FAKE_TRTEXEC.format(python=sys.executable))
    exe.chmod(0o755)
    log = tmp_path / "trtexec-args.json"

    def run(bundle, out, version="10.3.0.30", **env):
        e = {**__import__("os").environ, "TRTEXEC": str(exe), "FAKE_TRTEXEC_LOG": str(log),
             "FAKE_TRT_VERSION": version, "TRT_VERSION": version, **env}
        p = subprocess.run(["bash", str(ROOT / "export" / "jetson_build.sh"), str(bundle), str(out)], env=e,
                           capture_output=True, text=True)
        args = json.loads(log.read_text()) if log.is_file() else []
        log.unlink(missing_ok=True)
        return p, args

    return run


def test_jetson_build_sh_trt10(trtexec, fake, bundle, tmp_path):
    out = tmp_path / "m.engine"
    p, args = trtexec(bundle, out, BATCH="1,2,4", PRECISION="fp16")
    assert p.returncode == 0, p.stderr
    assert f"--minShapes=pixel_values:1x3x{H}x{W}" in args and f"--optShapes=pixel_values:2x3x{H}x{W}" in args
    assert f"--maxShapes=pixel_values:4x3x{H}x{W}" in args and "--fp16" in args
    assert "--stronglyTyped" not in args and "--int8" not in args and "--skipInference" in args
    assert f"--timingCacheFile={tmp_path / 'timing.cache'}" in args and "--memPoolSize=workspace:1024" in args
    side = json.loads(rtt.sidecar_path(out).read_text())
    assert side["precision"] == "fp16" and side["tensorrt"]["builder_flags"] == ["FP16"]
    assert side["profile"]["max"] == [4, 3, H, W] and side["classes"] == CLASSES
    assert not list(tmp_path.glob("m.engine*.tmp*"))
    fake("10.3.0.30")
    from edgeseg.runtime.segmenter import Segmenter

    img = np.random.default_rng(8).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    np.testing.assert_array_equal(Segmenter(out).predict(img), Segmenter(bundle).predict(img))


def test_jetson_build_sh_int8_and_dla(trtexec, tmp_path):
    b = make_bundle(tmp_path, "int8")
    p, args = trtexec(b, tmp_path / "q.engine")
    assert p.returncode == 0, p.stderr
    assert "--int8" in args and "--fp16" not in args and not any(a.startswith("--calib") for a in args)
    p, args = trtexec(b, tmp_path / "q.engine", DLA_CORE="0", BATCH="1")
    assert p.returncode == 0, p.stderr
    assert "--useDLACore=0" in args and "--allowGPUFallback" in args
    p, _ = trtexec(b, tmp_path / "q.engine", DLA_CORE="0", BATCH="1,1,2")
    assert p.returncode == 2 and "static shapes" in p.stderr


def test_jetson_build_sh_trt11(trtexec, bundle, tmp_path):
    p, args = trtexec(bundle, tmp_path / "m.engine", version="11.0.0.1")
    assert p.returncode == 0, p.stderr
    assert "--stronglyTyped" in args and "--fp16" not in args and "--int8" not in args
    p, args = trtexec(bundle, tmp_path / "m.engine", version="11.0.0.1", PRECISION="fp16")
    assert p.returncode == 2 and "strongly typed" in p.stderr and args == []
    p, _ = trtexec(make_bundle(tmp_path, "fp16", name="h"), tmp_path / "h.engine", version="11.2.0",
                   DLA_CORE="0")
    assert p.returncode == 2 and "no DLA" in p.stderr


def test_jetson_build_sh_detects_the_version_from_trtexec(trtexec, bundle, tmp_path):
    p, args = trtexec(bundle, tmp_path / "m.engine", TRT_VERSION="", PATH="/usr/bin:/bin")
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "m.engine.json").read_text())["tensorrt"]["version"] == "10.3.0"


def test_jetson_build_sh_refuses_a_tampered_bundle(trtexec, bundle, tmp_path):
    with open(bundle / "model.onnx", "ab") as f:
        f.write(b"\0")
    p, args = trtexec(bundle, tmp_path / "m.engine")
    assert p.returncode == 2 and "sha256" in p.stderr and args == []


def run_recipe(monkeypatch, *argv):
    import runpy

    monkeypatch.setattr(sys, "argv", ["build_engine.py", *map(str, argv)])
    try:
        runpy.run_path(str(ROOT / "export" / "build_engine.py"), run_name="__main__")
    except SystemExit as e:
        return e.code
    return 0


@pytest.mark.parametrize("version,kind,precision,flags,network_flags", [
    ("10.3.0.30", "fp32", "fp16", ["FP16"], 0), ("10.3.0.30", "int8", "auto", ["INT8"], 0),
    ("11.0.0.1", "fp16", "auto", [], 2)])
def test_build_engine_py_recipe(fake, monkeypatch, tmp_path, capsys, version, kind, precision, flags, network_flags):
    trt = fake(version)
    b = make_bundle(tmp_path, kind)
    out = tmp_path / "m.engine"
    assert run_recipe(monkeypatch, b, "-o", out, "--precision", precision, "--batch", "1,2,2",
                      "--timing-cache", tmp_path / "t.cache") == 0, capsys.readouterr().err
    rec = trt._state["builds"][-1]
    assert rec["flags"] == flags and rec["network_flags"] == network_flags
    assert rec["profiles"] == [{"pixel_values": ((1, 3, H, W), (2, 3, H, W), (2, 3, H, W))}]
    side = json.loads(rtt.sidecar_path(out).read_text())
    assert side["source"]["onnx_precision"] == kind and (tmp_path / "t.cache").read_bytes() == b"+"
    x = np.random.default_rng(9).standard_normal((2, 3, H, W)).astype(np.float32)
    with rtt.TensorRTRunner(out) as r:  # the engine loads, and its sidecar's sha256 matches
        np.testing.assert_array_equal(r.infer(x)["logits"], ort_run(b / "model.onnx", x))


def test_build_engine_py_recipe_refusals(fake, monkeypatch, bundle, tmp_path, capsys):
    fake("11.0.0.1")
    assert run_recipe(monkeypatch, bundle, "-o", tmp_path / "m.engine", "--precision", "fp16") == 2
    assert "strongly typed" in capsys.readouterr().err
    fake("10.3.0.30")
    assert run_recipe(monkeypatch, bundle, "-o", tmp_path / "m.engine", "--precision", "int8") == 2
    assert "INT8-QDQ" in capsys.readouterr().err
    assert run_recipe(monkeypatch, bundle, "-o", tmp_path / "m.bin") == 2


# --------------------------------------------------------------------------------------------
# 3. real TensorRT (skips here: TensorRT cannot be installed on this CPU machine)


@pytest.fixture
def real_trt():
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError) as exc:
        pytest.skip(f"TensorRT is not importable here ({type(exc).__name__}); run on a GPU/Jetson with "
                    "pip install edgeseg[tensorrt]")
    try:
        rtt.open_cuda(0)
    except EdgesegError as exc:
        pytest.skip(f"no CUDA memory library or device: {exc}")
    return tensorrt


@pytest.mark.tensorrt
@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_real_engine_matches_onnxruntime(real_trt, tmp_path, kind):
    b = make_bundle(tmp_path, kind)
    cache = tmp_path / "timing.cache"
    eng = xtrt.build_engine(b, tmp_path / "m.engine", batch=(1, 2, 4), timing_cache=cache)
    assert cache.is_file() and cache.stat().st_size > 0
    side = json.loads(rtt.sidecar_path(eng).read_text())
    assert side["tensorrt"]["version"] == ".".join(map(str, rtt.tensorrt_version()))
    assert side["precision"] in (kind, "int8+fp16")
    x = np.random.default_rng(5).standard_normal((3, 3, H, W)).astype(np.float32)
    with rtt.TensorRTRunner(eng) as r:
        got = r.infer(x)["logits"]
        big = r.infer(np.concatenate([x, x, x]))["logits"]  # 9 > max batch 4: split
    want = ort_run(b / "model.onnx", x)
    tol = 2e-2 if kind == "fp32" else 0.1  # TF32 / INT8 kernels
    np.testing.assert_allclose(got, want, atol=tol, rtol=tol)
    np.testing.assert_allclose(big[3:6], got, atol=1e-5)


@pytest.mark.tensorrt
def test_real_engine_fp16_request_and_segmenter(real_trt, tmp_path):
    from edgeseg.runtime.segmenter import Segmenter

    b = make_bundle(tmp_path, "fp32")
    major = rtt.tensorrt_version()[0]
    if major >= 11:
        with pytest.raises(ConfigError, match="strongly typed"):
            xtrt.build_engine(b, tmp_path / "m.engine", precision="fp16")
        eng = xtrt.build_engine(b, tmp_path / "m.engine")
    else:
        eng = xtrt.build_engine(b, tmp_path / "m.engine", precision="fp16")
    rng = np.random.default_rng(6)
    images = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(2)]
    a, ref = Segmenter(eng), Segmenter(b)
    agree = np.mean([np.mean(ma == mb) for ma, mb in zip(a.predict_batch(images), ref.predict_batch(images))])
    assert agree > 0.97
    a.close()
    ref.close()
