"""The bundle: a directory with model file(s) and ``edgeseg.json``, the one artifact that ships.

The manifest records everything a device needs to use the model correctly (pre-processing,
classes, graph outputs, precision) and everything an auditor needs to trust it (provenance,
metrics, the sha256 of every model file). Bundles are written atomically (temporary directory,
manifest last, then one rename) and verified on every load: an unknown schema version, a
file name with path components, a missing file or one changed byte is refused with a message.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from edgeseg.runtime.errors import BundleError
from edgeseg.runtime.files import atomic_dir, atomic_write_json, read_json, sha256_file
from edgeseg.runtime.manifest import SCHEMA_VERSION, WRITER_KEYS, Manifest, manifest_digest
from edgeseg.runtime.preprocess import Preprocess

MANIFEST = "edgeseg.json"
MAX_MODEL_BYTES = 2_000_000_000  # ONNX's protobuf limit; larger models need external data, which bundles refuse


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
    manifest: Manifest
    model_bytes: bytes | None = field(default=None, repr=False, compare=False)  # the verified bytes

    @property
    def preprocess(self) -> Preprocess:
        return self.manifest.preprocess

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    @property
    def colors(self) -> list[tuple[int, int, int]]:
        return list(self.manifest.colors)

    @property
    def model_file(self) -> Path:
        return self.path / self.manifest.model

    @property
    def outputs(self) -> list[dict]:
        return [o.to_dict() for o in self.manifest.outputs]

    @property
    def precision(self) -> str:
        return self.manifest.precision


def is_bundle(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


def _regular(fp: Path, what: str) -> None:
    if fp.is_symlink():
        raise BundleError(f"{what} {fp.name} is a link; a bundle holds only its own regular files")
    if not fp.is_file():
        raise BundleError(f"bundle file missing: {fp}")


def read_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Open and verify a bundle directory. Raises BundleError on anything unexpected.

    With ``verify`` (the default) the folder must hold exactly the manifest and the files it
    lists, none of them links, each matching its sha256; the model's verified bytes are kept
    and are what the runtime loads (no second read that could see other bytes).
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise BundleError(f"bundle not found: {path}")
    mf = path / MANIFEST
    if not path.is_dir() or not mf.is_file():
        raise BundleError(f"{path} is not a bundle: no {MANIFEST}")
    if verify:
        _regular(mf, "manifest")
    raw = read_json(mf, error=BundleError, what=str(mf))
    m = Manifest.from_dict(raw, str(mf))
    for name in m.files:
        _safe_name(name)
    if _safe_name(m.model) not in m.files:
        raise BundleError(f"{mf}: model file {m.model!r} is not listed under 'files'")
    model_bytes = None
    if verify:
        if m.manifest_sha256 != manifest_digest(raw):
            raise BundleError(f"{mf} was modified after it was written (manifest checksum mismatch)")
        extra = sorted(p.name for p in path.iterdir() if p.name != MANIFEST and p.name not in m.files)
        if extra:
            raise BundleError(f"{path} holds file(s) its manifest does not list: {', '.join(extra[:5])}; "
                              "a bundle is exactly its listed files (remove them or re-export)")
        for name, digest in m.files.items():
            fp = path / name
            _regular(fp, "bundle file")
            if fp.stat().st_size > MAX_MODEL_BYTES:
                raise BundleError(f"bundle file {name} is larger than {MAX_MODEL_BYTES // 10**9} GB")
            data = fp.read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                raise BundleError(f"bundle file {name} does not match its sha256 in {MANIFEST} (tampered or corrupt)")
            if name == m.model:
                model_bytes = data
    return Bundle(path=path, manifest=m, model_bytes=model_bytes)


def write_bundle(out: str | Path, files: dict[str, str | Path], manifest: Manifest | dict,
                 overwrite: bool = True) -> Path:
    """Write a bundle atomically. ``files`` maps bundle file names to source paths (copied).

    The manifest gets ``schema_version``, ``files`` (sha256 of each) and its own checksum.
    Until the final rename nothing exists at ``out``; an old bundle there is replaced whole.
    """
    out = Path(out)
    if not isinstance(manifest, Manifest):
        manifest = Manifest.from_dict({k: v for k, v in manifest.items() if k not in WRITER_KEYS},
                                      "manifest to write", written=False)
    if manifest.model not in files:
        raise BundleError(f"the manifest's model file {manifest.model!r} is not among the files to write")
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
        atomic_write_json(tmp / MANIFEST, manifest.sealed(digests).to_dict())
    return out


__all__ = ["MANIFEST", "SCHEMA_VERSION", "Bundle", "Manifest", "is_bundle", "manifest_digest", "read_bundle",
           "sha256_file", "write_bundle"]
