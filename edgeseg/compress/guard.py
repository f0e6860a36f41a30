"""The INT8 accuracy guard of ``edgeseg compress``.

:func:`guard_budgets` is the rule ``compress`` uses: quantize every block; when the model misses
any budget its FP32 model meets (mean or per-image Dice drop, agreement with the teacher, lost
lesions), return the blocks that help most to float until every one holds.
:func:`guard_fallback` is the older rule on the mean Dice drop alone (used when only a Dice
budget is known).
:func:`quantize_guarded` applies it to an exported FP32 bundle: it calibrates once
(``edgeseg.quantize.Int8Quantizer``), builds and scores each candidate in a temporary folder,
and writes the chosen one as an INT8 bundle (manifest by ``edgeseg.quantize.int8_manifest``).
Weight-only targets quantize no activations, so they need no search. With a ``talk``
(``edgeseg.compress.progress.Narrator``) it says when calibration starts and how long it took,
and shows a bar over the candidates it builds and scores.
"""

from __future__ import annotations

import math
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


# how much worse than its FP32 model an INT8 model may be on a budget that FP32 already misses
WORSE_TOL = {"max_dice_drop": QUANT_TOL, "max_image_drop": 0.01, "min_agreement": -0.005, "max_lost_lesions": 0}


def int8_bounds(budgets, fp32_fig: dict):
    """The limits the INT8 guard holds its model to: the user's budgets where the FP32 model
    meets them; where it already misses one (pruning and distillation spent it), no INT8 model
    can meet it, so INT8 may only not make it worse than FP32 by more than :data:`WORSE_TOL`.
    Returns (bounds, {budget: bound} of those relaxed)."""
    from dataclasses import replace

    from edgeseg.measure.budgets import check

    relaxed = {}
    for m in check(fp32_fig, budgets):
        v = m["measured"]
        if v is None or math.isnan(v):  # not measured: the guard cannot hold INT8 to it
            relaxed[m["budget"]] = None
        elif m["budget"] == "max_lost_lesions":
            relaxed[m["budget"]] = int(v)
        else:
            relaxed[m["budget"]] = min(max(float(v) + WORSE_TOL[m["budget"]], 0.0), 1.0)
    return replace(budgets, **relaxed), relaxed


def guard_budgets(groups: list[str], score_of, budgets, fp32_fig: dict, teacher_dice: float, fp32_dice: float):
    """The INT8 guard against *every* budget (``edgeseg.measure.budgets``), not only the mean:
    ``score_of(float_blocks)`` quantizes everything except those blocks and returns
    ``(validation Dice, fidelity figures against the teacher)``. Returns (blocks kept float,
    final Dice, notes), as :func:`guard_fallback`. The limits are :func:`int8_bounds`.

    1. Quantize every block; when every limit holds, done.
    2. Sensitivity: for each block, how much closer to every limit (``budgets.shortfall``, each
       miss scaled by its budget) the model gets when that block alone stays float.
    3. Return blocks to float, most helpful first, until every limit holds (or no block that
       helps is left). The answer is the combination tried that came closest (a later block
       never makes it worse); the notes name the limits still missed.
    """
    from edgeseg.measure.budgets import check, shortfall

    bounds, relaxed = int8_bounds(budgets, fp32_fig)
    notes: dict = {"rule": "every budget", "float_blocks": [], "sensitivity": {}, "dice_fp32": fp32_dice}
    if relaxed:
        notes["rule"] = "every budget; those the FP32 model already misses: no worse than FP32"
        notes["relaxed"] = relaxed
    excluded: list[str] = []
    dice, fig = score_of(excluded)
    base = shortfall(fig, bounds)
    best = (base, [], dice, fig)
    notes.update(dice_all_int8=dice, missed_all_int8=[m["budget"] for m in check(fig, bounds)])
    if base > 0:
        gains = {g: base - shortfall(score_of([g])[1], bounds) for g in groups}
        notes["sensitivity"] = gains
        for g in sorted(gains, key=gains.get, reverse=True):
            if gains[g] <= 0:
                break
            excluded.append(g)
            dice, fig = score_of(excluded)
            left = shortfall(fig, bounds)
            notes["float_blocks"].append({"block": g, "shortfall_gain_alone": gains[g], "dice_after": dice,
                                          "shortfall_after": left})
            if left < best[0]:
                best = (left, list(excluded), dice, fig)
            if left == 0:
                break
    _, kept, dice, fig = best
    if len(kept) < len(excluded):
        notes["float_blocks"] = notes["float_blocks"][:len(kept)]
        notes["dropped_blocks"] = excluded[len(kept):]  # tried, but they did not bring it closer
    missed = [m["budget"] for m in check(fig, bounds)]
    if missed:
        notes["budgets_missed"] = missed
    return kept, dice, notes


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
    every = budgets is not None and score_of_bundle is not None and bool(fp32_fig)
    unguarded = None
    if budgets is not None and score_of_bundle is not None and not fp32_fig:
        unguarded = "mean Dice only: the FP32 model's budget figures were not recorded (an older run's stage)"
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
    if budgets is not None:  # what the guard held the model to: a rerun with other budgets redoes the stage
        notes["budgets_guarded"] = budgets.to_dict()
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
        if unguarded:
            notes["rule"] = unguarded
        chosen = read_bundle(built[tuple(excluded)])  # sealed again with its own parity check
        par = int8_parity(src.model_file, chosen.model_file, calib, chosen.manifest.session_config or None)
        write_bundle(q_dir, {"model.onnx": chosen.model_file}, chosen.manifest.derive(parity=par))
    return notes
