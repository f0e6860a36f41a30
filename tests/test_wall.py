"""The wall between the halves, proved statically: no module under edgeseg/runtime/ (nor under
edgeseg/serve/, the torch-free service, which may also import itself) imports
torch, transformers, torch_pruning, cv2, typer, onnx or any toolkit module (anything in edgeseg/
outside edgeseg/runtime/), at module level or inside a function. The behavioural proofs (a
subprocess where importing torch fails; a site-packages with only numpy + onnxruntime) are in
test_runtime.py, and .ci/run installs the runtime alone."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "edgeseg" / "runtime"
SERVE = ROOT / "edgeseg" / "serve"  # torch-free too: the service may import the runtime and itself
FORBIDDEN = {"torch", "transformers", "torch_pruning", "cv2", "typer", "onnx", "onnxscript", "safetensors", "tqdm"}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports (absolute names; relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    pkg = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(pkg[: len(pkg) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            found += [(node.lineno, f"{mod}.{a.name}" if mod == "edgeseg" else mod) for a in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
            found.append((node.lineno, str(node.args[0].value)))
    return found


def violations(path: Path) -> list[str]:
    allowed = ("edgeseg.runtime", "edgeseg.serve") if SERVE in path.parents else ("edgeseg.runtime",)
    bad = []
    for line, mod in imports_of(path):
        top = mod.split(".")[0]
        if top in FORBIDDEN:
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
        elif top == "edgeseg" and not (mod == "edgeseg" or mod.startswith(allowed)):
            bad.append(f"{path.relative_to(ROOT)}:{line} imports toolkit module {mod}")
    return bad


RUNTIME_FILES = sorted(RUNTIME.rglob("*.py")) + sorted(SERVE.rglob("*.py"))


def test_runtime_has_modules():
    assert len(RUNTIME_FILES) >= 8 and (RUNTIME / "segmenter.py") in RUNTIME_FILES


@pytest.mark.parametrize("path", RUNTIME_FILES, ids=lambda p: str(p.relative_to(RUNTIME.parent)))
def test_runtime_module_stays_behind_the_wall(path):
    assert violations(path) == []


def test_checker_catches_each_kind_of_crossing(tmp_path, monkeypatch):
    """The checker itself: each way of crossing the wall is caught."""
    fake = ROOT / "edgeseg" / "runtime" / "runners" / "_wall_probe.py"
    cases = {
        "import torch\n": "imports torch",
        "def f():\n    from transformers import AutoModel\n": "imports transformers",
        "from edgeseg.errors import DependencyError\n": "toolkit module edgeseg.errors",
        "from edgeseg import cli\n": "toolkit module edgeseg.cli",
        "from ...errors import ConfigError\n": "toolkit module edgeseg.errors",
        "import importlib\nimportlib.import_module('cv2')\n": "imports cv2",
    }
    for src, expected in cases.items():
        monkeypatch.setattr(Path, "read_text", lambda self, encoding=None, _s=src: _s)
        found = violations(fake)
        assert any(expected in v for v in found), (src, found)
    monkeypatch.undo()
    assert violations(RUNTIME / "segmenter.py") == []
