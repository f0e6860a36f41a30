"""The manifest (``edgeseg.json``) as a type: one reader, one writer, one schema check.

Every stage that makes a bundle (export, quantize, compress, the TensorRT sidecar) derives its
manifest from an earlier one with :meth:`Manifest.derive`, which drops what only the writer
may set (``schema_version``, ``files``, ``manifest_sha256``). Readers use attributes; sections
that stages add for people rather than for the device (metrics, provenance, parity, recipe,
stages, ...) are plain JSON dicts/lists, kept as they are.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from edgeseg.runtime.errors import BundleError
from edgeseg.runtime.files import json_clean
from edgeseg.runtime.preprocess import Preprocess

SCHEMA_VERSION = 1
OUTPUT_KINDS = ("logits", "mask", "probs")
PRECISIONS = ("fp32", "fp16", "int8")
WRITER_KEYS = ("schema_version", "files", "manifest_sha256")  # set by write_bundle only
REQUIRED = ("model", "preprocess", "classes", "outputs", "precision")
# optional JSON sections: name -> the JSON type it must have
SECTIONS = {"colors": list, "provenance": dict, "metrics": dict, "parity": dict, "input_stats": dict,
            "quantization": dict, "onnxruntime": dict, "export": dict, "stages": list, "recipe": dict,
            "calibration": dict, "budgets": dict, "intensity": dict,
            "runtime": dict,  # runtime: {"preferred", "measured", "cpu"} (edgeseg.measure.runtimes)
            "uncertainty": dict, "temperature": dict}  # edgeseg.runtime.uncertainty / .temperature


@dataclass(frozen=True)
class Output:
    name: str
    kind: str  # one of OUTPUT_KINDS

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind}


def _outputs(value: Any, where: str) -> tuple[Output, ...]:
    if not isinstance(value, (list, tuple)) or not value or any(
            not isinstance(o, dict) or o.get("kind") not in OUTPUT_KINDS or not isinstance(o.get("name"), str)
            for o in value):
        raise BundleError(f"{where}: 'outputs' must list graph outputs {{name, kind}} of kinds {OUTPUT_KINDS}")
    return tuple(Output(o["name"], o["kind"]) for o in value)


def _classes(value: Any, where: str) -> tuple[str, ...]:
    if (not isinstance(value, (list, tuple)) or len(value) < 2
            or not all(isinstance(c, str) and c for c in value) or len(set(value)) != len(value)):
        raise BundleError(f"{where}: 'classes' must list at least two distinct class names")
    return tuple(value)


def _colors(value: Any, where: str) -> tuple[tuple[int, int, int], ...]:
    if value is None:
        return ()
    ok = isinstance(value, list) and all(
        isinstance(c, (list, tuple)) and len(c) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c) for c in value)
    if not ok:
        raise BundleError(f"{where}: 'colors' must list [r, g, b] triples of integers 0-255")
    return tuple(tuple(c) for c in value)


@dataclass(frozen=True)
class Manifest:
    """What a device needs to run the model right, and what an auditor needs to trust it."""

    model: str
    preprocess: Preprocess
    classes: tuple[str, ...]
    outputs: tuple[Output, ...]
    precision: str
    colors: tuple[tuple[int, int, int], ...] = ()
    sections: dict = field(default_factory=dict)  # the optional JSON sections (SECTIONS and unknown ones)
    files: dict = field(default_factory=dict)  # name -> sha256; set by the writer
    manifest_sha256: str | None = None  # set by the writer
    schema_version: int = SCHEMA_VERSION

    # --- reading --------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest", written: bool = True) -> "Manifest":
        """Validate a manifest's JSON. ``written``: it comes from a bundle (so it must carry the
        writer's keys); False for a manifest being built or embedded in an ONNX file."""
        if not isinstance(d, dict):
            raise BundleError(f"{where}: expected a JSON object, got {type(d).__name__}")
        if written:
            check_schema(d.get("schema_version"), where)
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise BundleError(f"{where} lacks required field(s): {', '.join(missing)}")
        if not isinstance(d["model"], str) or not d["model"]:
            raise BundleError(f"{where}: 'model' must name the model file")
        if d["precision"] not in PRECISIONS:
            raise BundleError(f"{where}: 'precision' must be one of {', '.join(PRECISIONS)}, got {d['precision']!r}")
        try:
            pp = Preprocess.from_dict(d["preprocess"])
        except Exception as exc:  # InputError with a message, or a type problem
            raise BundleError(f"{where}: invalid preprocess record: {exc}") from None
        classes = _classes(d["classes"], where)
        sections = {}
        for key, value in d.items():
            if key in REQUIRED or key in WRITER_KEYS or key == "colors":
                continue
            want = SECTIONS.get(key)
            if want is not None and value is not None and not isinstance(value, want):
                raise BundleError(f"{where}: '{key}' must be a JSON {'object' if want is dict else 'list'}")
            sections[key] = value
        files = d.get("files", {})
        if written and (not isinstance(files, dict) or not files
                        or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())):
            raise BundleError(f"{where}: 'files' must map file names to sha256")
        digest = d.get("manifest_sha256")
        if written and not isinstance(digest, str):
            raise BundleError(f"{where} has no manifest checksum (manifest_sha256): it was not written by edgeseg "
                              "or was edited; re-export the bundle")
        return cls(model=d["model"], preprocess=pp, classes=classes, outputs=_outputs(d["outputs"], where),
                    precision=d["precision"], colors=_colors(d.get("colors"), where),
                    sections=sections, files=dict(files) if isinstance(files, dict) else {},
                    manifest_sha256=digest if isinstance(digest, str) else None,
                    schema_version=d.get("schema_version", SCHEMA_VERSION) if written else SCHEMA_VERSION)

    # --- writing --------------------------------------------------------------------------
    def to_dict(self, writer_keys: bool = True) -> dict:
        d = {"model": self.model, "preprocess": self.preprocess.to_dict(), "classes": list(self.classes),
             "outputs": [o.to_dict() for o in self.outputs], "precision": self.precision}
        if self.colors:
            d["colors"] = [list(c) for c in self.colors]
        d.update(json_clean(self.sections))
        if writer_keys:
            d["schema_version"] = self.schema_version
            if self.files:
                d["files"] = dict(self.files)
            if self.manifest_sha256 is not None:
                d["manifest_sha256"] = self.manifest_sha256
        return d

    def derive(self, **changes: Any) -> "Manifest":
        """A new manifest for a new bundle: these changes applied, the writer's keys cleared.
        Typed fields take their usual types (or JSON for outputs/classes/preprocess); any other
        name sets (or, with None, removes) a JSON section."""
        typed = {f.name for f in fields(self)} - {"sections", "files", "manifest_sha256", "schema_version"}
        sections = dict(self.sections)
        kw: dict[str, Any] = {}
        for key, value in changes.items():
            if key in WRITER_KEYS or key == "sections":
                raise BundleError(f"'{key}' is set by the bundle writer, not by a stage")
            if key not in typed:
                if value is None:
                    sections.pop(key, None)
                else:
                    sections[key] = value
            elif key == "preprocess" and isinstance(value, dict):
                kw[key] = Preprocess.from_dict(value)
            elif key == "outputs":
                kw[key] = tuple(o if isinstance(o, Output) else Output(o["name"], o["kind"]) for o in value)
            elif key in ("classes", "colors"):
                kw[key] = tuple(tuple(c) if key == "colors" else c for c in value)
            else:
                kw[key] = value
        new = replace(self, sections=sections, files={}, manifest_sha256=None, schema_version=SCHEMA_VERSION, **kw)
        return Manifest.from_dict(new.to_dict(writer_keys=False), "derived manifest", written=False)

    def sealed(self, files: dict[str, str]) -> "Manifest":
        """The manifest as the writer stores it: these file digests and its own checksum, and no
        absolute path of the machine that made it (each becomes its last component)."""
        body = replace(self, files=dict(files), manifest_sha256=None, schema_version=SCHEMA_VERSION,
                       sections=portable(self.sections))
        return replace(body, manifest_sha256=manifest_digest(body.to_dict()))

    # --- read access for JSON-shaped sections ----------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        """A section (``metrics``, ``input_stats``, ...) or field, as JSON; ``default`` if absent."""
        return self.to_dict().get(key, default)

    def __getitem__(self, key: str) -> Any:
        d = self.to_dict()
        if key not in d:
            raise KeyError(key)
        return d[key]

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()

    @property
    def input_stats(self) -> dict | None:
        return self.sections.get("input_stats")

    @property
    def session_config(self) -> dict:
        """ONNX Runtime session entries this model needs (e.g. weight-only INT8)."""
        ort = self.sections.get("onnxruntime") or {}
        cfg = ort.get("session_config") if isinstance(ort, dict) else None
        if cfg is not None and not (isinstance(cfg, dict) and all(isinstance(k, str) for k in cfg)):
            raise BundleError("manifest: 'onnxruntime.session_config' must map names to values")
        return dict(cfg or {})


