"""The INT8 target table, entry by entry: each target writes the Q/DQ form it promises, and every
place that checks a target name reads the table."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from typer.testing import CliRunner

from edgeseg.data.calibration import load_calibration
from edgeseg.errors import ConfigError
from edgeseg.export.onnx import export_onnx, get_metadata
from edgeseg.export.qdq_rules import tensorrt_qdq_problems
from edgeseg.model.variants import build_model
from edgeseg.quantize import TARGETS, get_target, quantize, target_names
from edgeseg.runtime.preprocess import Preprocess

SIZE = 64
PP = Preprocess(SIZE, SIZE)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    meta = {"preprocess": PP.to_dict(), "classes": ["background", "lesion"], "precision": "fp32"}
    return export_onnx(build_model("tiny").eval(), tmp_path_factory.mktemp("t") / "tiny.onnx", SIZE, SIZE, metadata=meta)


@pytest.fixture(scope="module")
def calib(embedded):
    return load_calibration(embedded, PP, count=8, split="calibration")


@pytest.fixture(scope="module")
def made(fp32, calib, tmp_path_factory):
    """target name -> its INT8 ONNX, written by the one entry point."""
    d = tmp_path_factory.mktemp("q")
    return {name: onnx.load(str(quantize(fp32, d / f"{name}.onnx", name,
                                         calib=None if t.weight_only else calib,
                                         method=None if t.weight_only else "minmax")))
            for name, t in TARGETS.items()}


def _qdq(m):
    inits = {t.name: t for t in m.graph.initializer}
    nodes = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    return inits, nodes


def _is_weight(n, inits, producer) -> bool:
    x = n.input[0]
    p = producer.get(x)
    return x in inits or (p is not None and p.op_type == "QuantizeLinear" and p.input[0] in inits)


def test_table_names_and_lookup():
    assert target_names() == tuple(TARGETS) == ("cpu", "tensorrt", "cpu-weights")
    for name, t in TARGETS.items():
        assert t.name == name and t.description and get_target(f" {name.upper()} ") is t
    with pytest.raises(ConfigError) as e:
        get_target("gpu")
    assert all(n in str(e.value) for n in TARGETS)
    with pytest.raises(TypeError):
        TARGETS["new"] = TARGETS["cpu"]  # one table, not edited at run time


@pytest.mark.parametrize("name", list(TARGETS))
def test_each_target_writes_the_form_it_promises(made, name):
    t = TARGETS[name]
    m = made[name]
    inits, nodes = _qdq(m)
    producer = {o: n for n in m.graph.node for o in n.output}
    assert nodes, name
    problems = tensorrt_qdq_problems(m)
    if t.tensorrt_qdq:  # a target that promises TensorRT Q/DQ passes TensorRT's validator
        assert problems == [], problems[:3]
    if t.activation_type == "QUInt8":  # unsigned activations are what TensorRT refuses
        assert problems and all("UINT8" in p or "INT32" in p for p in problems)
    biases = [n for n in nodes if len(n.input) > 2 and inits[n.input[2]].data_type == TensorProto.INT32]
    assert bool(biases) == t.quantize_bias, name  # INT32 biases only where the recipe quantizes them
    weights = [n for n in nodes if _is_weight(n, inits, producer) and n not in biases]
    acts = [n for n in nodes if not _is_weight(n, inits, producer)]
    assert weights
    if t.weight_only:  # int8 weights behind DequantizeLinear; no activation is quantized
        assert not acts and all(n.op_type == "DequantizeLinear" for n in nodes)
        assert all(inits[n.input[0]].data_type == TensorProto.INT8 for n in nodes)
    else:
        assert acts
        want = {"QUInt8": TensorProto.UINT8, "QInt8": TensorProto.INT8}[t.activation_type]
        for n in acts:
            zp = inits[n.input[2]]
            assert zp.data_type == want, n.name
            if t.activation_symmetric:
                assert not np.any(numpy_helper.to_array(zp)), n.name
    for n in weights:
        zp = inits[n.input[2]]
        assert zp.data_type == TensorProto.INT8
        if t.weight_symmetric:
            assert not np.any(numpy_helper.to_array(zp)), n.name
    assert any(numpy_helper.to_array(inits[n.input[1]]).size > 1 for n in weights) == t.per_channel
    stored = [numpy_helper.to_array(inits[n.input[0]]) for n in weights if inits.get(n.input[0]) is not None
              and inits[n.input[0]].data_type == TensorProto.INT8]
    if t.reduce_range:
        assert stored and max(int(np.abs(a).max()) for a in stored) <= 64
    meta = get_metadata(m)
    assert meta["precision"] == "int8" and meta["quantization"]["recipe"] == name
    assert meta["quantization"].get("onnxruntime_session_config", {}) == dict(t.session_config)
    assert meta["quantization"]["activations"] == (t.activation_type or "float")


def test_cli_help_lists_every_target():
    from edgeseg.cli import app

    for cmd in ("quantize", "compress"):
        out = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "200"}).output
        assert all(n in out for n in TARGETS), (cmd, out)
    from edgeseg.quantize import CALIBRATION_METHODS

    out = CliRunner().invoke(app, ["quantize", "--help"], env={"COLUMNS": "200"}).output
    assert all(n in out for n in CALIBRATION_METHODS) and "Example: edgeseg quantize" in out
