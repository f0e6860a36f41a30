"""Numbers that come in from users (options, recipes, configs, saved results), checked by name.

:func:`number` and :func:`integer` refuse NaN, infinities, booleans, strings and values out of
their range with one ``ConfigError`` line that names the option; :func:`option` makes either a
typer callback, so a command-line option is refused while it is parsed, before any work.
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


def option(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False):
    """A typer callback that checks a numeric option (None passes; for an int option the bounds are
    inclusive and it stays an int)."""
    import typer

    def callback(param: typer.CallbackParam, value):
        if value is None:
            return value
        name = max(param.opts, key=len) if param.opts else param.name
        try:
            if isinstance(value, int) and not isinstance(value, bool):
                return integer(name, value, lo, hi)
            return number(name, value, lo, hi, lo_open=lo_open, hi_open=hi_open)
        except ConfigError as exc:
            raise typer.BadParameter(str(exc).removeprefix(f"{name} ")) from None

    return callback
