"""The on-device CLI: build a TensorRT engine (and its sidecar JSON) from a bundle.

    python3 -m edgeseg.export.tensorrt BUNDLE -o model.engine [--precision auto] [--batch 1,1,4]

Prints a JSON summary on stdout; a refused request is one ``error: ...`` line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from edgeseg.errors import EdgesegError
from edgeseg.export.tensorrt.build import build_engine, default_engine_path
from edgeseg.export.tensorrt.rules import DEFAULT_WORKSPACE_MB, PRECISIONS, parse_batch
from edgeseg.runtime.runners.tensorrt import read_sidecar, sidecar_path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m edgeseg.export.tensorrt",
                                 description="Build a TensorRT engine (and its sidecar JSON) from an edgeseg "
                                             "bundle, on the device that will run it.")
    ap.add_argument("bundle", type=Path, help="bundle directory (edgeseg.json + model.onnx)")
    ap.add_argument("-o", "--out", type=Path, default=None,
                    help="engine file (.engine or .plan); default: BUNDLE.engine next to the bundle")
    ap.add_argument("--precision", default="auto",
                    help=f"{', '.join(PRECISIONS)} (default auto: what the ONNX holds)")
    ap.add_argument("--batch", default="1,1,1", help="MIN,OPT,MAX batch of the optimisation profile, or one N "
                                                     "(default 1,1,1)")
    ap.add_argument("--timing-cache", type=Path, default=None, help="timing cache file to read and update")
    ap.add_argument("--workspace-mb", type=int, default=DEFAULT_WORKSPACE_MB,
                    help=f"builder workspace limit in MiB (default {DEFAULT_WORKSPACE_MB})")
    ap.add_argument("--dla-core", type=int, default=None, help="build for this DLA core (Jetson AGX/NX Orin)")
    ap.add_argument("--no-gpu-fallback", action="store_true", help="with --dla-core: fail on layers DLA cannot run")
    ap.add_argument("-v", "--verbose", action="store_true", help="TensorRT and build logs on stderr")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        out = args.out or default_engine_path(args.bundle)
        path = build_engine(args.bundle, out, precision=args.precision, batch=parse_batch(args.batch),
                            timing_cache=args.timing_cache, workspace_mb=args.workspace_mb,
                            dla_core=args.dla_core, gpu_fallback=not args.no_gpu_fallback)
    except EdgesegError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    side = read_sidecar(path)
    print(json.dumps({"engine": str(path), "sidecar": str(sidecar_path(path)), "precision": side["precision"],
                      "tensorrt": side["tensorrt"]["version"], "gpu": side["gpu"].get("name"),
                      "profile": side["profile"]}, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
