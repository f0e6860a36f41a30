"""INT8 quantization: calibration data checks, the reader, recipes, exclusion, TensorRT rules.

Everything runs on the tiny SegFormer at 64 px with the embedded images, so it stays fast.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from conftest import write_img
from edgeseg.data import folders as D
from edgeseg.errors import ConfigError, DataError, ModelError
from edgeseg.export.onnx import export_onnx, get_metadata
from edgeseg.model.variants import build_model
from edgeseg.data.calibration import load_calibration, looks_like_noise
from edgeseg.quantize import (CALIBRATION_METHODS, TARGETS, CalibrationReader, Int8Quantizer, check_tensorrt_qdq,
                              group_of)
from edgeseg.runtime.preprocess import Preprocess

SIZE = 64
PP = Preprocess(SIZE, SIZE)
META = {"preprocess": PP.to_dict(), "classes": ["background", "lesion"], "provenance": {"note": "test"}}


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    out = tmp_path_factory.mktemp("quant") / "tiny.onnx"
    return export_onnx(build_model("tiny").eval(), out, SIZE, SIZE, metadata=META)


@pytest.fixture(scope="module")
def calib(embedded):
    return load_calibration(embedded, PP, count=16, split="calibration")


@pytest.fixture(scope="module")
def test_images(embedded):
    return load_calibration(embedded, PP, count=64, split="test", allow_few=True)[0]


@pytest.fixture(scope="module")
def quantizers(fp32, calib):
    x, info = calib
    return {r: Int8Quantizer(fp32, x, r, "minmax", calib_info=info) for r, t in TARGETS.items() if not t.weight_only}


def _sessions_agree(fp32, q, x) -> float:
    s0 = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    s1 = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
    a = s0.run(None, {"pixel_values": x})[0].argmax(1)
    b = s1.run(None, {"pixel_values": x})[0].argmax(1)
    return float((a == b).mean())


def _zero_points(model) -> list[tuple[str, TensorProto]]:
    """(Q/DQ node name, zero-point initializer) for every Q/DQ node, read directly."""
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert len(n.input) == 3 and n.input[2] in inits, f"{n.name} has no zero-point initializer"
            out.append((n.name, inits[n.input[2]]))
    return out


# ---------------------------------------------------------------- calibration data


def test_reader_yields_distinct_batches(calib):
    x, _ = calib
    for bs in (1, 3):
        r = CalibrationReader(x, batch_size=bs)
        batches = []
        while (b := r.get_next()) is not None:
            batches.append(b["pixel_values"])
        assert len(batches) == len(r) == -(-len(x) // bs)
        assert sum(len(b) for b in batches) == len(x)
        for i in range(len(batches)):
            for j in range(i + 1, len(batches)):
                assert batches[i].shape != batches[j].shape or not np.array_equal(batches[i], batches[j])
        np.testing.assert_array_equal(np.concatenate(batches), x)
        assert r.get_next() is None  # stays exhausted
        r.rewind()
        np.testing.assert_array_equal(r.get_next()["pixel_values"], batches[0])


def test_real_images_accepted_and_fingerprinted(embedded, calib):
    x, info = calib
    assert x.shape == (16, 3, SIZE, SIZE) and x.dtype == np.float32
    assert info["count"] == 16 and info["root"] == str(embedded)
    samples = D.discover(embedded, "calibration", require_masks=False)
    assert info["sha256"] == D.fingerprint(samples)["sha256"]
    for s in samples:
        assert not looks_like_noise(D.read_image(s.image))
    # a subset of 10 from 64: deterministic per seed, different across seeds
    a = load_calibration(embedded, PP, count=10, seed=0)[1]["sha256"]
    assert a == load_calibration(embedded, PP, count=10, seed=0)[1]["sha256"]
    assert a != load_calibration(embedded, PP, count=10, seed=1)[1]["sha256"]


def _folder(tmp_path, images, ext=".png"):
    for i, im in enumerate(images):
        write_img(tmp_path / "images" / f"im_{i:03d}{ext}", im[:, :, ::-1])
    return tmp_path


def _real(embedded, n):
    return [D.read_image(s.image) for s in D.discover(embedded, require_masks=False)[:n]]


def test_noise_and_constant_sets_refused(tmp_path, embedded):
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(12)]
    gauss = [np.clip(rng.normal(128, 40, (96, 128, 3)), 0, 255).astype(np.uint8) for _ in range(12)]
    flat = [np.full((96, 128, 3), 90, np.uint8) for _ in range(12)]
    assert all(looks_like_noise(im) for im in noise + gauss + flat)

    with pytest.raises(DataError, match="noise"):
        load_calibration(_folder(tmp_path / "u", noise), PP)
    with pytest.raises(DataError, match="noise"):  # JPEG-compressed noise too
        load_calibration(_folder(tmp_path / "g", gauss, ".jpg"), PP)
    with pytest.raises(DataError, match="constant"):
        load_calibration(_folder(tmp_path / "c", flat), PP)
    # more than a quarter bad: refused; a few strays among real images: accepted
    with pytest.raises(DataError, match="of 13 images"):
        load_calibration(_folder(tmp_path / "m1", _real(embedded, 9) + noise[:4]), PP)
    x, info = load_calibration(_folder(tmp_path / "m2", _real(embedded, 12) + noise[:2] + flat[:1]), PP)
    assert x.shape[0] == info["count"] == 15


def test_too_few_images(embedded):
    with pytest.raises(DataError, match="too few"):
        load_calibration(embedded, PP, count=4)
    x, info = load_calibration(embedded, PP, count=4, allow_few=True)
    assert len(x) == info["count"] == 4
    with pytest.raises(ConfigError):
        load_calibration(embedded, PP, count=0)


# ---------------------------------------------------------------- recipes and checks


def test_tensorrt_recipe_is_symmetric_int8(quantizers, tmp_path):
    out = quantizers["tensorrt"].quantize(tmp_path / "trt.onnx")
    assert check_tensorrt_qdq(out) == []
    m = onnx.load(str(out))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("QuantizeLinear") >= 1 and ops.count("DequantizeLinear") >= 1
    onnx.checker.check_model(m)  # topologically sorted (TensorRT's parser needs it), valid
    zps = _zero_points(m)
    assert zps
    for name, zp in zps:
        assert zp.data_type == TensorProto.INT8, name
        assert not np.any(numpy_helper.to_array(zp)), name


def test_check_tensorrt_qdq_finds_axis_and_scale_problems(quantizers, tmp_path):
    m = onnx.load(str(quantizers["tensorrt"].quantize(tmp_path / "trt.onnx")))
    inits = {t.name: t for t in m.graph.initializer}
    conv_w = {n.input[1] for n in m.graph.node if n.op_type == "Conv"}
    producer = {o: n for n in m.graph.node for o in n.output}
    dq = next(producer[w] for w in conv_w if producer.get(w) is not None and producer[w].op_type == "DequantizeLinear")
    for a in dq.attribute:
        if a.name == "axis":
            a.i = 1
    act_q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "pixel_values")
    scale = inits[act_q.input[1]]
    scale.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(scale), scale.name))
    problems = check_tensorrt_qdq(m)
    assert any("axis 1" in p and "needs axis 0" in p for p in problems), problems
    assert any("> 0" in p for p in problems), problems


def test_cpu_recipe_uses_uint8_activations(quantizers, tmp_path):
    out = quantizers["cpu"].quantize(tmp_path / "cpu.onnx")
    m = onnx.load(str(out))
    inits = {t.name for t in m.graph.initializer}
    act_zp = [zp for name, zp in _zero_points(m)
              if next(n for n in m.graph.node if n.name == name).input[0] not in inits]
    assert act_zp and all(zp.data_type == TensorProto.UINT8 for zp in act_zp)
    problems = check_tensorrt_qdq(out)
    assert problems and any("UINT8" in p for p in problems)
    # the logits leave the model in float: no Q/DQ in front of the graph output
    producer = {o: n for n in m.graph.node for o in n.output}
    assert producer["logits"].op_type == "Conv"
    onnx.checker.check_model(m)  # topologically sorted, valid


def test_exclude_leaves_nodes_in_float(quantizers, tmp_path):
    q = quantizers["cpu"]
    m0 = q._model
    inits = {t.name for t in m0.graph.initializer}
    weighted = {n.name: n for n in m0.graph.node if n.name in set(q.quantizable_nodes()) and n.input[1] in inits}
    conv = next(n for n, node in weighted.items() if node.op_type == "Conv")
    matmul = next(n for n, node in weighted.items() if node.op_type == "MatMul")
    excluded = [conv, matmul] + q.node_groups()["decode_head"]
    out = q.quantize(tmp_path / "excl.onnx", exclude=excluded)
    m = onnx.load(str(out))
    producer = {o: n for n in m.graph.node for o in n.output}
    nodes = {n.name: n for n in m.graph.node}

    def weight_from_dq(name):
        p = producer.get(nodes[name].input[1])
        return p is not None and p.op_type == "DequantizeLinear"

    for name in excluded:
        if name in weighted:
            assert not weight_from_dq(name), name
    kept = [n for n in weighted if n not in excluded]
    assert kept and all(weight_from_dq(n) for n in kept)
    assert get_metadata(m)["quantization"]["excluded"] == sorted(excluded)
    with pytest.raises(ConfigError, match="not in the model"):
        q.quantize(tmp_path / "bad.onnx", exclude=["no/such/node"])


def test_metadata_survives(quantizers, calib, tmp_path):
    out = quantizers["cpu"].quantize(tmp_path / "meta.onnx")
    meta = get_metadata(onnx.load(str(out)))
    for k in ("preprocess", "classes", "provenance", "outputs"):
        assert meta[k] == get_metadata(onnx.load(str(quantizers["cpu"].source)))[k]
    assert meta["precision"] == "int8"
    assert meta["quantization"]["recipe"] == "cpu"
    assert meta["quantization"]["calibration"]["method"] == "minmax"
    assert meta["quantization"]["calibration_set"]["sha256"] == calib[1]["sha256"]


def test_node_groups(quantizers):
    q = quantizers["cpu"]
    groups = q.node_groups()
    for g in ("stage0.patch_embed", "stage0.block0.attention", "stage0.block0.mlp", "stage3.block0.mlp",
              "decode_head"):
        assert groups.get(g), g
    flat = [n for names in groups.values() for n in names]
    assert sorted(flat) == sorted(q.quantizable_nodes()) and len(set(flat)) == len(flat)
    assert "other" not in groups
    assert group_of("/m/segformer/encoder/block.1/0/attention/self/query/MatMul") == "stage1.block0.attention"
    assert group_of("/m/segformer/encoder/patch_embeddings.2/proj/Conv") == "stage2.patch_embed"
    assert group_of("MatMul_17") == "other"


def test_quantize_does_not_recalibrate(quantizers, tmp_path, monkeypatch):
    import onnxruntime.quantization as oq
    import onnxruntime.quantization.calibrate as oqc

    def boom(*a, **k):
        raise AssertionError("quantize() must reuse the stored ranges")

    monkeypatch.setattr(oq, "create_calibrator", boom)
    monkeypatch.setattr(oqc, "create_calibrator", boom)
    q = quantizers["tensorrt"]
    a = q.quantize(tmp_path / "a.onnx")
    b = q.quantize(tmp_path / "b.onnx", exclude=q.quantizable_nodes()[:3])
    assert a.is_file() and b.is_file()


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(r for r, t in TARGETS.items() if not t.weight_only))
@pytest.mark.parametrize("method", sorted(CALIBRATION_METHODS))
def test_every_recipe_and_method_runs_and_agrees(fp32, calib, test_images, recipe, method, tmp_path):
    x, _ = calib
    q = Int8Quantizer(fp32, x, recipe, method, batch_size=5)  # 16 images: batches of 5, 5, 5, 1
    out = q.quantize(tmp_path / f"{recipe}_{method}.onnx")
    assert _sessions_agree(fp32, out, test_images) > 0.90
    assert (check_tensorrt_qdq(out) == []) == (recipe == "tensorrt")


def test_errors(fp32, calib, tmp_path):
    x, _ = calib
    with pytest.raises(ConfigError, match="cpu, tensorrt"):
        Int8Quantizer(fp32, x, recipe="gpu")
    with pytest.raises(ConfigError, match="minmax"):
        Int8Quantizer(fp32, x, method="mse")
    junk = tmp_path / "junk.onnx"
    junk.write_text("this is not a model\n" * 10)
    with pytest.raises(ModelError):
        Int8Quantizer(junk, x)
    with pytest.raises(ModelError):
        Int8Quantizer(tmp_path / "missing.onnx", x)
    with pytest.raises(DataError, match="height"):
        Int8Quantizer(fp32, np.zeros((8, 3, 32, 32), np.float32))