def portable(o: Any) -> Any:
    """A copy of JSON ``o`` in which every absolute file-system path (POSIX or Windows) is reduced
    to its last component: a shipped manifest names its sources by name and sha256, not by where
    they lay on the workstation that made it."""
    if isinstance(o, dict):
        return {k: portable(v) for k, v in o.items()}
    if isinstance(o, list):
        return [portable(v) for v in o]
    if isinstance(o, str) and "\n" not in o and len(o) < 4096:
        for flavour in (PurePosixPath, PureWindowsPath):
            p = flavour(o)
            if p.is_absolute() and len(p.parts) > 1:
                return p.name
    return o


def check_schema(version: Any, where: str) -> None:
    """The one place that decides which manifest versions this edgeseg reads."""
    if version == SCHEMA_VERSION:
        return
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise BundleError(f"{where} has schema version {version}, newer than this edgeseg reads "
                          f"({SCHEMA_VERSION}): upgrade edgeseg on this device")
    raise BundleError(f"{where} has schema version {version!r}; this edgeseg reads version {SCHEMA_VERSION}: "
                      "re-export the model with `edgeseg export` (or re-run `edgeseg compress`)")


def manifest_digest(m: dict) -> str:
    """sha256 of the manifest's canonical JSON without its own checksum field."""
    body = {k: v for k, v in m.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
