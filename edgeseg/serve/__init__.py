"""edgeseg.serve: the inference service (``edgeseg serve``), torch-free like the runtime it wraps.

- :mod:`store`: a folder of versioned, verified bundles; add, activate, rollback, an audit log.
- :mod:`images`: request bodies -> RGB arrays (PNG/JPEG/TIFF, with limits) and masks -> PNG.
- :mod:`encode`: masks as run-length encoding and per-class areas (JSON answers).
- :mod:`metrics`: counters and histograms written in the Prometheus text format.
- :mod:`requestlog`: a rotating JSON-lines log, one line per request or feedback.
- :mod:`feedback`: scoring a clinician's corrected mask against the answer that was given.
- :mod:`app`: the FastAPI application (``create_app``); :mod:`monitor` summarises a log.

FastAPI, uvicorn and Pillow (the ``serve`` extra) are imported inside the functions that need
them; a missing one is one line naming ``pip install "edgeseg[serve]"``.
"""

from __future__ import annotations

import importlib

from edgeseg.runtime.errors import MissingDependency

EXTRA = 'pip install "edgeseg[serve]"'


def require(module: str, extra: str = EXTRA):
    """Import an optional module or raise MissingDependency naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(f"the service needs {module.split('.')[0]}: {extra}") from None


__all__ = ["EXTRA", "require"]
