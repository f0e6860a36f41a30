"""Load and save SegFormer checkpoints (Hugging Face directories), variants and tiny test configs.

A checkpoint is a standard ``save_pretrained`` directory (config.json + model.safetensors);
edgeseg adds ``edgeseg_checkpoint.json`` with what a deployment needs to know and HF does not
keep: pre-processing, class names and colours, validation metrics and provenance.
Nothing here downloads anything: paths must be local directories.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgeseg.checks import integer
from edgeseg.errors import ConfigError, EdgesegError, ModelError
from edgeseg.model.variants import check_config_dict
from edgeseg.runtime.files import atomic_dir, atomic_write_json, read_json
from edgeseg.runtime.preprocess import Preprocess

log = logging.getLogger(__name__)

META_FILE = "edgeseg_checkpoint.json"
META_FORMAT = 1

DEFAULT_COLORS = [(0, 0, 0), (255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0),
                  (200, 64, 255), (0, 220, 220), (255, 128, 0)]


@dataclass
class CheckpointMeta:
    preprocess: Preprocess = field(default_factory=Preprocess)
    classes: list[str] = field(default_factory=lambda: ["background", "foreground"])
    colors: list[tuple[int, int, int]] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    intensity: dict = field(default_factory=dict)  # the intensity policy (edgeseg.runtime.intensity); {}: none
    recorded: bool = True  # False when read from a plain HF checkpoint without edgeseg metadata

    def __post_init__(self) -> None:
        if not self.colors:
            self.colors = [DEFAULT_COLORS[i % len(DEFAULT_COLORS)] for i in range(len(self.classes))]

    def to_dict(self) -> dict:
        return {
            "format": META_FORMAT,
            "preprocess": self.preprocess.to_dict(),
            "classes": list(self.classes),
            "colors": [list(c) for c in self.colors],
            "metrics": self.metrics,
            "provenance": self.provenance,
            "training": self.training,
            **({"intensity": self.intensity} if self.intensity else {}),
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = META_FILE) -> "CheckpointMeta":
        """Checked: each field has its type (one ModelError line naming ``where`` and the field)."""
        if not isinstance(d, dict):
            raise ModelError(f"{where} must hold a JSON object, got {type(d).__name__}")
        if d.get("format") != META_FORMAT:
            raise ModelError(f"{where}: unknown format {d.get('format')!r} (this edgeseg reads {META_FORMAT})")
        for key in ("metrics", "provenance", "training"):
            if not isinstance(d.get(key, {}), dict):
                raise ModelError(f"{where}: '{key}' must be a JSON object, got {type(d[key]).__name__}")
        return cls(
            preprocess=_preprocess(d.get("preprocess", {}), where),
            classes=_classes(d.get("classes", ["background", "foreground"]), where),
            colors=_colors(d.get("colors", []), where),
            metrics=d.get("metrics", {}),
            provenance=d.get("provenance", {}),
            training=d.get("training", {}),
            intensity=_intensity(d.get("intensity"), where),
        )


def _preprocess(p, where: str) -> Preprocess:
    if not isinstance(p, dict):
        raise ModelError(f"{where}: 'preprocess' must be a JSON object, got {type(p).__name__}")
    for key in ("mean", "std"):
        v = p.get(key, [0.5] * 3)
        if not isinstance(v, list) or len(v) != 3 or any(isinstance(x, bool) or not isinstance(x, (int, float))
                                                         for x in v):
            raise ModelError(f"{where}: preprocess '{key}' must list three numbers, got {v!r}"[:300])
    try:
        return Preprocess.from_dict(p)
    except EdgesegError as exc:
        raise ModelError(f"{where}: preprocess: {exc}") from None


def _intensity(d, where: str) -> dict:
    """The recorded intensity policy, checked ({} when none)."""
    if not d:
        return {}
    from edgeseg.runtime.intensity import IntensityPolicy

    try:
        return IntensityPolicy.from_dict(d).to_dict()
    except EdgesegError as exc:
        raise ModelError(f"{where}: {exc}") from None


def _classes(v, where: str) -> list[str]:
    if (not isinstance(v, list) or len(v) < 2 or not all(isinstance(c, str) and c for c in v)
            or len(set(v)) != len(v)):
        raise ModelError(f"{where}: 'classes' must list at least two distinct class names, got {v!r}"[:300])
    return list(v)


def _colors(v, where: str) -> list[tuple[int, int, int]]:
    ok = isinstance(v, list) and all(
        isinstance(c, list) and len(c) == 3
        and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 255 for x in c) for c in v)
    if not ok:
        raise ModelError(f"{where}: 'colors' must list [r, g, b] triples of whole numbers 0-255, got {v!r}"[:300])
    return [tuple(c) for c in v]


def read_config(path: Path) -> dict:
    """A checkpoint's ``config.json``, checked: a JSON object whose fields have their types."""
    cfg = path / "config.json"
    d = read_json(cfg, ModelError, what=str(cfg))
    archs = d.get("architectures")
    if archs is not None and (not isinstance(archs, list) or not all(isinstance(a, str) for a in archs)):
        raise ModelError(f"{cfg}: 'architectures' must list class names, got {archs!r}"[:300])
    if d.get("model_type") != "segformer":
        return d  # the caller names what it is instead
    if "num_labels" in d:
        integer("num_labels", d["num_labels"], 1, 10_000, error=lambda m: ModelError(f"{cfg}: {m}"))
    if not isinstance(d.get("id2label", {}), dict):
        raise ModelError(f"{cfg}: 'id2label' must map class indices to names, got {type(d['id2label']).__name__}")
    try:
        check_config_dict(d, str(cfg), heads=not d.get("edgeseg_widths"))
    except ConfigError as exc:
        raise ModelError(str(exc)) from None
    return d


