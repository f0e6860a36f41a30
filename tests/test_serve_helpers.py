"""Helpers (no tests) shared by the service tests: two-version stores from the tiny bundle, image
bytes, a tiny Prometheus text parser."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
from conftest import rgb


def png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def encoded(arr: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def relabelled(bundle: Path, out: Path, note: str, **changes) -> Path:
    """The same model as a second, distinct bundle (another manifest, so another sha256)."""
    from edgeseg.runtime.bundle import read_bundle, write_bundle

    b = read_bundle(bundle)
    return write_bundle(out, {b.manifest.model: bundle / b.manifest.model}, b.manifest.derive(note=note, **changes))


def two_version_store(bundle: Path, root: Path) -> tuple[Path, Path]:
    from edgeseg.serve.store import ModelStore

    store = root / "store"
    v2 = relabelled(bundle, root / "v2-bundle", "v2")
    st = ModelStore(store, create=True)
    st.add(bundle, "v1")
    st.add(v2, "v2")
    st.activate("v1")
    return store, v2


def tampered_copy(bundle: Path, out: Path) -> Path:
    shutil.copytree(bundle, out)
    model = out / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    return out


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[tuple, float]:
    """{(name, ((label, value), ...)): value} from the text format; fails on any malformed line."""
    out, typed = {}, {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            assert parts[1] in ("HELP", "TYPE"), line
            if parts[1] == "TYPE":
                assert parts[3] in ("counter", "gauge", "histogram", "summary", "untyped"), line
                typed[parts[2]] = parts[3]
            continue
        m = SAMPLE.match(line)
        assert m, f"malformed sample line: {line!r}"
        labels = tuple(sorted(LABEL.findall(m.group(3) or "")))
        if m.group(3):
            assert ",".join(f'{k}="{v}"' for k, v in LABEL.findall(m.group(3))) == m.group(3), line
        base = re.sub(r"_(bucket|sum|count)$", "", m.group(1))
        assert m.group(1) in typed or base in typed, f"sample without a TYPE line: {line}"
        out[(m.group(1), labels)] = float(m.group(4).replace("+Inf", "inf"))
    return out


__all__ = ["encoded", "parse_prometheus", "png", "relabelled", "rgb", "tampered_copy", "two_version_store"]
