"""The bundle: a directory with model file(s) and ``edgeseg.json``, the one artifact that ships.

The manifest records everything a device needs to use the model correctly (pre-processing,
classes, graph outputs, precision) and everything an auditor needs to trust it (provenance,
metrics, the sha256 of every model file). Bundles are written atomically (temporary directory,
manifest last, then one rename) and verified on every load: an unknown schema version, a
file name with path components, a missing file or one changed byte is refused with a message.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgeseg.runtime.errors import BundleError
from edgeseg.runtime.files import atomic_dir, atomic_write_json, sha256_file
from edgeseg.runtime.preprocess import Preprocess

MANIFEST = "edgeseg.json"
SCHEMA_VERSION = 1
OUTPUT_KINDS = ("logits", "mask", "probs")
REQUIRED = ("schema_version", "model", "files", "preprocess", "classes", "outputs", "precision")


def _safe_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise BundleError(f"manifest names a file with an invalid name: {name!r}")
    p = PurePosixPath(name)
    if p.is_absolute() or len(p.parts) != 1 or name in (".", "..") or "\\" in name or name == MANIFEST:
        raise BundleError(f"manifest file name {name!r} has path components; only plain names are allowed")
    return name


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict
    preprocess: Preprocess

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def colors(self) -> list[tuple[int, int, int]]:
        return [tuple(c) for c in self.manifest.get("colors", [])]

    @property
    def model_file(self) -> Path:
        return self.path / self.manifest["model"]

    @property
    def outputs(self) -> list[dict]:
        return list(self.manifest["outputs"])

    @property
    def precision(self) -> str:
        return str(self.manifest["precision"])


def is_bundle(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


def read_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Open and verify a bundle directory. Raises BundleError on anything unexpected."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle not found: {path}")
    mf = path / MANIFEST
    if not path.is_dir() or not mf.is_file():
        raise BundleError(f"{path} is not a bundle: no {MANIFEST}")
    try:
        m = json.loads(mf.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mf} is corrupt (not valid JSON: {exc})") from None
    if not isinstance(m, dict):
        raise BundleError(f"{mf} is corrupt: expected a JSON object")
    v = m.get("schema_version")
    if v != SCHEMA_VERSION:
        raise BundleError(f"{mf} has schema version {v!r}; this edgeseg reads version {SCHEMA_VERSION}")
    missing = [k for k in REQUIRED if k not in m]
    if missing:
        raise BundleError(f"{mf} lacks required field(s): {', '.join(missing)}")
    files = m["files"]
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{mf}: 'files' must map file names to sha256")
    for name in files:
        _safe_name(name)
    if _safe_name(m["model"]) not in files:
        raise BundleError(f"{mf}: model file {m['model']!r} is not listed under 'files'")
    if verify:
        claimed = m.get("manifest_sha256")
        if claimed is not None and claimed != manifest_digest(m):
            raise BundleError(f"{mf} was modified after it was written (manifest checksum mismatch)")
        for name, digest in files.items():
            fp = path / name
            if not fp.is_file():
                raise BundleError(f"bundle file missing: {fp}")
            if sha256_file(fp) != digest:
                raise BundleError(f"bundle file {name} does not match its sha256 in {MANIFEST} (tampered or corrupt)")
    outs = m["outputs"]
    if not isinstance(outs, list) or not outs or any(
            not isinstance(o, dict) or o.get("kind") not in OUTPUT_KINDS or not isinstance(o.get("name"), str)
            for o in outs):
        raise BundleError(f"{mf}: 'outputs' must list graph outputs {{name, kind}} of kinds {OUTPUT_KINDS}")
    classes = m["classes"]
    if not isinstance(classes, list) or len(classes) < 2:
        raise BundleError(f"{mf}: 'classes' must list at least two class names")
    try:
        pp = Preprocess.from_dict(m["preprocess"])
    except Exception as exc:
        raise BundleError(f"{mf}: invalid preprocess record: {exc}") from None
    return Bundle(path=path, manifest=m, preprocess=pp)


def manifest_digest(m: dict) -> str:
    """sha256 of the manifest's canonical JSON without its own checksum field."""
    body = {k: v for k, v in m.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_bundle(out: str | Path, files: dict[str, str | Path], manifest: dict, overwrite: bool = True) -> Path:
    """Write a bundle atomically. ``files`` maps bundle file names to source paths (copied).

    The manifest gets ``schema_version``, ``files`` (sha256 of each) and its own checksum.
    Until the final rename nothing exists at ``out``; an old bundle there is replaced whole.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise BundleError(f"{out} exists")
    if out.exists() and not is_bundle(out):
        raise BundleError(f"{out} exists and is not a bundle; refusing to replace it")
    with atomic_dir(out) as tmp:
        digests = {}
        for name, src in files.items():
            _safe_name(name)
            shutil.copyfile(src, tmp / name)
            digests[name] = sha256_file(tmp / name)
        m = dict(manifest)
        m["schema_version"] = SCHEMA_VERSION
        m["files"] = digests
        m["manifest_sha256"] = manifest_digest(m)
        atomic_write_json(tmp / MANIFEST, m)
    return out
