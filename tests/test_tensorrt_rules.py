"""TensorRT build rules (edgeseg/export/tensorrt/rules.py), the sidecar format and the ONNX
inspection: pure logic, no TensorRT needed. The table is also what export/build_engine.py and
export/jetson_build.sh load; tests/test_tensorrt_recipes.py runs those against it."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from trt_fakes import CLASSES, ROOT, H, W, bundle, drift_stats, make_bundle, tiny_onnx  # noqa: F401

import edgeseg.runtime.runners.tensorrt as rtt
from edgeseg.errors import BundleError, ConfigError, DependencyError
from edgeseg.export import tensorrt as xtrt
from edgeseg.export.tensorrt import rules, sidecar
from edgeseg.export.tensorrt.build import manifest_dict
from edgeseg.runtime.bundle import read_bundle
from edgeseg.runtime.preprocess import Preprocess

@pytest.mark.parametrize("text,want", [("10.3.0.30", (10, 3, 0)), ("11.0", (11, 0, 0)), ("11.4.1", (11, 4, 1)),
                                       ("10.13.2.6", (10, 13, 2)), ("10.0.1b", (10, 0, 1)), ("12", (12, 0, 0))])
@pytest.mark.parametrize("parse", [rtt.parse_version, rules.parse_version], ids=["runtime", "rules"])
def test_parse_version(parse, text, want):
    assert parse(text) == want


@pytest.mark.parametrize("text", ["", "abc", "v10"])
@pytest.mark.parametrize("parse", [rtt.parse_version, rules.parse_version], ids=["runtime", "rules"])
def test_parse_version_rejects_garbage(parse, text):
    with pytest.raises(ValueError):
        parse(text)


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
    side = xtrt.sidecar_content(manifest_dict(b), b.path, plan, prof, "pixel_values", "ab" * 32, gpu={"name": "Orin"},
                                built_at=0.0, engine_name="m.engine")
    json.dumps(side)  # plain JSON
    written = json.loads((b.path / "edgeseg.json").read_text())  # what the sidecar copies from
    assert manifest_dict(b) == written
    assert side["preprocess"] == written["preprocess"] and Preprocess.from_dict(side["preprocess"]).height == H
    assert side["classes"] == CLASSES and side["outputs"] == [{"name": "logits", "kind": "logits"}]
    assert side["colors"] == [[0, 0, 0], [255, 0, 0]]
    assert side["precision"] == "int8" and side["engine_sha256"] == "ab" * 32 and side["engine"] == "m.engine"
    assert side["tensorrt"] == {"version": "10.3.0", "strongly_typed": False, "network_flags": [],
                                "builder_flags": ["INT8"]}
    assert side["gpu"] == {"name": "Orin"} and side["dla_core"] is None
    assert side["profile"] == {"input": "pixel_values", "min": [1, 3, H, W], "opt": [2, 3, H, W], "max": [4, 3, H, W]}
    src = side["source"]
    assert Path(src["bundle"]) == b.path.resolve() and src["model"] == "model.onnx"
    assert src["model_sha256"] == written["files"]["model.onnx"] and src["onnx_precision"] == "int8"
    assert src["manifest_sha256"] == written["manifest_sha256"]
    assert side["built_at"] == "1970-01-01T00:00:00Z"


def test_sidecar_without_colors_has_none(tmp_path):
    b = read_bundle(make_bundle(tmp_path, colors=False))
    side = xtrt.sidecar_content(manifest_dict(b), b.path, xtrt.plan_build((11, 0, 0), "auto", "fp32"),
                                xtrt.profile_shapes((None, 3, H, W), H, W), "pixel_values", "0" * 64)
    assert "colors" not in side and side["tensorrt"]["strongly_typed"] is True




def test_default_engine_path():
    assert xtrt.default_engine_path("runs/b0_int8") == Path("runs/b0_int8.engine")


@pytest.mark.parametrize("name,ok", [("m.engine", True), ("m.plan", True), ("m.trt", False), ("m.engine.json", False)])
def test_engine_names(name, ok):
    if ok:
        rules.check_engine_name(name)
    else:
        with pytest.raises(ConfigError, match=".engine or .plan"):
            rules.check_engine_name(name)


@pytest.mark.parametrize("has_qdq,declared,want", [(True, "fp32", "int8"), (True, None, "int8"),
                                                   (False, "fp16", "fp16"), (False, "float16", "fp16"),
                                                   (False, "fp32", "fp32"),
                                                   (False, None, "fp32"), (False, "int8", "fp32")])
def test_onnx_precision_without_onnx(has_qdq, declared, want):
    """The scripts' guess (no onnx package): Q/DQ nodes decide INT8, the manifest tells FP16."""
    assert rules.onnx_precision_without_onnx(has_qdq, declared) == want


