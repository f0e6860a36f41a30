"""``python -m edgeseg`` and the ``edgeseg`` command.

The command line belongs to the toolkit half. On a device where only the runtime is installed
(``pip install .``, numpy + onnxruntime) it says so in one line instead of a traceback.
"""

from __future__ import annotations

import sys

TOOLKIT_MODULES = ("typer", "torch", "transformers", "torch_pruning", "onnx", "cv2")


def missing_toolkit() -> list[str]:
    import importlib.util

    return [m for m in TOOLKIT_MODULES if importlib.util.find_spec(m) is None]


def main() -> None:
    missing = missing_toolkit()
    if missing:
        print(f"error: the edgeseg command line needs the toolkit ({', '.join(missing)} not installed): "
              "pip install 'edgeseg[toolkit]' (from a clone: pip install -e '.[toolkit]'). On a device, "
              "use the Python API: from edgeseg.runtime import Segmenter", file=sys.stderr)
        raise SystemExit(2)
    from edgeseg.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
