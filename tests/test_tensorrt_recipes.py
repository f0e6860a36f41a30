"""The on-device recipes in export/ (build_engine.py: python3 + TensorRT; jetson_build.sh:
trtexec), run against the fakes of tests/trt_fakes.py. Both load edgeseg's rule table and
sidecar format by path (export/README.md says why); these tests check that they follow the
table entry by entry, that their sidecars are the ones edgeseg's builder writes (drift
statistics included), and that build_engine.py needs no installed edgeseg."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from trt_fakes import (CLASSES, H, W, bundle, drift_stats, fake, make_bundle, ort_run, run_recipe,  # noqa: F401
                       trtexec)

import edgeseg.runtime.runners.tensorrt as rtt
from edgeseg.export import tensorrt as xtrt
from edgeseg.export.tensorrt import rules, sidecar

@pytest.mark.slow
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


@pytest.mark.slow
def test_jetson_build_sh_int8_and_dla(trtexec, tmp_path):
    b = make_bundle(tmp_path, "int8")
    p, args = trtexec(b, tmp_path / "q.engine")
    assert p.returncode == 0, p.stderr
    assert "--int8" in args and "--fp16" not in args and not any(a.startswith("--calib") for a in args)
    p, args = trtexec(b, tmp_path / "q.engine", DLA_CORE="0", BATCH="1")
    assert p.returncode == 0, p.stderr
    assert "--useDLACore=0" in args and "--allowGPUFallback" in args
    p, _ = trtexec(b, tmp_path / "q.engine", DLA_CORE="0", BATCH="1,1,2")
    assert p.returncode == 2 and "dynamic shapes" in p.stderr


@pytest.mark.slow
def test_jetson_build_sh_trt11(trtexec, bundle, tmp_path):
    p, args = trtexec(bundle, tmp_path / "m.engine", version="11.0.0.1")
    assert p.returncode == 0, p.stderr
    assert "--stronglyTyped" in args and "--fp16" not in args and "--int8" not in args
    p, args = trtexec(bundle, tmp_path / "m.engine", version="11.0.0.1", PRECISION="fp16")
    assert p.returncode == 2 and "strongly typed" in p.stderr and args == []
    p, _ = trtexec(make_bundle(tmp_path, "fp16", name="h"), tmp_path / "h.engine", version="11.2.0",
                   DLA_CORE="0")
    assert p.returncode == 2 and "no DLA" in p.stderr


@pytest.mark.slow
def test_jetson_build_sh_detects_the_version_from_trtexec(trtexec, bundle, tmp_path):
    p, args = trtexec(bundle, tmp_path / "m.engine", TRT_VERSION="", PATH="/usr/bin:/bin")
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "m.engine.json").read_text())["tensorrt"]["version"] == "10.3.0"


@pytest.mark.slow
def test_jetson_build_sh_refuses_a_tampered_bundle(trtexec, bundle, tmp_path):
    with open(bundle / "model.onnx", "ab") as f:
        f.write(b"\0")
    p, args = trtexec(bundle, tmp_path / "m.engine")
    assert p.returncode == 2 and "sha256" in p.stderr and args == []

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



# one table: every builder decides as rules.plan_build does, and writes the same sidecar -------

# fields that say who built the engine, where and when; everything else must agree
BUILD_FACTS = ("built_with", "built_at", "gpu", "build_seconds", "workspace_mb")


def comparable(side: dict) -> dict:
    return {k: v for k, v in side.items() if k not in BUILD_FACTS and k != "engine_sha256"}


@pytest.mark.parametrize("version,kind,precision,dla,batch", [
    ("10.3.0.30", "fp32", "fp16", None, "1,2,4"), ("10.3.0.30", "int8", "fp16", None, "2"),
    ("10.3.0.30", "fp16", "auto", "0", "1"), ("11.0.0.1", "int8", "auto", None, "1,1,3"),
    ("11.4.1", "fp16", "auto", "1", "2")])
@pytest.mark.slow
def test_all_three_builders_agree(fake, trtexec, monkeypatch, tmp_path, capsys, version, kind, precision, dla, batch):
    """edgeseg's builder, build_engine.py and jetson_build.sh on the same bundle and request: the
    same trtexec/TensorRT settings (from rules.plan_build) and sidecars that differ only in build facts."""
    trt = fake(version, dla_cores=2)
    b = make_bundle(tmp_path, kind, input_stats=drift_stats())
    plan = rules.plan_build(rules.parse_version(version), precision, kind, dla_core=None if dla is None else int(dla),
                            batch=rules.parse_batch(batch))
    xtrt.build_engine(b, tmp_path / "a.engine", precision=precision, batch=rules.parse_batch(batch),
                      dla_core=None if dla is None else int(dla))
    ours_rec = trt._state["builds"][-1]
    dla_args = [] if dla is None else ["--dla-core", dla]
    assert run_recipe(monkeypatch, b, "-o", tmp_path / "b.engine", "--precision", precision, "--batch", batch,
                      *dla_args) == 0, capsys.readouterr().err
    assert trt._state["builds"][-1] == ours_rec  # the same builder settings, flag by flag
    env = {"PRECISION": precision, "BATCH": batch, **({} if dla is None else {"DLA_CORE": dla})}
    p, args = trtexec(b, tmp_path / "c.engine", version=version, **env)
    assert p.returncode == 0, p.stderr
    assert [a for a in args if a in rules.TRTEXEC_FLAGS.values() or a.startswith("--useDLACore")] == \
        plan.trtexec_args()
    sides = [json.loads(rtt.sidecar_path(tmp_path / f"{n}.engine").read_text()) for n in "abc"]
    assert sides[0]["precision"] == plan.precision and sides[0]["input_stats"] == drift_stats()
    for s in sides[1:]:
        assert set(sidecar.FIELDS) <= set(s)
        assert comparable(s) == {**comparable(sides[0]), "engine": s["engine"]}
    assert [s["built_with"] for s in sides[1:]] == ["export/build_engine.py", "trtexec (export/jetson_build.sh)"]


@pytest.mark.parametrize("version,kind,precision,dla,batch", [
    ("10.3.0.30", "fp32", "int8", None, "1"), ("10.3.0.30", "fp16", "fp32", None, "1"),
    ("10.3.0.30", "int8", "fp32", None, "1"), ("11.0.0.1", "fp32", "fp16", None, "1"),
    ("10.8.0", "int8", "auto", "0", "1"), ("11.4.0", "int8", "auto", "0", "1"),
    ("10.3.0.30", "fp32", "auto", "0", "1"), ("10.3.0.30", "int8", "auto", "0", "1,1,2"),
    ("9.2.0", "fp32", "auto", None, "1"), ("10.3.0.30", "fp32", "auto", None, "4,2,1")])
def test_all_three_builders_refuse_alike(fake, trtexec, monkeypatch, tmp_path, capsys, version, kind, precision, dla,
                                         batch):
    fake(version, dla_cores=2)
    b = make_bundle(tmp_path, kind)
    dla_core = None if dla is None else int(dla)
    with pytest.raises(rules.REFUSALS) as want:
        rules.plan_build(rules.parse_version(version), precision, kind, dla_core=dla_core,
                         batch=rules.parse_batch(batch))
    message = " ".join(str(want.value).split())
    with pytest.raises(rules.REFUSALS) as got:
        xtrt.build_engine(b, tmp_path / "a.engine", precision=precision, batch=rules.parse_batch(batch),
                          dla_core=dla_core)
    assert str(got.value) == str(want.value)
    dla_args = [] if dla is None else ["--dla-core", dla]
    assert run_recipe(monkeypatch, b, "-o", tmp_path / "b.engine", "--precision", precision, "--batch", batch,
                      *dla_args) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    env = {"PRECISION": precision, "BATCH": batch, **({} if dla is None else {"DLA_CORE": dla})}
    p, args = trtexec(b, tmp_path / "c.engine", version=version, **env)
    assert p.returncode == 2 and args == [] and p.stderr.strip() == f"error: {message}"
    assert not list(tmp_path.glob("[abc].engine*"))


def test_build_engine_py_needs_no_installed_edgeseg(fake, monkeypatch, tmp_path, capsys):
    """The script loads rules.py and sidecar.py by path; with ``import edgeseg`` failing it still
    builds, refuses with one line, and writes the drift statistics."""
    fake("10.3.0.30")
    stats = drift_stats()
    b = make_bundle(tmp_path, "fp16", input_stats=stats)
    for name in [m for m in sys.modules if m == "edgeseg" or m.startswith("edgeseg.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "edgeseg", None)
    assert run_recipe(monkeypatch, b, "-o", tmp_path / "m.engine") == 0, capsys.readouterr().err
    assert run_recipe(monkeypatch, b, "-o", tmp_path / "m.engine", "--precision", "int8") == 2
    assert capsys.readouterr().err.startswith("error: precision=int8 does not fit this FP16 ONNX")
    monkeypatch.undo()
    side = json.loads(rtt.sidecar_path(tmp_path / "m.engine").read_text())
    assert side["input_stats"] == stats and side["precision"] == "fp16"


def test_build_engine_py_says_where_the_rules_are_missing(monkeypatch, bundle, tmp_path, capsys):
    monkeypatch.setenv("EDGESEG_TRT_RULES", str(tmp_path / "nowhere"))
    assert run_recipe(monkeypatch, bundle, "-o", tmp_path / "m.engine") == 2
    err = capsys.readouterr().err
    assert "rules.py not found" in err and "EDGESEG_TRT_RULES" in err


def test_the_recipes_write_no_rules_of_their_own():
    """The table lives in rules.py: the scripts hold no precision list, suffix, version or flag rule."""
    import ast

    from trt_fakes import ROOT

    for name in ("build_engine.py", "jetson_build.sh"):
        lines = (ROOT / "export" / name).read_text().splitlines()
        if name.endswith(".py"):  # the docstring may describe the rules; the code must not hold them
            lines = lines[ast.parse("\n".join(lines)).body[0].end_lineno:]
        text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
        for literal in ('"fp16"', "'fp16'", "--fp16", "--int8", "--stronglyTyped", "--allowGPUFallback",
                        ".engine or .plan", "edgeseg-tensorrt-engine", "sidecar_version", "STRONGLY_TYPED",
                        "MAJOR", "-ge 10", "< 10", "1 <= "):
            assert literal not in text, (name, literal)
