"""The model store: a folder of versioned bundles, one of them active, every switch audited.

Layout of a store folder::

    versions/<V>/     one verified bundle per version (copied in atomically by ``add``)
    state.json        {"active": V, "history": [...activated versions, oldest first...]}
    audit.jsonl       append-only: one JSON line per add, activate, rollback, refusal

Every load verifies the bundle (``read_bundle``: the manifest checksum and each file's sha256)
and runs a smoke test (one synthetic image through a ``Segmenter``); a bundle that fails either
never becomes active, and the refusal is audited. A single bundle folder opens as a read-only
one-version store (named after its folder), so ``edgeseg serve BUNDLE`` needs no store.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeseg.runtime.bundle import MANIFEST, is_bundle, read_bundle
from edgeseg.runtime.errors import BundleError, EdgesegError
from edgeseg.runtime.files import atomic_dir, atomic_write_json, read_json, sha256_file

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
STATE, AUDIT, VERSIONS = "state.json", "audit.jsonl", "versions"


class StoreError(EdgesegError):
    """A store operation that cannot be done as asked (one line for the user)."""


class UnknownVersion(StoreError):
    """A version the store does not hold."""


def timestamp(t: float | None = None) -> str:
    """UTC time with milliseconds, ISO 8601 (what every log line of the service carries)."""
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def check_version(name: str) -> str:
    if not isinstance(name, str) or not VERSION_RE.match(name):
        raise StoreError(f"invalid version name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return name


def bundle_sha256(path: Path) -> str:
    """The bundle's identity: the sha256 of its manifest, which lists the sha256 of every file."""
    return sha256_file(Path(path) / MANIFEST)


def smoke_test(seg) -> None:
    """One synthetic image through the Segmenter: a mask of the image's size with known labels,
    finite probabilities where the model has them. Raises BundleError otherwise."""
    pp = seg.preprocess_spec
    h, w = pp.height + 3, pp.width + 5  # not the model's size: the resize back is exercised too
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), (xx + yy) % 256], axis=2)
    image = image.astype(np.uint8)
    policy = getattr(seg, "intensity", None)
    if policy is not None:  # source pixels spanning the policy's range (HU for a CT window), not display levels
        lo, hi = (0.0, 1000.0) if policy.kind == "percentile" else (policy.low, policy.high)
        image = (lo + image[:, :, 0].astype(np.float32) / 255.0 * (hi - lo)).astype(np.float32)
    kinds = {o["kind"] for o in seg.outputs}
    try:
        if kinds & {"logits", "probs"}:
            mask, probs = seg.predict(image, probabilities=True)
            finite = bool(np.isfinite(probs).all())
        else:
            mask, finite = seg.predict(image), True
    except EdgesegError as exc:
        raise BundleError(f"smoke test failed: {exc}") from None
    except Exception as exc:  # the runner failing on a synthetic image is exactly what this catches
        raise BundleError(f"smoke test failed: {type(exc).__name__}: {exc}") from None
    if mask.shape != (h, w) or mask.dtype != np.uint8 or int(mask.max()) >= seg.num_classes or not finite:
        raise BundleError(f"smoke test failed: a {h}x{w} image gave a {mask.dtype} mask of shape {mask.shape}"
                          f"{'' if finite else ' and non-finite probabilities'}")


@dataclass
class Loaded:
    """A verified, smoke-tested model: what a request holds on to while it runs."""

    version: str
    sha256: str
    segmenter: object = field(repr=False)
    path: Path
    loaded_at: str = field(default_factory=timestamp)

    def describe(self) -> dict:
        m = self.segmenter.bundle.manifest if self.segmenter.bundle is not None else None
        pp = self.segmenter.preprocess_spec
        return {"version": self.version, "sha256": self.sha256, "classes": list(self.segmenter.classes),
                "input": [pp.height, pp.width], "precision": m.precision if m else None,
                "provenance": m.get("provenance") if m else None, "loaded_at": self.loaded_at}


def load(path: Path, version: str, threads: int | None = None) -> Loaded:
    """Verify, open and smoke-test one bundle."""
    from edgeseg.runtime.segmenter import Segmenter

    read_bundle(path)  # one clear BundleError for a tampered folder, before any runner starts
    seg = Segmenter(path, threads=threads)
    smoke_test(seg)
    return Loaded(version=version, sha256=bundle_sha256(path), segmenter=seg, path=Path(path))


