"""The model-format table, entry by entry: each format is recognised from what the path is and
opened by its runner; anything else gets one line listing what is expected."""

import shutil

import numpy as np
import pytest

from edgeseg.errors import ModelError
from edgeseg.runners import open_model
from edgeseg.runtime import Segmenter
from edgeseg.runtime.errors import BundleError
from edgeseg.runtime.formats import ENGINE_SUFFIXES, FORMATS, detect, expected


def test_every_format_has_a_test_below():
    assert set(FORMATS) == {"bundle", "checkpoint", "onnx", "engine"}


def test_bundle(tiny_bundle):
    assert detect(tiny_bundle).name == "bundle"
    assert open_model(tiny_bundle).runner.name.startswith("onnxruntime")


def test_checkpoint(tiny_ckpt):
    assert detect(tiny_ckpt).name == "checkpoint" and FORMATS["checkpoint"].half == "toolkit"
    assert open_model(tiny_ckpt).runner.name == "torch-cpu"
    with pytest.raises(BundleError, match="not a bundle"):
        Segmenter(tiny_ckpt)  # the runtime never opens a checkpoint (it has no torch)


def test_onnx(tiny_bundle, tmp_path):
    onnx = shutil.copy(tiny_bundle / "model.onnx", tmp_path / "m.ONNX")
    assert detect(onnx).name == "onnx"  # suffixes compare case-insensitively
    a = open_model(onnx).predict(np.zeros((20, 30, 3), np.uint8))
    b = open_model(tiny_bundle).predict(np.zeros((20, 30, 3), np.uint8))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("suffix", ENGINE_SUFFIXES)
def test_engine(tmp_path, suffix):
    engine = tmp_path / f"m{suffix}"
    engine.write_bytes(b"\0")
    assert detect(engine).name == "engine" and detect(engine).runner == "tensorrt"
    with pytest.raises(BundleError, match="sidecar"):
        Segmenter(engine)  # an engine without its sidecar: pre-processing unknown, refused


def test_tensorrt_rules_agree_with_the_table():
    from edgeseg.export.tensorrt import rules

    assert tuple(rules.ENGINE_SUFFIXES) == ENGINE_SUFFIXES


def test_unknown_paths_list_what_is_expected(tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"x")
    for p in (tmp_path / "weights.pt", tmp_path / "missing.onnx", tmp_path):
        assert detect(p) is None
        with pytest.raises(ModelError, match="Hugging Face checkpoint folder") as e:
            open_model(p)
        assert "\n" not in str(e.value)
    assert "checkpoint" not in expected("runtime") and "bundle" in expected("runtime")


def test_every_runner_implements_the_interface(tiny_bundle, tiny_ckpt):
    from edgeseg.runtime.runners.base import Runner
    from edgeseg.runtime.runners.tensorrt import TensorRTRunner

    for seg in (open_model(tiny_bundle), open_model(tiny_ckpt)):
        assert isinstance(seg.runner, Runner)
        out = seg.runner.infer(np.zeros((1, 3, 64, 64), np.float32))
        assert all(isinstance(v, np.ndarray) for v in out.values())
    assert all(callable(getattr(TensorRTRunner, m)) for m in ("infer", "close"))
