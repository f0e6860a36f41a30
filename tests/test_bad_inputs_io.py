"""Bad-input catalogue, class *one line, never a traceback*: output locations, ONNX graphs that
differ from their manifest, and arrays of the wrong kind given to the runtime API.

- Output paths that are under a file, a folder where a file is expected, read-only (simulated:
  the tests run as root, which ignores permission bits, so ``os.access`` is patched) or on a
  full disk (simulated: the writer raises ENOSPC) are refused with one line before any work, or
  fail with one line leaving nothing behind; an output that is one of the inputs is refused.
- A bundle whose graph has other inputs, outputs or dtypes than its manifest says is refused
  when it is opened (``BundleError``), not with a KeyError at the first prediction.
- Empty batches, matrices, mixed lists, object arrays, 5-D arrays, memoryviews and None give an
  ``InputError``; non-contiguous and negative-stride views are legitimate and work.
"""

from __future__ import annotations

import errno
import json
import shutil

import numpy as np
import pytest

from badinput import Unchanged, cli, labelled, refused, rehash, rgb, worked
from conftest import EMBEDDED, write_img
from edgeseg.runtime.errors import BundleError, InputError

pytest_plugins = ["badinput"]  # the shared fixtures: models, ckpt, bundle, out, seg


# =========================================================================== output locations
def _commands(models, tmp_path, target):
    """Every command that writes, with its output at TARGET."""
    ckpt, bundle = models
    data = labelled(tmp_path / "d")
    return {
        "evaluate --json": ["evaluate", bundle, data, "--json", target, "-q"],
        "evaluate --csv": ["evaluate", bundle, data, "--csv", target, "-q"],
        "bench --json": ["bench", bundle, "--data", data, "--runs", 2, "--warmup", 0, "--json", target, "-q"],
        "bench --out": ["bench", bundle, "--data", data, "--runs", 2, "--warmup", 0, "--out", target, "-q"],
        "export -o": ["export", ckpt, "-o", target, "--data", EMBEDDED, "--split", "val"],
        "predict -o": ["predict", bundle, data / "images", "-o", target, "-q"],
        "train -o": ["train", data, "-o", target, "--variant", "tiny", "--size", 64, "--epochs", 1, "-q"],
        "quantize -o": ["quantize", bundle, "-o", target, "--target", "cpu-weights"],
        "compress -o": ["compress", ckpt, "-o", target, "--calib", EMBEDDED, "--val", EMBEDDED, "--val-split", "val",
                        "--distill-epochs", 0, "--no-int8", "-q"],
    }


WRITERS = ["evaluate --json", "evaluate --csv", "bench --json", "bench --out", "export -o", "predict -o", "train -o",
           "quantize -o", "compress -o"]


@pytest.mark.parametrize("which", WRITERS)
def test_output_under_a_file(models, tmp_path, which):
    (tmp_path / "w").mkdir()
    (tmp_path / "w/afile").write_text("not a folder")
    with Unchanged(tmp_path / "w"):
        refused(cli(*_commands(models, tmp_path, tmp_path / "w/afile/sub/x.json")[which]), "afile", "is a file")


@pytest.mark.parametrize("which", WRITERS)
def test_output_not_writable(models, tmp_path, monkeypatch, which):
    """A read-only location (os.access says so: root ignores permission bits) is refused first."""
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).startswith(str(ro)) else real(p, mode,
                                                                                                           **kw))
    with Unchanged(ro):
        refused(cli(*_commands(models, tmp_path, ro / "x.json")[which]), "not writable")


@pytest.mark.parametrize("which", ["evaluate --json", "evaluate --csv", "bench --json"])
def test_file_output_is_a_folder(models, tmp_path, which):
    (tmp_path / "res.json").mkdir()
    (tmp_path / "res.json/keep.txt").write_text("mine")
    with Unchanged(tmp_path / "res.json"):
        refused(cli(*_commands(models, tmp_path, tmp_path / "res.json")[which]), "is a folder")


@pytest.mark.parametrize("which", ["evaluate --json", "evaluate --csv", "bench --json"])
def test_file_output_is_an_input(models, tmp_path, which):
    """--json onto a ground-truth mask (or anywhere inside the data) never overwrites it."""
    data = labelled(tmp_path / "d")  # the same folder _commands uses
    with Unchanged(data):
        refused(cli(*_commands(models, tmp_path, data / "masks/s0.png")[which]), "input")
        refused(cli(*_commands(models, tmp_path, data / "summary.json")[which]), "input")


def test_evaluate_json_and_csv_same_file(bundle, tmp_path):
    with Unchanged(tmp_path / "o"):
        refused(cli("evaluate", bundle, EMBEDDED, "--split", "val", "--json", tmp_path / "o/r", "--csv",
                    tmp_path / "o/r"), "same file")


