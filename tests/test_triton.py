"""`edgeseg export --format triton`: a Triton model repository whose config.pbtxt parses as
tritonclient's ModelConfig and matches the bundle's graph; the pre-processing written down.
Triton itself does not run here."""

import hashlib
import json

import numpy as np
import pytest
from conftest import one_line_error, run_cli

pytest.importorskip("tritonclient.grpc")


def parse(path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_bundle_to_onnxruntime_repository(tiny_bundle, tmp_path):
    from tritonclient.grpc import model_config_pb2

    from edgeseg.runtime import Segmenter
    from edgeseg.runtime.bundle import read_bundle

    r = run_cli("export", tiny_bundle, "-o", tmp_path / "repo", "--format", "triton")
    assert r.returncode == 0, r.stderr
    name = json.loads(r.stdout)["models"][0]
    d = tmp_path / "repo" / name
    cfg = parse(d / "config.pbtxt")
    seg = Segmenter(tiny_bundle)
    pp = seg.preprocess_spec
    assert cfg.name == name and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 8
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_CPU
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    (inp,) = cfg.input
    assert list(inp.dims) == [3, pp.height, pp.width] and inp.data_type == model_config_pb2.TYPE_FP32
    outs = seg.infer(np.zeros((2, 3, pp.height, pp.width), np.float32))
    assert {o.name: list(o.dims) for o in cfg.output} == {k: list(v.shape[1:]) for k, v in outs.items()}
    assert (d / "1" / "model.onnx").read_bytes() == (tiny_bundle / read_bundle(tiny_bundle).manifest.model).read_bytes()
    prep = json.loads((d / "preprocessing.json").read_text())
    assert prep["preprocess"] == pp.to_dict() and prep["classes"] == seg.classes and prep["input"] == inp.name
    assert "has **not** run" in (d / "README.md").read_text()


def test_engine_to_tensorrt_plan_repository(tiny_bundle, tmp_path):
    """A stand-in engine (TensorRT cannot build one here) with its sidecar: the plan model's config."""
    from edgeseg.export.triton import export_triton
    from edgeseg.runtime.bundle import read_bundle

    m = read_bundle(tiny_bundle).manifest.to_dict()
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not a real plan")
    side = {"engine_sha256": hashlib.sha256(b"not a real plan").hexdigest(), "preprocess": m["preprocess"],
            "classes": m["classes"], "outputs": m["outputs"], "profile": {"input": "pixel_values", "min": [1, 3, 64, 64],
                                                                          "opt": [2, 3, 64, 64], "max": [4, 3, 64, 64]}}
    (tmp_path / "model.engine.json").write_text(json.dumps(side))
    export_triton(engine, tmp_path / "repo")
    cfg = parse(tmp_path / "repo" / "model" / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 4  # capped by the engine's profile
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
    assert (tmp_path / "repo" / "model" / "1" / "model.plan").read_bytes() == b"not a real plan"
    engine.write_bytes(b"changed")
    with pytest.raises(Exception, match="sha256"):
        export_triton(engine, tmp_path / "repo2")


def test_config_that_does_not_parse_is_refused():
    from edgeseg.errors import ConfigError
    from edgeseg.export.triton import validate_config

    with pytest.raises(ConfigError, match="does not parse"):
        validate_config('name: "x"\nmax_batch_size: "eight"\n')


def test_triton_cli_refusals(tiny_bundle, tmp_path):
    one_line_error(run_cli("export", tiny_bundle, "-o", tmp_path / "r", "--format", "triton", "--fp16"), "--fp16")
    (tmp_path / "plain").mkdir()
    one_line_error(run_cli("export", tmp_path / "plain", "-o", tmp_path / "r2", "--format", "triton"), "neither a bundle")
    assert not (tmp_path / "r").exists()
