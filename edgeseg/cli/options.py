"""Parsers for the options several commands share."""

from __future__ import annotations

import math
from typing import Optional

import typer


def _classes(value: Optional[str]) -> tuple[str, ...]:
    from edgeseg.errors import ConfigError

    if value is None:
        return ("background", "foreground")
    names = tuple(c.strip() for c in value.split(",") if c.strip())
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"--classes needs at least two distinct comma-separated names, got {value!r}")
    return names

def _spacing(value: Optional[str]):
    from edgeseg.errors import ConfigError

    if value is None:
        return None
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError:
        raise ConfigError(f"--spacing needs 'sy,sx' in physical units per pixel, got {value!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(math.isfinite(p) and p > 0 for p in parts):  # NaN > 0 is False too
        raise ConfigError(f"--spacing needs two positive finite numbers 'sy,sx', got {value!r}")
    return tuple(parts)

def _ints(value: Optional[str], flag: str):
    from edgeseg.errors import ConfigError

    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise ConfigError(f"{flag} needs comma-separated integers, got {value!r}") from None

def _providers(value: Optional[str]):
    return [p.strip() for p in value.split(",") if p.strip()] if value else None


# options several commands take, defined once
PROVIDERS = typer.Option(None, help="ONNX Runtime providers, e.g. cpu or cuda,cpu (default: cpu).")
THREADS = typer.Option(None, help="Inference threads (default: the runtime's choice).")
RUNTIME = typer.Option(None, "--runtime", help="Runtime for bundles/.onnx: onnxruntime, openvino, or auto (the "
                       "bundle's recorded fastest, if installed) (default: onnxruntime; engines: tensorrt).")
DEVICE = typer.Option("cpu", help="torch device for checkpoints: cpu or cuda.")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar.")
VERBOSE = typer.Option(False, "--verbose", "-v", help="Log details to stderr.")
