"""The regression gate: compare a bench result with a saved one (``edgeseg bench --baseline``).

:func:`load_result` reads a saved ``edgeseg bench --json`` file (schema ``edgeseg.bench/1``) and
checks the types of the fields the comparison reads;
:func:`compare_baseline` lists what got slower or less accurate, allowing for the noise each
run measured (its robust spread). Rows whose timing was marked noisy are still compared, and
the comparison says so in a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgeseg.checks import number
from edgeseg.errors import ConfigError
from edgeseg.runtime.files import read_json

log = logging.getLogger(__name__)

SCHEMA = "edgeseg.bench/1"


def load_result(path: str | Path) -> dict:
    """A saved bench result, or one ConfigError line saying what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"baseline file not found: {path}")
    d = read_json(path, ConfigError, what=f"baseline {path}")
    if d.get("schema") != SCHEMA:
        raise ConfigError(f"baseline {path} is not an edgeseg bench result (expected schema {SCHEMA!r}); "
                          "write one with `edgeseg bench ... --json FILE`")
    _check_rows(d.get("rows"), f"baseline {path}")
    return d


def _check_rows(rows, where: str) -> None:
    """The fields the comparison reads have their types: a hand-edited or foreign file gives one
    line, never a TypeError deep inside the comparison."""
    def bad(what: str) -> ConfigError:
        return ConfigError(f"{where}: {what}; write the baseline with `edgeseg bench ... --json FILE`")

    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise bad("'rows' must be a list of JSON objects")
    for i, r in enumerate(rows):
        for key in ("name", "model", "backend"):
            if r.get(key) is not None and not isinstance(r[key], str):
                raise bad(f"rows[{i}].{key} must be a string, got {r[key]!r}")
        if r.get("dice") is not None:
            number(f"rows[{i}].dice", r["dice"], 0.0, 1.0, error=bad)
        lat = r.get("latency") or {}
        if not isinstance(lat, dict):
            raise bad(f"rows[{i}].latency must be a JSON object (batch size -> timings)")
        for bs, parts in lat.items():
            if not isinstance(parts, dict):
                raise bad(f"rows[{i}].latency[{bs}] must be a JSON object")
            if "error" in parts:
                continue
            for part in ("model", "e2e"):
                t = parts.get(part)
                if not isinstance(t, dict):
                    raise bad(f"rows[{i}].latency[{bs}].{part} must be a JSON object")
                for key in ("p50_ms", "spread_ms"):
                    if t.get(key) is not None:
                        number(f"rows[{i}].latency[{bs}].{part}.{key}", t[key], 0.0, error=bad)


def _row_key(row: dict) -> tuple[str, str]:
    return row.get("name") or Path(row.get("model", "")).name, row.get("backend", "")


def compare_baseline(current: dict, baseline: dict, tol_rel: float = 0.10, tol_dice: float = 0.01) -> list[str]:
    """Regressions of ``current`` vs ``baseline``, one short string each (empty: none).

    Rows are matched by (name, backend). Latency regresses when a model-only or end-to-end
    p50 (any batch size both measured) is slower by more than
    ``max(tol_rel x baseline p50, 3 x spread)``, the spread being the larger of the two runs'
    robust spreads; Dice regresses when it is lower by more than ``tol_dice``.
    Raises ConfigError when no row matches (nothing would be checked).
    """
    tol_rel = number("--tol", tol_rel, 0.0)  # a NaN tolerance would switch the gate off: refused
    tol_dice = number("--tol-dice", tol_dice, 0.0, 1.0)
    base = {_row_key(r): r for r in baseline.get("rows", [])}
    matched = 0
    out: list[str] = []
    for row in current.get("rows", []):
        key = _row_key(row)
        b = base.get(key)
        if b is None:
            log.warning("no baseline for %s on %s", *key)
            continue
        matched += 1
        label = f"{key[0]} ({key[1]})"
        if row.get("noisy") or b.get("noisy"):
            log.warning("%s: %s timing was taken on a busy machine; latency may not compare", label,
                        "this run's" if row.get("noisy") else "the baseline's")
        for bs, lat in (row.get("latency") or {}).items():
            blat = (b.get("latency") or {}).get(bs)
            if not blat or "error" in lat or "error" in blat:
                continue
            for part, what in (("model", "p50"), ("e2e", "e2e p50")):
                cur, old = lat[part], blat[part]
                if cur.get("p50_ms") is None or old.get("p50_ms") is None:
                    continue
                spread = max(cur.get("spread_ms") or 0.0, old.get("spread_ms") or 0.0)
                allowed = max(tol_rel * old["p50_ms"], 3.0 * spread)
                if cur["p50_ms"] - old["p50_ms"] > allowed:
                    out.append(f"{label} batch {bs} {what} {cur['p50_ms']:.2f} ms vs {old['p50_ms']:.2f} ms "
                               f"(+{cur['p50_ms'] - old['p50_ms']:.2f} > {allowed:.2f} allowed)")
        cd, bd = row.get("dice"), b.get("dice")
        if cd is not None and bd is not None and bd - cd > tol_dice:
            out.append(f"{label} Dice {cd:.4f} vs {bd:.4f} (-{bd - cd:.4f} > {tol_dice:g} allowed)")
    if not matched:
        raise ConfigError("the baseline shares no (model, backend) row with this run; nothing to compare")
    cur_cpu = ((current.get("machine") or {}).get("cpu") or {}).get("model")
    base_cpu = ((baseline.get("machine") or {}).get("cpu") or {}).get("model")
    if cur_cpu != base_cpu:
        log.warning("baseline was measured on %r, this run on %r: timings may not compare", base_cpu, cur_cpu)
    if (current.get("data") or {}).get("fingerprint") != (baseline.get("data") or {}).get("fingerprint"):
        log.warning("baseline was scored on different images: Dice may not compare")
    return out
