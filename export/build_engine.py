#!/usr/bin/env python3
"""Build a TensorRT engine from an edgeseg bundle, on the device, with nothing but python3 and
TensorRT's Python bindings (no edgeseg, numpy, onnx or torch needed).

    python3 export/build_engine.py BUNDLE -o model.engine [--batch 1,1,4] [--precision auto]
                                   [--timing-cache trt.cache] [--dla-core 0]

When edgeseg is installed on the device, prefer ``python3 -m edgeseg.export.tensorrt`` (or
``edgeseg export BUNDLE --format tensorrt -o model.engine``): it follows the same rules and also
inspects the ONNX itself (Q/DQ zero points, fixed dimensions). This script is the short,
readable version of those rules for devices that only have TensorRT.

NOT RUN BY THE PROJECT: TensorRT is not installed where edgeseg is developed. Written for
TensorRT 10.3 (JetPack 6.x) and TensorRT 11.x; see export/README.md for how to check the result.

Rules (per TensorRT major version):
  10.x  weakly typed network; --precision fp16 (or an FP16 bundle) sets BuilderFlag.FP16; an
        INT8-QDQ bundle sets BuilderFlag.INT8 (explicit quantization; never a calibrator).
  11.x  strongly typed network (the STRONGLY_TYPED creation flag where the enum still has it);
        no precision flags exist: the ONNX decides, and a contradicting --precision is refused.
The optimisation profile is the batch range at the bundle's own height x width. The engine is
written atomically, then a sidecar ENGINE.json with the bundle's pre-processing, classes,
colours and outputs, which edgeseg's Segmenter reads; nothing is prepended to the engine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
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
    mf = bundle / "edgeseg.json"
    if not mf.is_file():
        fail(f"{bundle} is not an edgeseg bundle (no edgeseg.json)")
    m = json.loads(mf.read_text(encoding="utf-8"))
    if m.get("schema_version") != 1:
        fail(f"{mf}: schema version {m.get('schema_version')!r}; this script reads version 1")
    name = m["model"]
    if "/" in name or "\\" in name or name in (".", ".."):
        fail(f"{mf}: model file name {name!r} has path components")
    model = bundle / name
    if not model.is_file() or sha256(model) != m["files"].get(name):
        fail(f"{model} is missing or does not match its sha256 in edgeseg.json")
    return m, model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True, help="engine file (.engine or .plan)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "int8"])
    ap.add_argument("--batch", default="1,1,1", help="MIN,OPT,MAX (or one N)")
    ap.add_argument("--timing-cache", type=Path)
    ap.add_argument("--workspace-mb", type=int, default=1024)
    ap.add_argument("--dla-core", type=int)
    ap.add_argument("--no-gpu-fallback", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    if a.out.suffix not in (".engine", ".plan"):
        fail("the engine file name must end in .engine or .plan (edgeseg opens those)")
    batch = [int(v) for v in a.batch.split(",")]
    batch = batch * 3 if len(batch) == 1 else batch
    if len(batch) != 3 or not 1 <= batch[0] <= batch[1] <= batch[2]:
        fail(f"--batch needs MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got {a.batch!r}")

    m, model = read_bundle(a.bundle)
    h, w = int(m["preprocess"]["height"]), int(m["preprocess"]["width"])
    try:
        import tensorrt as trt
    except ImportError:
        fail("TensorRT's Python bindings are missing: on JetPack, apt install python3-libnvinfer "
             "(a virtualenv needs --system-site-packages); elsewhere pip install tensorrt")
    major, minor, patch = (int(x) for x in (trt.__version__.split(".") + ["0", "0"])[:3])
    if major < 10:
        fail(f"TensorRT {trt.__version__} is too old; this recipe targets 10.x and 11.x")

    logger = trt.Logger(trt.Logger.INFO if a.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if major >= 11 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model)):
        errs = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        fail(f"TensorRT {trt.__version__} cannot parse {model}: " + "; ".join(errs[:10]))
    if network.num_inputs != 1:
        fail(f"{model.name} has {network.num_inputs} inputs; edgeseg models take one NCHW batch")
    inp = network.get_input(0)

    # what the ONNX holds: Q/DQ layers mean INT8; otherwise trust the manifest (fp16 / fp32)
    qdq = any(network.get_layer(i).type == trt.LayerType.QUANTIZE for i in range(network.num_layers))
    onnx_prec = "int8" if qdq else ("fp16" if str(m.get("precision")).lower() == "fp16" else "fp32")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, a.workspace_mb << 20)
    builder_flags = []
    if major >= 11:
        if a.precision not in ("auto", onnx_prec):
            fail(f"TensorRT {major}.x builds strongly typed networks: this ONNX is {onnx_prec}, so "
                 f"--precision {a.precision} contradicts it (export a bundle in that precision instead)")
        precision = onnx_prec
    else:
        if onnx_prec == "int8":
            if a.precision == "fp32":
                fail("this ONNX is INT8-quantized (Q/DQ); build the FP32 bundle instead")
            builder_flags.append("INT8")
            if a.precision == "fp16":
                builder_flags.append("FP16")
            precision = "int8+fp16" if a.precision == "fp16" else "int8"
        elif a.precision == "int8":
            fail("--precision int8 needs an INT8-QDQ bundle; calibration is not used (deprecated since 10.1)")
        elif onnx_prec == "fp16" and a.precision == "fp32":
            fail("this ONNX holds FP16 weights; build the FP32 bundle for an fp32 engine")
        elif onnx_prec == "fp16" or a.precision == "fp16":
            builder_flags.append("FP16")
            precision = "fp16"
        else:
            precision = "fp32"

    if a.dla_core is not None:
        if major == 10 and minor > 7 or major == 11 and (minor, patch) < (4, 1):
            fail(f"TensorRT {trt.__version__} has no DLA on Jetson (10.0-10.7 and 11.4.1+ do)")
        if precision == "fp32":
            fail("DLA runs FP16/INT8 only: use --precision fp16 (TensorRT 10) or an FP16/INT8 bundle")
        if batch[0] != batch[2]:
            fail("DLA needs static shapes: give one batch size, e.g. --batch 1")
        if builder.num_DLA_cores <= a.dla_core:
            fail(f"this device has {builder.num_DLA_cores} DLA core(s); DLA is on Jetson AGX Orin / Orin NX")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = a.dla_core
        if not a.no_gpu_fallback:
            builder_flags.append("GPU_FALLBACK")
    for f in builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, f))

    shapes = {k: (n, 3, h, w) for k, n in zip(("min", "opt", "max"), batch)}
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)

    if a.timing_cache:
        blob = a.timing_cache.read_bytes() if a.timing_cache.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(blob), False)

    started = time.time()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        fail("TensorRT could not build the engine (see its log above; try -v)")
    data = bytes(plan)
    if a.timing_cache:
        atomic_write(a.timing_cache, bytes(config.get_timing_cache().serialize()))

    side = {
        "format": "edgeseg-tensorrt-engine", "sidecar_version": 1, "engine": a.out.name,
        "engine_sha256": hashlib.sha256(data).hexdigest(),
        "preprocess": m["preprocess"], "classes": m["classes"], "outputs": m["outputs"],
        "precision": precision,
        "tensorrt": {"version": f"{major}.{minor}.{patch}", "strongly_typed": major >= 11,
                     "network_flags": ["STRONGLY_TYPED"] if flags else [], "builder_flags": builder_flags},
        "gpu": {"name": None}, "dla_core": a.dla_core,
        "profile": {"input": inp.name, **{k: list(v) for k, v in shapes.items()}},
        "source": {"bundle": str(a.bundle.resolve()), "model": m["model"], "model_sha256": m["files"][m["model"]],
                   "manifest_sha256": m.get("manifest_sha256"), "bundle_precision": m.get("precision"),
                   "onnx_precision": onnx_prec},
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "built_with": "export/build_engine.py",
    }
    if "colors" in m:
        side["colors"] = m["colors"]
    model_file = Path("/proc/device-tree/model")
    if model_file.is_file():
        side["gpu"]["name"] = model_file.read_bytes().split(b"\0")[0].decode("utf-8", "replace").strip()
    atomic_write(a.out, data)
    atomic_write(a.out.with_name(a.out.name + ".json"), (json.dumps(side, indent=2) + "\n").encode())
    print(json.dumps({"engine": str(a.out), "precision": precision, "tensorrt": trt.__version__,
                      "profile": side["profile"], "seconds": round(time.time() - started, 1)}, indent=2))


if __name__ == "__main__":
    main()
