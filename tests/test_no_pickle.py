"""No pickle: models load from safetensors or ONNX only; any ``torch.load`` is ``weights_only=True``.

A pickle file can run any code when it is loaded, so a model file from an untrusted source
must never be unpickled. The source checks parse every module of ``edgeseg/`` (AST, not a
regex, so comments and strings do not count and formatting does not hide a call).
"""

from __future__ import annotations

import ast
import json
import pickle
import shutil
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "edgeseg"
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
SAFE_FROM_PRETRAINED = ("Config", "ImageProcessor", "Processor", "Tokenizer", "FeatureExtractor")


def _modules():
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 10, files
    for f in files:
        yield f, ast.parse(f.read_text(encoding="utf-8"), filename=str(f))


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return None


def _where(f: Path, node) -> str:
    return f"{f.relative_to(PKG.parent)}:{node.lineno}"


def test_every_torch_load_is_weights_only():
    calls, bad = [], []
    for f, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _dotted(node.func).endswith("torch.load"):
                calls.append(_where(f, node))
                if _kw(node, "weights_only") is not True:
                    bad.append(_where(f, node))
            # `from torch import load` would hide the call from the check above
            if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names):
                bad.append(_where(f, node) + " (from torch import load)")
    assert not bad, f"torch.load without weights_only=True: {bad}"


def test_no_pickle_modules_or_pickled_numpy():
    bad = []
    for f, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                bad += [f"{_where(f, node)} import {a.name}" for a in node.names
                        if a.name.split(".")[0] in PICKLE_MODULES]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
                bad.append(f"{_where(f, node)} from {node.module} import ...")
            elif isinstance(node, ast.Call):
                name = _dotted(node.func)
                if name.endswith(("np.load", "numpy.load")) and _kw(node, "allow_pickle") not in (None, False):
                    bad.append(f"{_where(f, node)} {name}(allow_pickle=...)")
                if name.endswith(("read_pickle", "torch.jit.load")):
                    bad.append(f"{_where(f, node)} {name}")
    assert not bad, bad


def test_every_model_from_pretrained_is_safetensors_only():
    bad = []
    for f, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _dotted(node.func).endswith(".from_pretrained"):
                owner = _dotted(node.func).rsplit(".", 1)[0]
                if owner.endswith(SAFE_FROM_PRETRAINED):
                    continue  # JSON files only
                if _kw(node, "use_safetensors") is not True:
                    bad.append(f"{_where(f, node)} {owner}.from_pretrained without use_safetensors=True")
    assert not bad, bad


class _Evil:
    """Unpickling this writes a marker file: proof that code from a model file ran."""

    marker: Path

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.fixture
def pickle_only_ckpt(tmp_path):
    from edgeseg.model.variants import build_config

    d = tmp_path / "pickled"
    d.mkdir()
    build_config("tiny").save_pretrained(str(d))
    evil = _Evil()
    evil.marker = tmp_path / "PWNED"
    with open(d / "pytorch_model.bin", "wb") as f:
        pickle.dump({"state_dict": evil}, f)
    return d


def test_pickle_only_checkpoint_refused_and_never_unpickled(pickle_only_ckpt, monkeypatch):
    import torch

    from edgeseg.errors import ModelError
    from edgeseg.model.checkpoint import load_checkpoint

    def no_unpickling(*a, **k):
        raise AssertionError("torch.load was called on a checkpoint")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    with pytest.raises(ModelError, match="only pickle weights.*safetensors only"):
        load_checkpoint(pickle_only_ckpt)
    assert not (pickle_only_ckpt.parent / "PWNED").exists()


def test_pickle_only_checkpoint_refused_by_the_cli(pickle_only_ckpt, tmp_path):
    from typer.testing import CliRunner

    from edgeseg.cli import app

    r = CliRunner().invoke(app, ["export", str(pickle_only_ckpt), "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "pickle" in errors[0] and "safetensors" in errors[0], r.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "PWNED").exists()


def test_safetensors_wins_over_a_pickle_beside_it(pickle_only_ckpt, tmp_path):
    """A checkpoint with both files loads the safetensors and never touches the pickle."""
    from edgeseg.model.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
    from edgeseg.model.variants import build_model

    d = save_checkpoint(build_model("tiny").eval(), CheckpointMeta(), tmp_path / "both")
    shutil.copy(pickle_only_ckpt / "pytorch_model.bin", d / "pytorch_model.bin")
    model, _ = load_checkpoint(d)
    assert model.config.model_type == "segformer"
    assert not (tmp_path / "PWNED").exists()
    assert json.loads((d / "config.json").read_text())["model_type"] == "segformer"