def test_bench_json_onto_its_baseline(bundle, tmp_path):
    worked(cli("bench", bundle, "--data", EMBEDDED, "--split", "val", "--runs", 2, "--warmup", 0, "--json",
               tmp_path / "base.json", "-q"))
    before = (tmp_path / "base.json").read_bytes()
    refused(cli("bench", bundle, "--data", EMBEDDED, "--split", "val", "--runs", 2, "--warmup", 0, "--baseline",
                tmp_path / "base.json", "--json", tmp_path / "base.json", "-q"), "input")
    assert (tmp_path / "base.json").read_bytes() == before


def _disk_full(monkeypatch):
    from edgeseg.runtime import files

    def full(path, data):
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_fsync_write", full)


@pytest.mark.parametrize("flag", ["--json", "--csv"])
def test_disk_full_evaluate(bundle, tmp_path, monkeypatch, flag):
    _disk_full(monkeypatch)
    with Unchanged(tmp_path / "o"):
        refused(cli("evaluate", bundle, EMBEDDED, "--split", "val", flag, tmp_path / "o/r.out", "-q"),
                "No space left", "r.out")


def test_disk_full_keeps_the_previous_file_bench(bundle, tmp_path, monkeypatch):
    (tmp_path / "o").mkdir()
    (tmp_path / "o/b.json").write_text('{"old": true}')
    _disk_full(monkeypatch)
    with Unchanged(tmp_path / "o"):
        refused(cli("bench", bundle, "--data", EMBEDDED, "--split", "val", "--runs", 2, "--warmup", 0, "--json",
                    tmp_path / "o/b.json", "--overwrite", "-q"), "No space left")