def _check_dir(path: Path) -> dict:
    if not path.exists():
        raise ModelError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise ModelError(f"{path} is not a checkpoint directory (expected config.json + model.safetensors)")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ModelError(f"{path} has no config.json: not a Hugging Face checkpoint")
    d = read_config(path)
    if d.get("model_type") != "segformer":
        raise ModelError(f"{path} holds a {d.get('model_type')!r} model, not a SegFormer")
    archs = d.get("architectures") or ["SegformerForSemanticSegmentation"]
    if "SegformerForSemanticSegmentation" not in archs:
        raise ModelError(f"{path} is a {archs[0]}, not a SegformerForSemanticSegmentation")
    weights = path / "model.safetensors"
    if not weights.is_file():
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise ModelError(f"{path} has only pickle weights (.bin/.pt); edgeseg loads safetensors only")
        raise ModelError(f"{path} has no model.safetensors")
    return d


def _check_safetensors(weights: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
            if keys:
                f.get_slice(keys[-1])
        size = weights.stat().st_size
        with open(weights, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end != size:
            raise ValueError(f"expected {8 + n + end} bytes, found {size}")
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise ModelError(f"{weights} is corrupt or truncated: {exc}") from None


def read_meta(path: str | Path) -> CheckpointMeta:
    path = Path(path)
    mp = path / META_FILE
    if mp.is_file():
        return CheckpointMeta.from_dict(read_json(mp, ModelError, what=str(mp)), str(mp))
    # A plain HF checkpoint: take what its files say, and say that we did.
    d = read_config(path)
    id2label = d.get("id2label") or {}
    n = int(d.get("num_labels", len(id2label) or 2))
    classes = [str(id2label.get(str(i), f"class_{i}")) for i in range(n)]
    pp = Preprocess()
    ppf = path / "preprocessor_config.json"
    if ppf.is_file():
        pp = _hf_preprocess(read_json(ppf, ModelError, what=str(ppf)), pp, str(ppf))
    else:
        log.warning("%s has no %s or preprocessor_config.json: assuming %dx%d input with ImageNet mean/std",
                    path, META_FILE, pp.height, pp.width)
    return CheckpointMeta(preprocess=pp, classes=classes, recorded=False)


def _hf_preprocess(p: dict, default: Preprocess, where: str) -> Preprocess:
    """A Hugging Face ``preprocessor_config.json`` as our Preprocess (size, mean, std), checked."""
    size = p.get("size", {})
    if not isinstance(size, dict):
        raise ModelError(f"{where}: 'size' must be an object with height and width, got {size!r}"[:300])
    return _preprocess({"height": size.get("height", default.height), "width": size.get("width", default.width),
                        "mean": p.get("image_mean", list(default.mean)), "std": p.get("image_std", list(default.std))},
                       where)


def load_checkpoint(path: str | Path, device: str = "cpu"):
    """Load a SegFormer checkpoint directory -> (model in eval mode, CheckpointMeta)."""
    from transformers import SegformerForSemanticSegmentation
    from transformers.utils import logging as hf_logging

    path = Path(path)
    cfg = _check_dir(path)
    _check_safetensors(path / "model.safetensors")
    meta = read_meta(path)
    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        if cfg.get("edgeseg_widths"):
            from edgeseg.model.shapes import load_pruned

            model = load_pruned(path)
        else:
            model = SegformerForSemanticSegmentation.from_pretrained(str(path), use_safetensors=True)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot load {path}: {str(exc).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if model.config.num_labels != len(meta.classes):
        raise ModelError(f"{path}: model has {model.config.num_labels} outputs but {len(meta.classes)} class names")
    return model.to(device).eval(), meta


def checkpoint_sha256(path: str | Path) -> str:
    """sha256 over config.json and model.safetensors: identifies the source of every bundle."""
    path = Path(path)
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        with open(path / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def save_checkpoint(model, meta: CheckpointMeta, out: str | Path, keep: tuple[str, ...] = ()) -> Path:
    """Write an HF checkpoint directory (safetensors) plus edgeseg metadata, atomically.

    ``keep``: names inside an existing ``out`` carried over into the new one (train's resume state)."""
    out = Path(out)
    model.config.id2label = {i: c for i, c in enumerate(meta.classes)}
    model.config.label2id = {c: i for i, c in enumerate(meta.classes)}
    from transformers.utils import logging as hf_logging

    from edgeseg.model.shapes import annotate_config

    hf_logging.disable_progress_bar()
    annotate_config(model)
    with atomic_dir(out) as tmp:
        if getattr(model.config, "edgeseg_widths", None):
            # non-standard shapes: our own key names, which load_pruned reads back 1:1
            from safetensors.torch import save_file

            model.config.save_pretrained(str(tmp))
            save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
                      str(tmp / "model.safetensors"), metadata={"format": "pt"})
        else:
            model.save_pretrained(str(tmp), safe_serialization=True)
        atomic_write_json(tmp / META_FILE, meta.to_dict())
        for name in keep:  # last, so that a failure above leaves them where they were
            if (out / name).exists():
                os.replace(out / name, tmp / name)
    return out
