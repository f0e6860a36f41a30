"""The INT8 accuracy guard of ``edgeseg compress``.

:func:`guard_fallback` is the rule: quantize every block; when the Dice drop against the
teacher exceeds the budget, return the blocks that hurt most to float until it holds.
:func:`quantize_guarded` applies it to an exported FP32 bundle: it calibrates once
(``edgeseg.quantize.Int8Quantizer``), builds and scores each candidate in a temporary folder,
and writes the chosen one as an INT8 bundle (manifest by ``edgeseg.quantize.int8_manifest``).
Weight-only targets quantize no activations, so they need no search. With a ``talk``
(``edgeseg.compress.progress.Narrator``) it says when calibration starts and how long it took,
and shows a bar over the candidates it builds and scores.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

from edgeseg.runtime.files import sha256_file

QUANT_TOL = 0.002  # the most Dice INT8 alone may cost when the FP32 model already used the budget


def guard_fallback(groups: list[str], dice_of, teacher_dice: float, fp32_dice: float, budget: float | None):
    """The INT8 accuracy guard. ``dice_of(float_blocks)`` quantizes everything except those
    blocks and returns the validation Dice. Returns (blocks kept float, final Dice, notes).

    1. Quantize every block; if the drop vs the teacher is within budget (or no budget), done.
       (When the FP32 model is already over budget, the target becomes FP32 Dice - QUANT_TOL.)
    2. Sensitivity: for each block, the Dice recovered when it alone stays float.
    3. Return blocks to float, most sensitive first, until the budget holds (or no block that
       helps is left); the notes say which, why, and by how much a missed budget was missed.
    """
    notes: dict = {"float_blocks": [], "sensitivity": {}, "dice_fp32": fp32_dice}
    excluded: list[str] = []
    dice = dice_of(excluded)
    notes["dice_all_int8"] = dice
    if budget is None:
        return excluded, dice, notes
    target = teacher_dice - budget
    if fp32_dice < target:
        # the FP32 model already spent the budget (pruning/distillation): no INT8 fallback can win
        # it back, so only INT8's own cost is bounded, by QUANT_TOL, instead of keeping ever more
        # blocks in float for gains below the noise of the validation set
        notes["fp32_over_budget_by"] = target - fp32_dice
        target = fp32_dice - QUANT_TOL
    notes["target_dice"] = target
    if dice >= target:
        if teacher_dice - dice > budget:
            notes["budget_missed_by"] = teacher_dice - dice - budget
        return excluded, dice, notes
    gains = {g: dice_of([g]) - dice for g in groups}
    notes["sensitivity"] = gains
    for g in sorted(gains, key=gains.get, reverse=True):
        if gains[g] <= 0:
            break
        excluded.append(g)
        dice = dice_of(excluded)
        notes["float_blocks"].append({"block": g, "dice_gain_alone": gains[g], "dice_after": dice})
        if dice >= target:
            break
    if teacher_dice - dice > budget:
        notes["budget_missed_by"] = teacher_dice - dice - budget
    return excluded, dice, notes


def guard_budgets(groups: list[str], score_of, budgets, fp32_fig: dict, teacher_dice: float, fp32_dice: float):
    """The INT8 guard against *every* budget (``edgeseg.measure.budgets``), not only the mean:
    ``score_of(float_blocks)`` quantizes everything except those blocks and returns
    ``(validation Dice, fidelity figures against the teacher)``. Returns (blocks kept float,
    final Dice, notes), as :func:`guard_fallback`.

    When the FP32 model already misses a budget, no INT8 model can meet them all, so INT8's own
    cost is bounded by :func:`guard_fallback`'s Dice rule instead. Otherwise:

    1. Quantize every block; when every budget holds, done.
    2. Sensitivity: for each block, how much closer to every budget (``budgets.shortfall``,
       each miss scaled by its budget) the model gets when that block alone stays float.
    3. Return blocks to float, most helpful first, until every budget holds (or no block that
       helps is left); the notes name the budgets still missed.
    """
    from edgeseg.measure.budgets import check, shortfall

    if shortfall(fp32_fig, budgets) > 0:
        excluded, dice, notes = guard_fallback(groups, lambda ex: score_of(ex)[0], teacher_dice, fp32_dice,
                                               budgets.max_dice_drop)
        notes["rule"] = "mean Dice (the FP32 model already misses a budget)"
        return excluded, dice, notes
    notes: dict = {"rule": "every budget", "float_blocks": [], "sensitivity": {}, "dice_fp32": fp32_dice}
    excluded: list[str] = []
    dice, fig = score_of(excluded)
    base = shortfall(fig, budgets)
    notes.update(dice_all_int8=dice, missed_all_int8=[m["budget"] for m in check(fig, budgets)])
    if base > 0:
        gains = {g: base - shortfall(score_of([g])[1], budgets) for g in groups}
        notes["sensitivity"] = gains
        for g in sorted(gains, key=gains.get, reverse=True):
            if gains[g] <= 0:
                break
            excluded.append(g)
            dice, fig = score_of(excluded)
            left = shortfall(fig, budgets)
            notes["float_blocks"].append({"block": g, "shortfall_gain_alone": gains[g], "dice_after": dice,
                                          "shortfall_after": left})
            if left == 0:
                break
    missed = [m["budget"] for m in check(fig, budgets)]
    if missed:
        notes["budgets_missed"] = missed
    return excluded, dice, notes


def quantize_guarded(export_dir: Path, q_dir: Path, *, target: str, method: str, calib, calib_info: dict,
                     dice_of_bundle: Callable[[Path], float], teacher_dice: float, fp32_dice: float,
                     budget: float | None, work: Path, talk=None, budgets=None, score_of_bundle=None,
                     fp32_fig: dict | None = None) -> dict:
    """Write the INT8 bundle ``q_dir`` from the FP32 bundle ``export_dir``; returns the notes
    (recipe, method, calibration, and the guard's decisions). ``dice_of_bundle(path)`` scores
    a candidate bundle on the validation images; ``work`` holds the temporary candidates.
    With ``budgets`` (an ``edgeseg.measure.budgets.Budgets``), ``score_of_bundle(path) -> (Dice,
    fidelity)`` and the FP32 model's fidelity ``fp32_fig``, the guard keeps every budget
    (:func:`guard_budgets`) instead of the mean Dice drop alone."""
    every = budgets is not None and score_of_bundle is not None and fp32_fig is not None
    from edgeseg.quantize import TARGETS, Int8Quantizer, int8_manifest, weight_only_int8
    from edgeseg.quantize.parity import int8_parity
    from edgeseg.runtime.bundle import read_bundle, write_bundle

    src = read_bundle(export_dir)
    source_sha = sha256_file(src.model_file)
    if TARGETS[target].weight_only:
        with tempfile.TemporaryDirectory(prefix=".edgeseg-q-", dir=work) as td:
            onnx_path = weight_only_int8(src.model_file, Path(td) / "model.onnx")
            m = int8_manifest(src.manifest, target, calib_info=None, source_sha256=source_sha)
            par = int8_parity(src.model_file, onnx_path, calib, m.session_config or None)
            write_bundle(q_dir, {"model.onnx": onnx_path}, m.derive(parity=par))
        return {"recipe": target, "method": "none (weight-only)", "calibration": calib_info, "float_blocks": [],
                "dice_fp32": fp32_dice}

    say = talk.say if talk is not None else (lambda msg: None)
    say(f"  quantize: calibrating INT8 ranges ({method}) on {len(calib)} images")
    t0 = time.perf_counter()
    qz = Int8Quantizer(src.model_file, calib, target, method, calib_info=calib_info)
    groups = qz.node_groups()
    more = "" if budget is None and not every else (
        f"; when that misses {'a' if every else 'the'} budget, one per block ({len(groups)}) to find the sensitive "
        "ones, then one per block returned to float")
    say(f"  quantize: calibrated in {time.perf_counter() - t0:.0f} s; the guard builds and scores an all-INT8 "
        f"model{more}")
    notes: dict = {"recipe": target, "method": method, "calibration": calib_info}
    with tempfile.TemporaryDirectory(prefix=".edgeseg-q-", dir=work) as td:
        built: dict[tuple, Path] = {}

        bar = talk.bar(total=None, desc="INT8 guard: candidates", unit="model") if talk is not None else None

        scores: dict[tuple, tuple] = {}

        def score_of(exclude: list[str]) -> tuple:
            key = tuple(exclude)
            if key not in scores:
                scores[key] = _build_and_score(exclude)
            return scores[key]

        def dice_of(exclude: list[str]) -> float:
            return score_of(exclude)[0]

        def _build_and_score(exclude: list[str]) -> tuple:
            tag = f"q{len(built)}"
            onnx_path = Path(td) / f"{tag}.onnx"
            qz.quantize(onnx_path, exclude=[n for g in exclude for n in groups[g]])
            bdir = Path(td) / f"{tag}.bundle"
            write_bundle(bdir, {"model.onnx": onnx_path},
                         int8_manifest(src.manifest, target, method=method, calib_info=calib_info,
                                       float_blocks=exclude, source_sha256=source_sha))
            built[tuple(exclude)] = bdir
            scored = score_of_bundle(bdir) if every else (dice_of_bundle(bdir), None)
            if bar is not None:
                bar.update(1)
            return scored

        try:
            if every:
                excluded, _, guard = guard_budgets(list(groups), score_of, budgets, fp32_fig, teacher_dice, fp32_dice)
            else:
                excluded, _, guard = guard_fallback(list(groups), dice_of, teacher_dice, fp32_dice, budget)
        finally:
            if bar is not None:
                bar.close()
        notes.update(guard)
        chosen = read_bundle(built[tuple(excluded)])  # sealed again with its own parity check
        par = int8_parity(src.model_file, chosen.model_file, calib, chosen.manifest.session_config or None)
        write_bundle(q_dir, {"model.onnx": chosen.model_file}, chosen.manifest.derive(parity=par))
    return notes
