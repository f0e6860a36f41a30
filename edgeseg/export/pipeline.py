"""``edgeseg export``: checkpoint -> (folded) ONNX -> parity check on real images -> bundle."""

from __future__ import annotations

import logging
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from edgeseg import __version__
from edgeseg.data import folders as D
from edgeseg.errors import ConfigError, DataError
from edgeseg.export.onnx import ExportConfig, export_onnx
from edgeseg.export.validate import Tolerance, check, parity, tolerance_dict
from edgeseg.model.checkpoint import CheckpointMeta, checkpoint_sha256, load_checkpoint
from edgeseg.runners import torch_segmenter
from edgeseg.runtime.bundle import write_bundle
from edgeseg.runtime.segmenter import Segmenter

log = logging.getLogger(__name__)

EMBEDDED_DATA = Path(__file__).resolve().parents[2] / "calibration_data"


def recorded_data(meta: CheckpointMeta) -> tuple[Path, str | None] | None:
    """The validation images a checkpoint was trained with, when they can still be read here:
    the recorded folder, or the embedded set when the model was trained on it (its training set's
    fingerprint matches: the synthetic images are never used for a model they did not train)."""
    prov = meta.provenance or {}
    rec, val_split = prov.get("data"), prov.get("val_split")
    if isinstance(rec, str) and Path(rec).is_dir():
        return Path(rec), val_split if D.has_split(Path(rec), val_split) else None
    train_set = prov.get("train_set") or {}
    if (EMBEDDED_DATA / "images").is_dir() and isinstance(train_set, dict) and train_set.get("sha256"):
        try:
            ours = D.fingerprint(D.discover(EMBEDDED_DATA, prov.get("train_split")))["sha256"]
        except DataError:
            return None
        if ours == train_set["sha256"]:
            return EMBEDDED_DATA, val_split if D.has_split(EMBEDDED_DATA, val_split) else None
    return None


def parity_samples(data: str | Path | None, split: str | None, limit: int,
                   meta: CheckpointMeta | None = None) -> list[D.Sample]:
    """The images for the parity check and the drift statistics: the user's (``data``), else the
    validation images recorded in the checkpoint if readable here; never a guess."""
    if data is None:
        found = recorded_data(meta) if meta is not None else None
        if found is None:
            raise ConfigError("export needs real images for its parity check and the drift guard's statistics: "
                              "pass --data DIR (the images this model will see; masks optional) and --split NAME; "
                              "the checkpoint records no training data that can be read here")
        data, rec_split = found
        split = split or rec_split
        log.warning("parity check and drift statistics on %s%s (recorded in the checkpoint)", data.name,
                    f" split {split}" if split else "")
    root = Path(data)
    labelled = (root / "masks").is_dir()
    samples = D.discover(root, split, require_masks=labelled)
    return samples[:limit] if limit else samples


def versions() -> dict:
    import numpy
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {"edgeseg": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def manifest_for(meta: CheckpointMeta, source: Path | None, extra: dict | None = None) -> dict:
    m = {
        "model": "model.onnx",
        "preprocess": meta.preprocess.to_dict(),
        "classes": list(meta.classes),
        "colors": [list(c) for c in meta.colors],
        "provenance": {
            "source_checkpoint": str(source) if source else None,
            "source_sha256": checkpoint_sha256(source) if source else None,
            "checkpoint_provenance": meta.provenance,
            "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "metrics": {"checkpoint": meta.metrics},
        **({"intensity": meta.intensity} if meta.intensity else {}),  # [intensity] applied by the runtime
    }
    if extra:
        m.update(extra)
    return m


# --- [drift guard] input statistics recorded in the manifest -----------------------------
def input_stats_for(samples: list[D.Sample], what: str = "parity images", intensity=None) -> dict | None:
    """Calibration statistics of the images (``input_stats``, see edgeseg.runtime.drift), or
    None (with a warning) when there are too few images to set a threshold from. With an
    ``intensity`` policy: of the images it maps (what the runtime's drift guard sees)."""
    from edgeseg.runtime.drift import MIN_IMAGES, image_stats

    if len(samples) < MIN_IMAGES:
        log.warning("only %d image(s): no input statistics recorded (the drift guard needs at least %d)",
                    len(samples), MIN_IMAGES)
        return None
    stats = image_stats([D.read_image(s.image, intensity) for s in samples])
    stats["source"] = {"what": what, "images": len(samples), "sha256": D.fingerprint(samples)["sha256"]}
    return stats
# --- [/drift guard] ----------------------------------------------------------------------


def export_bundle(checkpoint: str | Path, out: str | Path, cfg: ExportConfig = ExportConfig(),
                  data: str | Path | None = None, split: str | None = None, limit: int = 16,
                  tol: Tolerance | None = None, model=None, meta: CheckpointMeta | None = None,
                  extra_manifest: dict | None = None, overwrite: bool = False) -> tuple[Path, dict]:
    """Export a checkpoint to a verified bundle. Returns (bundle path, parity report).

    ``out`` must be new, or an earlier bundle when ``overwrite``: checked before any work."""
    from edgeseg.outputs import check_output

    checkpoint = Path(checkpoint) if checkpoint else None
    check_output(out, "bundle", inputs=[checkpoint, data], overwrite=overwrite)
    if model is None:
        model, meta = load_checkpoint(checkpoint)
    samples = parity_samples(data, split, limit, meta)
    pp = meta.preprocess
    info = {"preprocess": pp.to_dict(), "classes": meta.classes, "colors": [list(c) for c in meta.colors],
            **({"intensity": meta.intensity} if meta.intensity else {})}
    tol = tol or Tolerance.for_precision("fp16" if cfg.fp16 else "fp32")
    with tempfile.TemporaryDirectory(prefix=".edgeseg-export-", dir=Path(out).parent if Path(out).parent.exists()
                                     else None) as td:
        onnx_path = export_onnx(model, Path(td) / "model.onnx", pp.height, pp.width, cfg, metadata=info)
        ref = torch_segmenter(model, meta)
        cand = Segmenter(onnx_path)
        rep = parity(ref, cand, samples, check_logits=cfg.postprocess == "none")
        rep["tolerance"] = tolerance_dict(tol)
        check(rep, tol, "exported ONNX")
        manifest = manifest_for(meta, checkpoint, extra_manifest)
        manifest.update(outputs=cand.outputs, precision="fp16" if cfg.fp16 else "fp32",
                        export=asdict(cfg), parity=rep)
        manifest.setdefault("stages", [])
        if "input_stats" not in manifest:  # [drift guard] from the parity images (extra_manifest may give its own)
            stats = input_stats_for(samples, intensity=meta.intensity or None)
            if stats is not None:
                manifest["input_stats"] = stats
        from edgeseg.export.confidence import confidence_sections  # [temperature] + [uncertainty]

        manifest.update(confidence_sections(cand, samples))
        path = write_bundle(out, {"model.onnx": onnx_path}, manifest)
    return path, rep
