"""The one TensorRT Q/DQ validator (edgeseg/export/qdq_rules.py), rule by rule, on hand-made graphs."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.errors import ModelError
from edgeseg.export.qdq_rules import qdq_problems, tensorrt_qdq_problems
from edgeseg.quantize import check_tensorrt_qdq


def _model(zp=np.int8(0), scale=np.float32(0.05), zp_given=True, w_axis=0, w_scales=2, in_subgraph=False):
    """x -> Q -> DQ -> Conv(W behind DQ with per-channel scales) -> y."""
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.int8), "W")
    inits = [numpy_helper.from_array(np.array(scale), "s"), w,
             numpy_helper.from_array(np.full(w_scales, 0.1, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(w_scales, np.int8), "wzp")]
    qin = ["x", "s"]
    if zp_given:
        inits.append(numpy_helper.from_array(np.array(zp), "zp"))
        qin.append("zp")
    nodes = [helper.make_node("QuantizeLinear", qin, ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", *qin[1:]], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["W", "ws", "wzp"], ["Wf"], name="dqw", axis=w_axis),
             helper.make_node("Conv", ["xd", "Wf"], ["y"], name="conv")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])
    if in_subgraph:  # the same graph as the then-branch of an If
        body = helper.make_graph(nodes, "then", [], [y], initializer=inits)
        other = helper.make_graph([helper.make_node("Identity", ["x"], ["y2"])], "else", [],
                                  [helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 3, 4, 4])])
        cond = numpy_helper.from_array(np.array(True), "c")
        nodes = [helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=other)]
        inits = [cond]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], initializer=inits))


def test_clean_model_passes_and_names_are_one_function():
    assert tensorrt_qdq_problems(_model()) == []
    assert qdq_problems is tensorrt_qdq_problems and check_tensorrt_qdq is tensorrt_qdq_problems


@pytest.mark.parametrize("kw,expect", [
    (dict(zp=np.uint8(128)), "UINT8"),
    (dict(zp=np.int8(3)), "non-zero zero point"),
    (dict(zp=np.int32(0)), "keep biases float"),
    (dict(zp_given=False), "no zero point"),
    (dict(scale=np.float32(-1)), "> 0"),
    (dict(scale=np.float32(np.inf)), "> 0"),
    (dict(w_axis=1), "needs axis 0"),
    (dict(w_scales=3), "3 scales for 2 output channels"),
    (dict(zp=np.uint8(128), in_subgraph=True), "UINT8"),  # subgraphs are checked too
])
def test_each_rule(kw, expect):
    problems = tensorrt_qdq_problems(_model(**kw))
    assert problems and any(expect in p for p in problems), problems


def test_fp8_zero_point_accepted_and_paths_read(tmp_path):
    if not hasattr(TensorProto, "FLOAT8E4M3FN"):
        pytest.skip("this onnx has no FP8 types")
    m = _model()
    zp = next(t for t in m.graph.initializer if t.name == "zp")
    zp.CopyFrom(helper.make_tensor("zp", TensorProto.FLOAT8E4M3FN, [], [0.0]))
    assert tensorrt_qdq_problems(m) == []
    with pytest.raises(ModelError, match="not found"):
        tensorrt_qdq_problems(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    with pytest.raises(ModelError):
        tensorrt_qdq_problems(tmp_path / "junk.onnx")
