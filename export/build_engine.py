#!/usr/bin/env python3
"""Build a TensorRT engine from an edgeseg bundle, on the device, with nothing but python3 and
TensorRT's Python bindings (no installed edgeseg, numpy, onnx or torch needed).

    python3 export/build_engine.py BUNDLE -o model.engine [--batch 1,1,4] [--precision auto]
                                   [--timing-cache trt.cache] [--dla-core 0]

The rules are not written here: this script loads edgeseg's rule table and sidecar format
(``edgeseg/export/tensorrt/rules.py`` and ``sidecar.py``, standard library only) by path, from
the checkout this file sits in (``../edgeseg/export/tensorrt/``), or from the folder named by
``EDGESEG_TRT_RULES``. Copy those two files along with this one when the device has no checkout.

When edgeseg is installed on the device, ``python3 -m edgeseg.export.tensorrt`` does the same
and also inspects the ONNX itself (Q/DQ zero points, fixed dimensions). This script learns INT8
from TensorRT's parsed network (quantize layers) and FP16 from the bundle's ``precision`` field.

NOT RUN BY THE PROJECT on a GPU: TensorRT is not installed where edgeseg is developed; the tests
run it against a stand-in for ``tensorrt``. See export/README.md for how to check the result.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

RULES_DIR = Path(os.environ.get("EDGESEG_TRT_RULES") or
                 Path(__file__).resolve().parent.parent / "edgeseg" / "export" / "tensorrt")


def load(name: str):
    """edgeseg's ``rules`` or ``sidecar`` module, loaded from its file (edgeseg need not be installed)."""
    path = RULES_DIR / f"{name}.py"
    if not path.is_file():
        fail(f"{path} not found: this script uses edgeseg's TensorRT rules; run it from an edgeseg checkout, "
             "or copy edgeseg/export/tensorrt/rules.py and sidecar.py to a folder and set EDGESEG_TRT_RULES")
    spec = importlib.util.spec_from_file_location(f"edgeseg_trt_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def fail(msg: str) -> None:
    print(f"error: {' '.join(str(msg).split())}", file=sys.stderr)
    sys.exit(2)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_bundle(bundle: Path) -> tuple[dict, Path]:
    """The manifest (as written) and the model file, whose sha256 is checked."""
    mf = bundle / "edgeseg.json"
    if not mf.is_file():
        fail(f"{bundle} is not an edgeseg bundle (no edgeseg.json)")
    try:
        m = json.loads(mf.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        fail(f"{mf} is not valid JSON ({exc})")
    if not isinstance(m, dict) or m.get("schema_version") != 1:
        fail(f"{mf}: schema version {m.get('schema_version') if isinstance(m, dict) else None!r}; "
             "this script reads version 1")
    name = m.get("model")
    if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", ".."):
        fail(f"{mf}: model file name {name!r} has path components")
    model = bundle / name
    if not model.is_file() or sha256(model) != (m.get("files") or {}).get(name):
        fail(f"{model} is missing or does not match its sha256 in edgeseg.json")
    return m, model


def parse_args(rules, argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True,
                    help=f"engine file ({' or '.join(rules.ENGINE_SUFFIXES)})")
    ap.add_argument("--precision", default="auto", help=", ".join(rules.PRECISIONS))
    ap.add_argument("--batch", default="1,1,1", help="MIN,OPT,MAX (or one N)")
    ap.add_argument("--timing-cache", type=Path)
    ap.add_argument("--workspace-mb", type=int, default=rules.DEFAULT_WORKSPACE_MB)
    ap.add_argument("--dla-core", type=int)
    ap.add_argument("--no-gpu-fallback", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap.parse_args(argv)


def build(a, rules, sidecar) -> dict:
    rules.check_engine_name(a.out.name)
    rules.normalize_precision(a.precision)
    batch = rules.parse_batch(a.batch)
    if a.workspace_mb <= 0:
        fail(f"--workspace-mb must be positive, got {a.workspace_mb}")
    m, model = read_bundle(a.bundle)
    h, w = int(m["preprocess"]["height"]), int(m["preprocess"]["width"])
    try:
        import tensorrt as trt
    except (ImportError, OSError):
        fail("TensorRT's Python bindings are missing: on JetPack, apt install python3-libnvinfer "
             "(a virtualenv needs --system-site-packages); elsewhere pip install tensorrt")
    version = rules.parse_version(trt.__version__)

    logger = trt.Logger(trt.Logger.INFO if a.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in rules.network_flags(version):
        member = getattr(trt.NetworkDefinitionCreationFlag, name, None)
        if member is not None:  # a flag an 11.x release dropped is on by default there
            flags |= 1 << int(member)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model)):
        errs = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        fail(f"TensorRT {trt.__version__} cannot parse {model}: " + "; ".join(errs[:10]))
    if network.num_inputs != 1:
        fail(f"{model.name} has {network.num_inputs} inputs; edgeseg models take one NCHW batch")
    inp = network.get_input(0)
    qdq = any(network.get_layer(i).type == trt.LayerType.QUANTIZE for i in range(network.num_layers))
    plan = rules.plan_build(version, a.precision, rules.onnx_precision_without_onnx(qdq, m.get("precision")),
                            dla_core=a.dla_core, gpu_fallback=not a.no_gpu_fallback, batch=batch)
    for note in plan.notes:
        print(f"warning: {note}", file=sys.stderr)
    shapes = rules.profile_shapes(tuple(inp.shape), h, w, batch)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, a.workspace_mb << 20)
    if plan.dla_core is not None:
        if builder.num_DLA_cores <= plan.dla_core:
            fail(f"this device has {builder.num_DLA_cores} DLA core(s); DLA is on Jetson AGX Orin / Orin NX")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    for f in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, f))
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    if a.timing_cache:
        blob = a.timing_cache.read_bytes() if a.timing_cache.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(blob), False)

    started = time.time()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        fail("TensorRT could not build the engine (see its log above; try -v)")
    data = bytes(serialized)
    if a.timing_cache:
        atomic_write(a.timing_cache, bytes(config.get_timing_cache().serialize()))
    side = sidecar.sidecar_content(m, a.bundle, plan, shapes, inp.name, hashlib.sha256(data).hexdigest(),
                                   gpu={"name": sidecar.jetson_model()}, built_at=started, engine_name=a.out.name,
                                   gpu_fallback=not a.no_gpu_fallback, built_with="export/build_engine.py")
    atomic_write(a.out, data)
    atomic_write(a.out.with_name(sidecar.sidecar_name(a.out.name)), (json.dumps(side, indent=2) + "\n").encode())
    return {"engine": str(a.out), "precision": plan.precision, "tensorrt": trt.__version__,
            "profile": side["profile"], "seconds": round(time.time() - started, 1)}


def main(argv=None) -> None:
    rules, sidecar = load("rules"), load("sidecar")
    a = parse_args(rules, argv)
    try:
        summary = build(a, rules, sidecar)
    except rules.REFUSALS as exc:
        fail(str(exc))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