@pytest.mark.slow
def test_disk_full_export_leaves_nothing(ckpt, tmp_path, monkeypatch):
    from edgeseg.runtime import bundle as B

    def full(src, dst, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(B.shutil, "copyfile", full)
    with Unchanged(tmp_path / "o"):
        refused(cli("export", ckpt, "-o", tmp_path / "o/b", "--data", EMBEDDED, "--split", "val"), "No space left")


def test_disk_full_train_leaves_nothing(tmp_path, monkeypatch):
    d = labelled(tmp_path / "d")
    _disk_full(monkeypatch)
    with Unchanged(tmp_path / "o"):
        refused(cli("train", d, "-o", tmp_path / "o/r", "--variant", "tiny", "--size", 64, "--epochs", 1, "-q"),
                "No space left")


def test_atomic_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    from edgeseg.runtime import files

    _disk_full(monkeypatch)
    with pytest.raises(files.WriteError, match="No space left") as e:
        files.atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


# =========================================================================== ONNX graph vs manifest
def _graph(path, inputs, nodes, outputs, opset=17):
    """Write a small ONNX model: inputs/outputs as (name, elem type, shape)."""
    import onnx
    from onnx import TensorProto, helper

    def vi(name, t, shape):
        return helper.make_tensor_value_info(name, getattr(TensorProto, t), shape)

    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 3, 1, 1], np.ones(6, np.float32).tolist())
    g = helper.make_graph(nodes, "g", [vi(*i) for i in inputs], [vi(*o) for o in outputs], initializer=[w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def _head(src="x"):
    """x (N,3,64,64) float -> logits (N,2,16,16): a pool and a 1x1 convolution."""
    from onnx import helper

    return [helper.make_node("AveragePool", [src], ["p"], kernel_shape=[4, 4], strides=[4, 4]),
            helper.make_node("Conv", ["p", "w"], ["logits"])]


def _swap_model(bundle, build):
    build(bundle / "model.onnx")
    return rehash(bundle)


N4 = ["N", 3, 64, 64]
LOGITS = ("logits", "FLOAT", ["N", 2, 16, 16])


def _good(path):
    _graph(path, [("x", "FLOAT", N4)], _head(), [LOGITS])


def _two_inputs(path):
    from onnx import helper

    _graph(path, [("x", "FLOAT", N4), ("y", "FLOAT", N4)],
           [helper.make_node("Add", ["x", "y"], ["s"]), *_head("s")], [LOGITS])


def _input_3d(path):
    from onnx import helper

    axes = helper.make_tensor("axes", 7, [1], [0])
    _graph(path, [("x", "FLOAT", [3, 64, 64])],
           [helper.make_node("Constant", [], ["axes"], value=axes), helper.make_node("Unsqueeze", ["x", "axes"], ["x4"]),
            *_head("x4")], [("logits", "FLOAT", [1, 2, 16, 16])])


def _input_uint8(path):
    from onnx import helper

    _graph(path, [("x", "UINT8", N4)], [helper.make_node("Cast", ["x"], ["xf"], to=1), *_head("xf")], [LOGITS])


def _input_one_channel(path):
    from onnx import helper

    _graph(path, [("x", "FLOAT", ["N", 1, 64, 64])],
           [helper.make_node("Concat", ["x", "x", "x"], ["x3"], axis=1), *_head("x3")], [LOGITS])


def _input_other_size(path):
    from onnx import helper

    _graph(path, [("x", "FLOAT", ["N", 3, 32, 32])], [helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[2, 2],
                                                                         strides=[2, 2]),
                                                      helper.make_node("Conv", ["p", "w"], ["logits"])], [LOGITS])


def _logits_int(path):
    from onnx import helper

    nodes = _head()
    nodes[-1] = helper.make_node("Conv", ["p", "w"], ["lf"])
    _graph(path, [("x", "FLOAT", N4)], [*nodes, helper.make_node("Cast", ["lf"], ["logits"], to=7)],
           [("logits", "INT64", ["N", 2, 16, 16])])


def _logits_rank3(path):
    from onnx import helper

    nodes = _head()
    nodes[-1] = helper.make_node("Conv", ["p", "w"], ["lf"])
    _graph(path, [("x", "FLOAT", N4)], [*nodes, helper.make_node("ReduceMax", ["lf"], ["logits"], axes=[1],
                                                                 keepdims=0)],
           [("logits", "FLOAT", ["N", 16, 16])], opset=17)


@pytest.mark.parametrize("build, words", [
    (_two_inputs, ("2 inputs",)),
    (_input_3d, ("input", "4-D")),
    (_input_uint8, ("input", "uint8")),
    (_input_one_channel, ("input", "3 channels")),
    (_input_other_size, ("32x32", "64x64")),
    (_logits_int, ("logits", "int64")),
    (_logits_rank3, ("logits", "4-D")),
], ids=["two-inputs", "input-3d", "input-uint8", "input-1-channel", "input-size", "logits-int64", "logits-rank3"])
def test_graph_differs_from_manifest_refused_at_load(bundle, build, words):
    from edgeseg.runtime import Segmenter

    _swap_model(bundle, build)
    with pytest.raises(BundleError) as e:
        Segmenter(bundle)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w.lower() in msg.lower(), msg


def test_graph_matching_its_manifest_works(bundle):
    """The control: the same small graph with the right input and output loads and predicts."""
    from edgeseg.runtime import Segmenter

    _swap_model(bundle, _good)
    assert Segmenter(bundle).predict(rgb()).shape == (40, 56)


@pytest.mark.parametrize("outputs, words", [
    ([{"name": "scores", "kind": "logits"}], ("scores", "logits")),
    ([{"name": "logits", "kind": "logits"}, {"name": "mask", "kind": "mask"}], ("mask",)),
    ([{"name": "logits", "kind": "mask"}], ("logits", "mask")),  # a float 4-D tensor is no mask
])
def test_manifest_names_outputs_the_graph_lacks(bundle, outputs, words):
    from edgeseg.runtime import Segmenter

    rehash(bundle, lambda m: m.update(outputs=outputs))
    with pytest.raises(BundleError) as e:
        Segmenter(bundle)
    for w in words:
        assert w in str(e.value)


def test_graph_mismatch_cli_predict(bundle, tmp_path, out):
    _swap_model(bundle, _two_inputs)
    write_img(tmp_path / "in/a.png", rgb())
    refused(cli("predict", bundle, tmp_path / "in", "-o", out / "p"), "2 inputs")


def test_bare_onnx_with_wrong_outputs_evaluate(models, tmp_path, out):
    """A bare ONNX file with edgeseg metadata naming outputs it lacks: one line at load."""
    import onnx

    m = onnx.load(str(models[1] / "model.onnx"))
    for p in m.metadata_props:
        if p.key == "edgeseg":
            meta = json.loads(p.value)
            meta["outputs"] = [{"name": "nope", "kind": "logits"}]
            p.value = json.dumps(meta)
    onnx.save(m, str(tmp_path / "m.onnx"))
    refused(cli("evaluate", tmp_path / "m.onnx", EMBEDDED, "--split", "val", "--json", out / "s.json"), "nope")


# =========================================================================== runtime arrays
@pytest.mark.parametrize("value, word", [
    ([], "non-empty"),
    (np.zeros((0, 40, 56, 3), np.uint8), "non-empty"),
    ([np.zeros((40, 56, 3), np.uint8), np.zeros((40, 56, 3), np.float32)], "image 1"),
    ([np.zeros((40, 56, 3), np.uint8), None], "image 1"),
    (np.zeros((2, 1, 40, 56, 3), np.uint8), "HxWx3"),
    (np.array([np.zeros((4, 4, 3), np.uint8), np.zeros((5, 5, 3), np.uint8)], dtype=object), "object"),
    (None, "list"),
    ("image.png", "list"),
    (memoryview(np.zeros((40, 56, 3), np.uint8)), "memoryview"),
])
def test_runtime_predict_batch_wrong_kind(seg, value, word):
    with pytest.raises(InputError, match=word):
        seg.predict_batch(value)


@pytest.mark.parametrize("value, word", [
    (np.random.default_rng(0).random((40, 56)), "uint8"),
    ("float matrix", "uint8"),  # np.matrix, built in the test (it warns when made)
    (np.zeros((40, 56, 3), object), "object"),
    (np.zeros((1, 2, 40, 56, 3), np.uint8), "HxWx3"),
    (np.zeros((1, 40, 56, 3), np.uint8), "HxWx3"),
    (memoryview(np.zeros((40, 56, 3), np.uint8)), "memoryview"),
    (None, "NoneType"),
    ([[[0, 0, 0]]], "list"),
    (np.zeros((40, 56, 3), [("r", "u1"), ("g", "u1"), ("b", "u1")]), "uint8"),
    (np.zeros((40, 56, 3), np.complex64), "uint8"),
])
@pytest.mark.parametrize("method", ["predict", "drift"])
@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_runtime_single_image_wrong_kind(seg, value, word, method):
    if isinstance(value, str) and value == "float matrix":
        value = np.matrix(np.zeros((40, 56)))
    with pytest.raises(InputError, match=word):
        getattr(seg, method)(value)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_runtime_uint8_matrix_is_a_gray_image(seg):
    """np.matrix is an ndarray subclass: a uint8 one is a gray image like any other 2-D array."""
    gray = rgb()[:, :, 0]
    assert np.array_equal(seg.predict(np.asmatrix(gray)), seg.predict(gray))


@pytest.mark.parametrize("view", [
    lambda a: a[::-1],                       # negative stride (rows)
    lambda a: a[:, ::-1],                    # negative stride (columns)
    lambda a: a[::2, ::2],                   # non-contiguous
    lambda a: np.asfortranarray(a),          # Fortran order
    lambda a: a.transpose(1, 0, 2).transpose(1, 0, 2),
    lambda a: np.lib.stride_tricks.as_strided(a, a.shape, a.strides, writeable=False),  # read-only
], ids=["flip-rows", "flip-cols", "every-other", "fortran", "transposed-back", "read-only"])
def test_runtime_views_work(seg, view):
    img = rgb(seed=3)
    v = view(img)
    expect = seg.predict(np.ascontiguousarray(v))
    assert np.array_equal(seg.predict(v), expect)
    assert np.array_equal(seg.predict_batch([v, img])[0], expect)
    assert seg.drift(v)["score"] == pytest.approx(seg.drift(np.ascontiguousarray(v))["score"])


def test_runtime_bgr_view_of_a_bgr_image(seg):
    img = rgb(seed=4)
    assert np.array_equal(seg.predict(img[:, :, ::-1], color="BGR"), seg.predict(img))


def test_runtime_nhwc_array_batch_works(seg):
    batch = np.stack([rgb(seed=i) for i in range(3)])
    masks = seg.predict_batch(batch)
    assert len(masks) == 3 and np.array_equal(masks[1], seg.predict(batch[1]))


def test_runtime_infer_wrong_kinds(seg):
    for bad, word in ((None, "NCHW"), (np.zeros((1, 3, 64, 64), object), "float"),
                      (np.zeros((0, 3, 64, 64), np.float32), "empty"), ([[0.0]], "NCHW")):
        with pytest.raises(InputError, match=word):
            seg.infer(bad)


def test_runtime_predict_bad_color_argument(seg):
    for bad in (None, "rgb ", 3):
        with pytest.raises(InputError, match="color"):
            seg.predict(rgb(), color=bad)


def test_unwritable_copy_of_bundle_still_loads(models, tmp_path):
    """Reading a bundle needs no write access to it."""
    from edgeseg.runtime import Segmenter

    b = shutil.copytree(models[1], tmp_path / "b")
    for p in b.iterdir():
        p.chmod(0o444)
    b.chmod(0o555)
    try:
        assert Segmenter(b).predict(rgb()).shape == (40, 56)
    finally:
        b.chmod(0o755)


def test_existing_result_file_needs_overwrite(bundle, tmp_path):
    """A file edgeseg would replace is never overwritten silently (it may be the user's)."""
    (tmp_path / "o").mkdir()
    (tmp_path / "o/notes.json").write_text('{"mine": true}')
    with Unchanged(tmp_path / "o"):
        refused(cli("evaluate", bundle, EMBEDDED, "--split", "val", "--json", tmp_path / "o/notes.json", "-q"),
                "already exists", "--overwrite")
    worked(cli("evaluate", bundle, EMBEDDED, "--split", "val", "--json", tmp_path / "o/notes.json", "--overwrite",
               "-q"))
