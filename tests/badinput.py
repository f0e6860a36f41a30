"""Shared helpers and fixtures of the bad-input catalogue (tests/test_bad_inputs*.py).

``cli`` runs a command in-process; ``refused`` checks a clean refusal (non-zero exit, exactly one
``error:`` line naming the problem, no traceback); ``worked`` a clean success; ``Unchanged`` that
a folder is byte-for-byte the same afterwards; ``rehash`` re-seals a bundle after an edit so that
only the edit is wrong. Fixtures: ``models`` (an untrained tiny SegFormer at 64 px and its
bundle, once per test module), ``ckpt``, ``bundle`` (a private copy), ``out`` (an empty folder
that must stay empty), ``seg`` (a Segmenter on the bundle). Test modules import the fixtures
they use by name.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import EMBEDDED, write_img
from edgeseg.cli import app
from edgeseg.runtime.bundle import MANIFEST, manifest_digest, sha256_file

RUNNER = CliRunner()


# =========================================================================== helpers
def cli(*args):
    return RUNNER.invoke(app, [str(a) for a in args])


def snapshot(root: Path) -> dict:
    """Every file and folder under ROOT (hidden ones too) with the sha256 of each file."""
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip().lower().startswith("error:")]


def refused(r, *words):
    """A CliRunner result (or CompletedProcess) that refused cleanly with one error line naming WORDS."""
    code = getattr(r, "exit_code", getattr(r, "returncode", None))
    exc = getattr(r, "exception", None)
    assert exc is None or isinstance(exc, SystemExit), f"uncaught {exc!r}\n{r.stderr}"
    assert code not in (0, None), r.stdout
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = error_lines(r.stderr)
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]
    return lines[0]


def worked(r):
    exc = getattr(r, "exception", None)
    assert exc is None or isinstance(exc, SystemExit), repr(exc)
    assert r.exit_code == 0, r.stderr
    assert not error_lines(r.stderr) and "Traceback" not in r.stderr


class Unchanged:
    """``with Unchanged(folder):`` asserts the folder's content is the same afterwards."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __enter__(self):
        self.root.mkdir(parents=True, exist_ok=True)
        self.before = snapshot(self.root)
        return self.root

    def __exit__(self, *exc):
        if exc[0] is None:
            assert snapshot(self.root) == self.before, "partial output left behind"
        return False


def rgb(h=40, w=56, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def mask01(h=40, w=56):
    m = np.zeros((h, w), np.uint8)
    m[10:25, 12:40] = 255
    return m


def labelled(root: Path, n: int = 2, ext: str = ".png") -> Path:
    for i in range(n):
        write_img(root / f"images/s{i}{ext}", rgb(seed=i))
        write_img(root / f"masks/s{i}.png", mask01())
    return root


def rehash(bundle: Path, edit=None) -> Path:
    """Apply EDIT(manifest) to a bundle and recompute every sha256 so only the edit is wrong."""
    mf = bundle / MANIFEST
    m = json.loads(mf.read_text())
    if edit is not None:
        edit(m)
    m["files"] = {n: sha256_file(bundle / n) if (bundle / n).is_file() else d for n, d in m["files"].items()}
    m["manifest_sha256"] = manifest_digest(m)
    mf.write_text(json.dumps(m))
    return bundle


def huge_png(path: Path, w: int = 20000, h: int = 20000) -> Path:
    """A valid w x h 8-bit gray PNG (all zeros), streamed so it never exists in memory."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(1)
    rows = (b"\x00" + bytes(w)) * 500
    idat = bytearray()
    for _ in range(h // 500):
        idat += comp.compress(rows)
    idat += comp.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", bytes(idat)) + chunk(b"IEND", b""))
    return path


# =========================================================================== fixtures
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(checkpoint, bundle): an untrained tiny SegFormer at 64 px, and its exported bundle."""
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.model.checkpoint import CheckpointMeta, save_checkpoint
    from edgeseg.model.variants import build_model
    from edgeseg.runtime.preprocess import Preprocess

    root = tmp_path_factory.mktemp("models")
    ckpt = save_checkpoint(build_model("tiny").eval(), CheckpointMeta(preprocess=Preprocess(64, 64)), root / "ckpt")
    bundle, _ = export_bundle(ckpt, root / "bundle", data=EMBEDDED, split="val", limit=4)
    return ckpt, bundle


@pytest.fixture
def ckpt(models):
    return models[0]


@pytest.fixture
def bundle(models, tmp_path):
    """A private copy of the bundle (tests may damage it)."""
    return shutil.copytree(models[1], tmp_path / "bundle")


@pytest.fixture
def out(tmp_path):
    """An empty folder that receives every output; it must still be empty afterwards."""
    with Unchanged(tmp_path / "out") as o:
        yield o


@pytest.fixture(scope="module")
def seg(models):
    from edgeseg.runtime import Segmenter

    return Segmenter(models[1], threads=1)
