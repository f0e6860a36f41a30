"""The last step of ``edgeseg compress``: ``OUT/bundle`` from the chosen model (the fastest point
meeting every budget, or the closest one with ``--accept-over-budget``).

Its manifest carries the whole story: the budgets (limits, the model's measured figures on
the validation split, met or ``over_budget``), with ``--runtime auto`` the runtime that won
here (``runtime`` section), the recipe (data folders by name only, no absolute
paths of the machine that made it), the calibration set, every stage's figures, the INT8
guard's decisions, the validation Dice against the teacher's, the teacher by name and sha256,
and the drift guard's input statistics, taken from the calibration images (the same seeded
choice ``load_calibration`` made, checked against its fingerprint).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.data import folders as D
from edgeseg.errors import ConfigError
from edgeseg.runtime.bundle import read_bundle, write_bundle


def final_bundle(c, src_dir: Path, out: Path, budgets: dict | None = None) -> Path:
    """Write ``out`` (OUT/bundle) from the bundle ``src_dir`` of the chosen stage of the
    compressor ``c`` (a ``Compressor`` whose ``results`` hold that stage's chain), with the whole
    story in its manifest; ``budgets``: the manifest's ``budgets`` section (limits, this model's
    figures, met or over budget)."""
    results = c.results
    src = read_bundle(src_dir)
    m = src.manifest
    changes: dict = {"recipe": _portable_recipe(c.recipe), "calibration": c.calib_info,
                     "stages": [_stage_summary(v) for v in results.values()]}
    if budgets is not None:
        changes["budgets"] = budgets
    timed = results[list(results)[-1]].notes.get("runtimes")
    if timed:  # --runtime auto: the runtime that won on this machine, for Segmenter(runtime="auto")
        from edgeseg.measure.runtimes import RuntimeTiming, runtime_section

        changes["runtime"] = runtime_section(RuntimeTiming(**timed))
    if "quantize" in results:
        q = results["quantize"].notes
        changes["quantization"] = {**m.get("quantization", {}),
                                   **{k: q[k] for k in ("recipe", "method", "float_blocks", "dice_all_int8",
                                                        "dice_fp32", "budget_missed_by") if k in q}}
    changes["metrics"] = {**m.get("metrics", {}), "validation": {
        "split": c.recipe.val_split, "images": len(c.val),
        "dice": results[list(results)[-1]].dice, "teacher_dice": results["teacher"].dice}}
    changes["provenance"] = {**m.get("provenance", {}), "teacher_checkpoint": c.checkpoint.name,
                             "teacher_sha256": c.state["checkpoint_sha256"]}
    # [drift guard] the input statistics of the calibration images (not the export stage's parity
    # images); None removes the export's statistics when the calibration set is too small
    changes["input_stats"] = calibration_input_stats(c)
    if m.precision == "int8" or "temperature" not in m.sections:
        changes.update(refit_confidence(c, src_dir))
    return write_bundle(out, {"model.onnx": src.model_file}, m.derive(**changes))


def refit_confidence(c, bundle_dir: Path) -> dict:
    """[temperature] + [uncertainty] fitted on the shipped graph itself (an INT8 graph's
    probabilities are not its FP32 source's) with the validation images that scored it."""
    from edgeseg.export.confidence import confidence_sections
    from edgeseg.runtime.segmenter import Segmenter

    seg = Segmenter(bundle_dir)
    try:
        return confidence_sections(seg, [(n, img, gt) for n, img, gt in c.val_pairs()], "validation images")
    finally:
        seg.close()


def calibration_input_stats(c) -> dict | None:
    """[drift guard] ``input_stats`` from the raw uint8 calibration images: the same images
    ``load_calibration`` chose (same seeded choice, checked against its fingerprint)."""
    from edgeseg.export.pipeline import input_stats_for

    samples = D.discover(c.calib_root, split=c.recipe.calib_split, require_masks=False)
    if len(samples) > c.recipe.calib_count:
        rng = np.random.default_rng(c.recipe.seed)
        keep = np.sort(rng.choice(len(samples), size=int(c.recipe.calib_count), replace=False))
        samples = [samples[i] for i in keep]
    if D.fingerprint(samples)["sha256"] != c.calib_info.get("sha256"):
        raise ConfigError(f"the calibration images in {c.calib_root} changed during the run; "
                          "rerun compress so the bundle's input statistics match its INT8 calibration")
    return input_stats_for(samples, what="calibration images", intensity=c.meta.intensity or None)  # [intensity]


def _portable_recipe(r) -> dict:
    """The recipe for a bundle's manifest: data folders by name only (no absolute paths of the
    machine that made it)."""
    d = r.to_dict()
    for k in ("calib", "val", "train", "distill_images"):
        if d.get(k):
            d[k] = Path(d[k]).name
    return d


def _stage_summary(s) -> dict:
    keys = ("name", "params", "gflops", "size_mb", "precision", "p50_ms", "dice", "iou", "dice_drop")
    return {k: getattr(s, k) for k in keys}
