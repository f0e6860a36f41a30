"""Stand-ins for TensorRT and CUDA memory, and tiny bundles, shared by the test_tensorrt_* files.

The fakes follow the TensorRT 10/11 Python API as NVIDIA documents it (TensorRT cannot be
installed where edgeseg is developed): a fake engine runs the bundle's ONNX with ONNX Runtime
and moves real bytes through fake device memory, and a fake ``trtexec`` writes such engines.
They check edgeseg's orchestration, not TensorRT itself.
"""

from __future__ import annotations

import enum
import os
import itertools
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import edgeseg.runtime.runners.tensorrt as rtt  # noqa: E402
from edgeseg.export.tensorrt import build as xbuild  # noqa: E402
from edgeseg.runtime.bundle import write_bundle  # noqa: E402
from edgeseg.runtime.preprocess import Preprocess  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

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
        inits += [numpy_helper.from_array(w.astype(np.float16), "W"),
                  numpy_helper.from_array(b.astype(np.float16), "B")]
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


def drift_stats() -> dict:
    """input_stats (the drift guard's reference) from a few random calibration-like images."""
    from edgeseg.runtime.drift import image_stats

    rng = np.random.default_rng(11)
    return image_stats([rng.integers(60, 200, (40, 40, 3), dtype=np.uint8) for _ in range(6)])


def make_bundle(tmp_path: Path, kind: str = "fp32", name: str = "bundle", colors: bool = True,
                input_stats: dict | None = None, **kw) -> Path:
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
    if input_stats is not None:
        manifest["input_stats"] = input_stats
    return write_bundle(tmp_path / name, {"model.onnx": src}, manifest)


@pytest.fixture
def bundle(tmp_path):
    return make_bundle(tmp_path)


def ort_run(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    from edgeseg.runtime.runners.onnxrt import OnnxRuntimeRunner

    return OnnxRuntimeRunner(onnx_path).infer(x)["logits"]



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
    monkeypatch.setattr(xbuild, "device_info", lambda device=0: {"name": "FakeGPU", "compute_capability": "8.7"})

    def install(version="10.3.0.30", **kw):
        trt = make_fake_trt(version, **kw)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(rtt, "_LOGGER", None)
        return trt

    return install


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
        e = {**os.environ, "TRTEXEC": str(exe), "FAKE_TRTEXEC_LOG": str(log),
             "FAKE_TRT_VERSION": version, "TRT_VERSION": version, **env}
        p = subprocess.run(["bash", str(ROOT / "export" / "jetson_build.sh"), str(bundle), str(out)], env=e,
                           capture_output=True, text=True)
        args = json.loads(log.read_text()) if log.is_file() else []
        log.unlink(missing_ok=True)
        return p, args

    return run


@pytest.fixture
def engine(fake, bundle, tmp_path):
    """An engine built by edgeseg's builder with the fake TensorRT 10.3, profile batch 1..4."""
    fake()
    return xbuild.build_engine(bundle, tmp_path / "m.engine", batch=(1, 2, 4))


def run_recipe(monkeypatch, *argv):
    """Run export/build_engine.py as ``python3 export/build_engine.py ARGV`` (in this process,
    so that the fake tensorrt module is the one it imports); returns its exit code."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["build_engine.py", *map(str, argv)])
    try:
        runpy.run_path(str(ROOT / "export" / "build_engine.py"), run_name="__main__")
    except SystemExit as e:
        return e.code
    return 0