class _StoreLock:
    """This process's threads and other processes (the CLI beside a running service) take turns."""

    def __init__(self, root: Path, thread_lock: threading.Lock) -> None:
        self.path, self.thread_lock = root / ".lock", thread_lock

    def __enter__(self):
        self.thread_lock.acquire()
        self.f = open(self.path, "a")
        try:
            import fcntl

            fcntl.flock(self.f.fileno(), fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX: threads of this process only
            pass
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()  # releases the flock
        self.thread_lock.release()


class ModelStore:
    def __init__(self, root: str | Path, create: bool = False) -> None:
        self.root = Path(root)
        self.single = is_bundle(self.root)
        self._lock = threading.Lock()
        if self.single:
            name = self.root.resolve().name
            self._single_name = name if VERSION_RE.match(name) else "bundle"
            return
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root} is a file, not a model store or a bundle folder")
        if not self.root.exists() or not any(self.root.iterdir()):
            if not create:
                raise StoreError(f"{self.root} is neither a model store nor a bundle (create one with "
                                 f"`edgeseg store add {self.root} BUNDLE --version V`)")
        elif not (self.root / VERSIONS).is_dir():
            raise StoreError(f"{self.root} is not a model store (no {VERSIONS}/ folder) nor a bundle (no {MANIFEST})")
        if create:
            (self.root / VERSIONS).mkdir(parents=True, exist_ok=True)

    # --- reading ------------------------------------------------------------------------
    def state(self) -> dict:
        if self.single:
            return {"active": self._single_name, "history": [self._single_name]}
        p = self.root / STATE
        if not p.exists():
            return {"active": None, "history": []}
        st = read_json(p, error=StoreError)
        if not isinstance(st.get("history"), list) or not all(isinstance(v, str) for v in st["history"]):
            raise StoreError(f"{p}: 'history' must list version names")
        return st

    @property
    def active(self) -> str | None:
        return self.state().get("active")

    def versions(self) -> list[str]:
        if self.single:
            return [self._single_name]
        return sorted(p.name for p in (self.root / VERSIONS).iterdir() if p.is_dir() and VERSION_RE.match(p.name))

    def path(self, version: str) -> Path:
        if self.single and version == self._single_name:
            return self.root
        if not self.single and VERSION_RE.match(str(version)) and (self.root / VERSIONS / version).is_dir():
            return self.root / VERSIONS / version
        raise UnknownVersion(f"unknown model version {version!r}; known: {', '.join(self.versions()) or 'none'}")

    def load(self, version: str, threads: int | None = None) -> Loaded:
        return load(self.path(version), version, threads)

    def audit(self) -> list[dict]:
        p = self.root / AUDIT
        if self.single or not p.exists():
            return []
        return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]

    # --- changing -----------------------------------------------------------------------
    def _writable(self, what: str) -> None:
        if self.single:
            raise StoreError(f"{self.root} is a single bundle served as a one-version store: {what} needs a store "
                             f"(`edgeseg store add STORE {self.root} --version V`)")

    def _append_audit(self, entry: dict) -> None:
        line = json.dumps({"time": timestamp(), **entry}, sort_keys=True) + "\n"
        with open(self.root / AUDIT, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def add(self, bundle: str | Path, version: str, actor: str = "cli") -> str:
        """Copy a verified, smoke-tested bundle in as ``version``; returns its sha256."""
        self._writable("add")
        check_version(version)
        bundle = Path(bundle)
        with _StoreLock(self.root, self._lock):
            dest = self.root / VERSIONS / version
            if dest.exists():
                raise StoreError(f"version {version!r} is already in {self.root}; versions are never replaced, "
                                 "add it under a new name")
            try:
                b = read_bundle(bundle)
                with atomic_dir(dest) as tmp:
                    for name in [MANIFEST, *b.manifest.files]:
                        shutil.copyfile(bundle / name, tmp / name)
                    sha = load(tmp, version).sha256  # the copy itself verified and smoke-tested
            except BundleError as exc:
                self._append_audit({"action": "add", "version": version, "outcome": "refused", "reason": str(exc),
                                    "source": str(bundle), "actor": actor})
                raise
            self._append_audit({"action": "add", "version": version, "outcome": "ok", "sha256": sha,
                                "source": str(bundle.resolve()), "actor": actor})
        return sha

    def _switch(self, action: str, version: str, history: list[str], actor: str, threads: int | None) -> Loaded:
        old = self.active
        try:
            loaded = self.load(version, threads)
        except BundleError as exc:
            self._append_audit({"action": action, "from": old, "to": version, "outcome": "refused",
                                "reason": str(exc), "actor": actor})
            raise BundleError(f"version {version!r} was not activated: {exc}") from None
        atomic_write_json(self.root / STATE, {"active": version, "history": history})
        self._append_audit({"action": action, "from": old, "to": version, "outcome": "ok", "sha256": loaded.sha256,
                            "actor": actor})
        return loaded

    def activate(self, version: str, actor: str = "cli", threads: int | None = None) -> Loaded:
        """Make ``version`` the active one (verified and smoke-tested first); returns it loaded."""
        self._writable("activate")
        self.path(version)
        with _StoreLock(self.root, self._lock):
            history = [v for v in self.state()["history"] if v in self.versions()]
            return self._switch("activate", version, history + [version], actor, threads)

    def rollback(self, actor: str = "cli", threads: int | None = None) -> Loaded:
        """Go back to the version active before the current one."""
        self._writable("rollback")
        with _StoreLock(self.root, self._lock):
            history = self.state()["history"]
            if len(history) < 2:
                raise StoreError(f"nothing to roll back to in {self.root}: only "
                                 f"{'one version was' if history else 'no version was ever'} activated")
            return self._switch("rollback", history[-2], history[:-1], actor, threads)

    def listing(self) -> dict:
        st = self.state()
        rows = []
        for v in self.versions():
            p = self.path(v)
            rows.append({"version": v, "active": v == st.get("active"),
                         "sha256": bundle_sha256(p) if (p / MANIFEST).is_file() else None})
        return {"store": str(self.root), "single_bundle": self.single, "active": st.get("active"), "versions": rows}


__all__ = ["Loaded", "ModelStore", "StoreError", "UnknownVersion", "bundle_sha256", "check_version", "load",
           "smoke_test", "timestamp"]
