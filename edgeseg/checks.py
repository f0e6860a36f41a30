"""Numbers that come in from users (options, recipes, configs, saved results), checked by name.

:func:`number` and :func:`integer` refuse NaN, infinities, booleans, strings and values out of
their range with one ``ConfigError`` line that names the option. :data:`OPTION_RANGES` is the
one table of what each numeric command-line option accepts; the CLI checks every parsed value
against it (:func:`check_options`) before a command does any work.
A NaN must never reach a comparison: ``x > nan`` is always false, so a NaN tolerance would
quietly switch a gate off.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

from edgeseg.errors import ConfigError


def _range(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return "finite"


def number(name: str, value: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False, error: Callable[[str], Exception] = ConfigError) -> float:
    """``value`` as a float when it is a finite real number within the range, else ``error``
    naming ``name``. ``lo_open``/``hi_open`` exclude the bounds."""
    want = _range(lo, hi, lo_open, hi_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{name} must be a number {want}, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise error(f"{name} must be a finite number {want}, got {value!r}")
    if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and (v > hi or (hi_open and v == hi))):
        raise error(f"{name} must be {want}, got {value!r}")
    return v


def integer(name: str, value: Any, lo: int | None = None, hi: int | None = None,
            error: Callable[[str], Exception] = ConfigError) -> int:
    """``value`` as an int when it is a whole number (not a bool, not 2.5) within [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{name} must be a whole number {_range(lo, hi, False, False)}, got "
                    f"{type(value).__name__} {value!r}")
    return int(number(name, int(value), lo, hi, error=error))


# Every numeric option of every command: (command, parameter) -> (lo, hi, lo_open, hi_open).
# edgeseg.cli checks the values it parsed against this table before a command does any work
# (tests/test_bad_inputs_numbers.py fails when an option is missing from it).
AT_LEAST_1 = (1, None, False, False)
AT_LEAST_0 = (0, None, False, False)
FRACTION = (0.0, 1.0, False, True)  # [0, 1)
OPTION_RANGES: dict[tuple[str, str], tuple] = {
    **{(cmd, "threads"): AT_LEAST_1 for cmd in ("train", "evaluate", "predict", "bench", "compress", "distill")},
    ("train", "size"): (32, 8192, False, False), ("train", "epochs"): AT_LEAST_1, ("train", "batch_size"): AT_LEAST_1,
    ("train", "lr"): (0.0, 1.0, True, True), ("train", "warmup_steps"): AT_LEAST_0,
    ("train", "time_budget"): (0.0, None, True, False), ("train", "seed"): (0, 2**32 - 1, False, False),
    ("export", "opset"): (13, 23, False, False), ("export", "parity_images"): AT_LEAST_0,
    ("export", "dla_core"): AT_LEAST_0,
    ("quantize", "calib_count"): AT_LEAST_1,
    ("bench", "runs"): AT_LEAST_1, ("bench", "warmup"): AT_LEAST_0, ("bench", "max_images"): AT_LEAST_1,
    ("bench", "tol"): (0.0, None, False, False), ("bench", "tol_dice"): (0.0, 1.0, False, False),
    ("compress", "calib_count"): AT_LEAST_1, ("compress", "prune_ratio"): FRACTION,
    ("compress", "decoder_ratio"): FRACTION, ("compress", "target_macs"): (0.0, 1.0, True, True),
    ("compress", "distill_epochs"): AT_LEAST_0, ("compress", "max_dice_drop"): FRACTION,
    ("prune", "ratio"): FRACTION, ("prune", "decoder_ratio"): FRACTION, ("prune", "calib_count"): AT_LEAST_1,
    ("distill", "epochs"): AT_LEAST_1, ("distill", "batch_size"): AT_LEAST_1, ("distill", "lr"): (0.0, 1.0, True, True),
    ("distill", "temperature"): (0.0, 100.0, True, False), ("distill", "alpha"): (0.0, 1.0, False, False),
    ("explain", "stage"): (1, 4, False, False), ("explain", "threads"): AT_LEAST_1,  # [tracking] issue 13
    ("train", "folds"): (2, None, False, False), ("train", "augment_strength"): (0.0, 3.0, False, False),
    ("train", "dice_weight"): (0.0, 100.0, False, False),
    ("tune", "trials"): AT_LEAST_1, ("tune", "time_budget"): (0.0, None, True, False), ("tune", "epochs"): AT_LEAST_1,
    ("tune", "size"): (32, 8192, False, False), ("tune", "threads"): AT_LEAST_1,
    ("tune", "seed"): (0, 2**32 - 1, False, False),
}


def check_options(command: str, values: dict[str, Any]) -> None:
    """Check a command's parsed options against :data:`OPTION_RANGES` (None means "not given")."""
    for key, value in values.items():
        rng = OPTION_RANGES.get((command, key))
        if rng is None or value is None:
            continue
        lo, hi, lo_open, hi_open = rng
        flag = "--" + key.replace("_", "-")
        if isinstance(value, int) and not isinstance(value, bool):
            integer(flag, value, lo, hi)
        else:
            number(flag, value, lo, hi, lo_open=lo_open, hi_open=hi_open)
