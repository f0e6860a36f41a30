"""The quantize stage, file to file: an FP32 ONNX model or bundle in, its INT8 version out.

:func:`quantize` is what ``edgeseg quantize`` runs and what ``compress`` composes: it checks
every option and the output location before any work, reads real calibration images for the
targets that need them (never random or implicit data), quantizes with the target's recipe
from :data:`edgeseg.quantize.targets.TARGETS` and writes a bundle when it was given a bundle
(an ONNX file otherwise). :func:`int8_manifest` is the one place that says what an INT8
bundle's manifest records: precision int8, the target, method and float blocks, the recipe, the
calibration set's size and sha256, and the ONNX Runtime session settings the model needs.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from edgeseg.errors import ConfigError, DataError, ModelError
from edgeseg.outputs import check_output, check_output_file
from edgeseg.quantize.graph import edgeseg_meta, load_onnx
from edgeseg.quantize.targets import QuantRecipe, get_target
from edgeseg.runtime.bundle import is_bundle, read_bundle, write_bundle
from edgeseg.runtime.files import sha256_file
from edgeseg.runtime.manifest import WRITER_KEYS, Manifest
from edgeseg.runtime.preprocess import Preprocess

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_METHOD", "DEFAULT_CALIB_COUNT", "quantize", "int8_manifest"]

DEFAULT_METHOD = "percentile"
DEFAULT_CALIB_COUNT = 64
_CALIB_KEYS = ("count", "sha256", "split", "seed")  # never the folder: no absolute paths in a bundle


def int8_manifest(src_manifest: Manifest | dict, target: str | QuantRecipe, *, method: str | None = None,
                  calib_info: dict | None = None, float_blocks: Iterable[str] = (),
                  source_sha256: str | None = None, **changes: Any) -> Manifest:
    """The manifest of an INT8 bundle, derived from its FP32 bundle's manifest.

    It records precision ``int8``; ``quantization`` with the target, the calibration method
    (None for weight-only), the blocks left in float, the recipe and the calibration set's size
    and sha256 (never its folder: no absolute paths in a bundle); ``onnxruntime.session_config``
    when the target needs session settings (weight-only does); ``provenance.quantized_from``
    (the FP32 model's sha256) when ``source_sha256`` is given; and it drops the FP32 export's
    ``parity`` block and its fitted ``temperature`` and ``uncertainty`` profile, which describe the
    FP32 graph, not this one (``compress`` refits both on the INT8 graph with its validation
    images). ``changes`` go to ``derive`` as well.
    """
    if not isinstance(src_manifest, Manifest):
        src_manifest = Manifest.from_dict({k: v for k, v in src_manifest.items() if k not in WRITER_KEYS},
                                          "source manifest", written=False)
    recipe = get_target(target)
    calib = {k: calib_info[k] for k in _CALIB_KEYS if k in calib_info} if calib_info else None
    quant = {"target": recipe.name, "method": None if recipe.weight_only else method,
             "weight_only": recipe.weight_only, "float_blocks": list(float_blocks), "recipe": recipe.to_dict(),
             "calibration_set": calib}
    ort = {k: v for k, v in (src_manifest.sections.get("onnxruntime") or {}).items() if k != "session_config"}
    if recipe.session_config:
        ort["session_config"] = dict(recipe.session_config)
    if source_sha256:
        changes["provenance"] = {**(src_manifest.sections.get("provenance") or {}),
                                 "quantized_from": {"model_sha256": source_sha256,
                                                    "precision": src_manifest.precision}}
    changes = {"temperature": None, "uncertainty": None, **changes}
    return src_manifest.derive(precision="int8", quantization=quant, onnxruntime=ort or None, parity=None, **changes)


def _source(src: Path) -> tuple[Path, Preprocess, Any]:
    """(model file, pre-processing, bundle manifest or None) of an FP32 bundle or ONNX file."""
    if is_bundle(src):
        b = read_bundle(src)
        model, pp, manifest, precision = b.model_file, b.preprocess, b.manifest, b.manifest["precision"]
    elif src.is_file() and src.suffix.lower() == ".onnx":
        meta = edgeseg_meta(load_onnx(src))
        if not meta or "preprocess" not in meta:
            raise ModelError(f"{src} carries no edgeseg metadata, so its pre-processing is unknown: export it "
                             "with `edgeseg export` and quantize the bundle")
        model, pp, manifest, precision = src, Preprocess.from_dict(meta["preprocess"]), None, meta.get("precision")
    elif not src.exists():
        raise ConfigError(f"model not found: {src} (expected an FP32 bundle folder or .onnx file)")
    else:
        raise ConfigError(f"{src} is neither a bundle folder (with edgeseg.json) nor an .onnx file")
    if precision not in (None, "fp32"):
        raise ConfigError(f"{src} is {precision}; INT8 quantization starts from the FP32 model "
                          "(quantize the FP32 bundle that `edgeseg export` wrote)")
    return model, pp, manifest


def _check_out(src: Path, out: Path, bundle: bool, overwrite: bool) -> None:
    """The output matches the input's kind (a bundle folder or an .onnx file); where it may be
    written is :mod:`edgeseg.outputs`' one policy (never the input, never a foreign folder)."""
    if not bundle and out.suffix.lower() != ".onnx":
        raise ConfigError(f"the input is an ONNX file, so the output is one too: name it *.onnx (got {out})")
    if bundle and out.suffix.lower() == ".onnx":
        raise ConfigError(f"the input is a bundle, so the output is a bundle folder, not an .onnx file ({out})")
    if bundle:
        check_output(out, "bundle", inputs=[src], overwrite=overwrite, flag="output")
    else:
        check_output_file(out, "output", inputs=[src], overwrite=overwrite)


def _calibration(calib, pp: Preprocess, recipe: QuantRecipe, count: int, split: str | None, seed: int,
                 allow_few: bool, intensity=None) -> tuple[np.ndarray | None, dict | None]:
    from edgeseg.data.calibration import load_calibration

    if not recipe.needs_calibration:
        if calib is not None or split is not None:
            raise ConfigError(f"target {recipe.name!r} is weight-only and uses no calibration images; "
                              "leave out --calib/--calib-split")
        return None, None
    if calib is None:
        raise ConfigError(f"target {recipe.name!r} needs calibration images: pass --calib DIR with real images "
                          "of the kind the model will see (64-512 is typical). edgeseg never calibrates on random "
                          "data, nor on its embedded synthetic set unless you name that folder yourself")
    if isinstance(calib, tuple):  # already loaded: (N x 3 x h x w float32, info) from load_calibration
        return calib
    root = Path(calib)
    if not root.is_dir():
        raise DataError(f"calibration folder not found: {root} (expected a folder of images, or a dataset "
                        "folder with images/)")
    return load_calibration(root, pp, count=count, split=split, seed=seed, allow_few=allow_few, intensity=intensity)


def quantize(src: str | Path, out: str | Path, target: str, calib: str | Path | tuple | None = None,
             method: str | None = None, *, calib_split: str | None = None,
             calib_count: int = DEFAULT_CALIB_COUNT, seed: int = 0, allow_few: bool = False,
             float_blocks: Iterable[str] = (), overwrite: bool = False) -> Path:
    """Quantize an FP32 bundle (or .onnx file) ``src`` to INT8 for ``target``; write ``out``.

    ``target`` is a name in :data:`~edgeseg.quantize.targets.TARGETS`. ``calib`` (required
    unless the target is weight-only) is a folder of real images, or a dataset folder whose
    ``images/`` are used, with ``calib_split``, ``calib_count`` and ``seed`` choosing the images
    (see :func:`~edgeseg.data.calibration.load_calibration`); an already loaded
    ``(array, info)`` pair is accepted too. ``method`` is a range estimator of
    :data:`~edgeseg.quantize.static.CALIBRATION_METHODS` (default ``percentile``).
    ``float_blocks`` names SegFormer blocks (see :func:`~edgeseg.quantize.graph.group_of`) to leave
    in float. ``out`` is a bundle folder when ``src`` is a bundle, an ``.onnx`` file otherwise;
    an existing ``out`` is replaced only with ``overwrite`` and only if it is of that kind.
    Everything is checked before any work. Returns ``out``.
    """
    recipe = get_target(target)
    src, out = Path(src), Path(out)
    float_blocks = [float_blocks] if isinstance(float_blocks, str) else list(float_blocks)
    if recipe.weight_only:
        if method is not None:
            raise ConfigError(f"target {recipe.name!r} is weight-only: it has no calibration method (leave out --method)")
        if float_blocks:
            raise ConfigError(f"target {recipe.name!r} is weight-only: every weight is stored in INT8, there are "
                              "no float blocks to choose")
    else:
        from edgeseg.quantize.static import get_calibration

        method = get_calibration(method or DEFAULT_METHOD).name
    model_file, pp, manifest = _source(src)
    _check_out(src, out, manifest is not None, overwrite)
    x, info = _calibration(calib, pp, recipe, calib_count, calib_split, seed, allow_few,
                           manifest.get("intensity") if manifest is not None else None)  # [intensity]

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.q-", dir=out.parent) as td:
        onnx_out = out if manifest is None else Path(td) / "model.onnx"
        _write_int8(model_file, onnx_out, recipe, method, x, info, float_blocks)
        if manifest is None:
            return out
        from edgeseg.quantize.parity import int8_parity

        m = int8_manifest(manifest, recipe, method=method, calib_info=info, float_blocks=float_blocks,
                          source_sha256=sha256_file(model_file), model="model.onnx")
        m = m.derive(parity=int8_parity(model_file, onnx_out, x, m.session_config or None))
        return write_bundle(out, {"model.onnx": onnx_out}, m, overwrite=True)


def _write_int8(model_file: Path, out: Path, recipe: QuantRecipe, method: str | None, x, info,
                float_blocks: list[str]) -> Path:
    if recipe.weight_only:
        from edgeseg.quantize.weight_only import weight_only_int8

        return weight_only_int8(model_file, out)
    from edgeseg.export.qdq_rules import tensorrt_qdq_problems
    from edgeseg.quantize.static import Int8Quantizer

    qz = Int8Quantizer(model_file, x, recipe, method, calib_info=info)
    groups = qz.node_groups()
    unknown = [g for g in float_blocks if g not in groups]
    if unknown:
        raise ConfigError(f"unknown block(s) {', '.join(unknown)}; this model has: {', '.join(groups)}")
    qz.quantize(out, exclude=[n for g in float_blocks for n in groups[g]])
    if recipe.tensorrt_qdq:  # the target's promise: an ONNX that TensorRT's explicit quantization takes
        problems = tensorrt_qdq_problems(out)
        if problems:
            out.unlink(missing_ok=True)
            raise ModelError(f"the INT8 model breaks {len(problems)} TensorRT Q/DQ rule(s), e.g. {problems[0]}")
    return out