@pytest.mark.parametrize("version,req,model,dla,want", [
    ((10, 3, 0), "fp16", "fp32", None, ["--fp16"]),
    ((10, 3, 0), "auto", "int8", None, ["--int8"]),
    ((10, 3, 0), "fp16", "int8", None, ["--int8", "--fp16"]),
    ((10, 3, 0), "auto", "fp32", None, []),
    ((10, 3, 0), "auto", "int8", 0, ["--int8", "--allowGPUFallback", "--useDLACore=0"]),
    ((11, 0, 0), "auto", "fp16", None, ["--stronglyTyped"]),
    ((11, 4, 1), "auto", "int8", 1, ["--stronglyTyped", "--allowGPUFallback", "--useDLACore=1"])])
def test_plan_as_trtexec_options(version, req, model, dla, want):
    assert rules.plan_build(version, req, model, dla_core=dla).trtexec_args() == want


def test_every_plan_flag_has_a_trtexec_option():
    """Every flag plan_build can emit, over the whole decision table, maps to a trtexec option."""
    seen = set()
    for version in [(10, 3, 0), (10, 8, 0), (11, 0, 0), (11, 4, 1)]:
        for req in rules.PRECISIONS:
            for model in rules.PRECISIONS[1:]:
                for dla in (None, 0):
                    try:
                        plan = rules.plan_build(version, req, model, dla_core=dla)
                    except ConfigError:
                        continue
                    seen.update(plan.network_flags + plan.builder_flags)
                    assert len(plan.trtexec_args()) == len(plan.network_flags + plan.builder_flags) + (dla is not None)
    assert seen == set(rules.TRTEXEC_FLAGS)


def test_sidecar_carries_the_drift_statistics(tmp_path):
    stats = drift_stats()
    b = read_bundle(make_bundle(tmp_path, input_stats=stats))
    side = xtrt.sidecar_content(manifest_dict(b), b.path, xtrt.plan_build((10, 3, 0), "auto", "fp32"),
                                xtrt.profile_shapes((None, 3, H, W), H, W), "pixel_values", "0" * 64)
    assert side["input_stats"] == stats and json.loads(json.dumps(side))["input_stats"] == stats
    assert set(sidecar.FIELDS) <= set(side) and side["format"] == sidecar.SIDECAR_FORMAT
    assert side["sidecar_version"] == sidecar.SIDECAR_VERSION


def test_the_runtime_reads_sidecars_where_the_builders_write_them():
    e = Path("x/m.plan")
    assert rtt.sidecar_path(e) == e.with_name(sidecar.sidecar_name(e.name))


# the rules are loadable without edgeseg (export/ loads them by path) ------------------------

STDLIB = set(getattr(sys, "stdlib_module_names", ())) or {"__future__", "re", "dataclasses", "typing", "time",
                                                           "pathlib"}


@pytest.mark.parametrize("name", ["rules", "sidecar"])
def test_rule_modules_import_only_the_standard_library(name):
    tree = ast.parse((ROOT / "edgeseg" / "export" / "tensorrt" / f"{name}.py").read_text())
    guarded = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try)
               if any(isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in t.handlers)
               for n in t.body}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for mod in mods:
                top = mod.split(".")[0]
                assert top in STDLIB or (top == "edgeseg" and id(node) in guarded), (name, mod)


def test_rules_load_by_path_without_edgeseg(monkeypatch):
    monkeypatch.setitem(sys.modules, "edgeseg", None)  # `import edgeseg...` now raises ImportError
    monkeypatch.setitem(sys.modules, "edgeseg.errors", None)
    spec = importlib.util.spec_from_file_location("bare_rules", ROOT / "edgeseg" / "export" / "tensorrt" / "rules.py")
    bare = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bare_rules", bare)
    spec.loader.exec_module(bare)
    assert bare.ConfigError is not ConfigError and issubclass(bare.ConfigError, ValueError)
    with pytest.raises(bare.REFUSALS, match="strongly typed"):
        bare.plan_build((11, 0, 0), "fp16", "fp32")
    for args in [((10, 3, 0), "fp16", "fp32"), ((11, 4, 1), "auto", "int8", 0)]:
        assert vars(bare.plan_build(*args)) == vars(rules.plan_build(*args))
