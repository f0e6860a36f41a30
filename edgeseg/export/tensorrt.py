"""Build a TensorRT engine from a bundle, on the device that will run it.

    python3 -m edgeseg.export.tensorrt BUNDLE -o model.engine [--precision auto] [--batch 1,1,4]

An engine is specific to the GPU model and the TensorRT version that built it, so it is built
on the target (a Jetson, say), never shipped. What the device needs besides the engine goes
in a sidecar JSON next to it (``model.engine.json``): the bundle's pre-processing, classes,
colours and outputs, plus how the engine was built. Nothing is prepended to the engine bytes.

How the builder is set up depends on the TensorRT major version:

- TensorRT 10.x builds weakly typed networks: an FP16 request sets ``BuilderFlag.FP16``; an
  INT8-QDQ ONNX (explicit quantization, Q/DQ nodes) sets ``BuilderFlag.INT8``. INT8
  calibrators (deprecated since 10.1) are never used: INT8 comes only from Q/DQ nodes.
- TensorRT 11 removed the precision builder flags: networks are strongly typed and the
  precision is that of the ONNX itself (edgeseg exports FP32, FP16, or INT8-QDQ). The
  network is created with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` where the enum
  still has it (11.x accepts and ignores it), no precision flag is set, and a ``precision``
  request that contradicts the ONNX is refused with a message.

The decisions (flags, precision checks, DLA, profile shapes, sidecar content) are small pure
functions below, testable without TensorRT; :func:`build_engine` only applies them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from edgeseg.errors import BundleError, ConfigError, DependencyError, EdgesegError
from edgeseg.runtime.bundle import Bundle, read_bundle
from edgeseg.runtime.runners.tensorrt import (device_info, import_tensorrt, parse_version, sidecar_path,
                                      trt_logger)

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "fp16", "int8")
_ALIASES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "int8-qdq": "int8", "int8_qdq": "int8",
            "qdq": "int8", "int8qdq": "int8"}
ENGINE_SUFFIXES = (".engine", ".plan")
SIDECAR_FORMAT = "edgeseg-tensorrt-engine"
SIDECAR_VERSION = 1
MIN_TRT_MAJOR = 10
# INT8 weights and activations, FP8 (TensorRT also takes FP8 Q/DQ; edgeseg does not make them)
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


# --------------------------------------------------------------------------------------------
# pure decision logic (no tensorrt needed)


def normalize_precision(value: str, allow_auto: bool = True) -> str:
    p = str(value).strip().lower()
    p = _ALIASES.get(p, p)
    known = PRECISIONS if allow_auto else PRECISIONS[1:]
    if p not in known:
        raise ConfigError(f"unknown precision {value!r}; choose from {', '.join(known)}")
    return p


def parse_batch(value: str | int | Sequence[int]) -> tuple[int, int, int]:
    """'1,4,8' -> (1, 4, 8); '4' or 4 -> (4, 4, 4) (a fixed batch). Validated."""
    if isinstance(value, str):
        try:
            nums = [int(v) for v in value.replace(" ", "").split(",") if v != ""]
        except ValueError:
            raise ConfigError(f"--batch takes MIN,OPT,MAX or one N, got {value!r}") from None
    elif isinstance(value, int):
        nums = [value]
    else:
        nums = [int(v) for v in value]
    if len(nums) == 1:
        nums = nums * 3
    if len(nums) != 3:
        raise ConfigError(f"batch needs (min, opt, max) or one size, got {value!r}")
    return validate_batch(tuple(nums))


def validate_batch(batch: Sequence[int]) -> tuple[int, int, int]:
    if len(batch) != 3 or any(not isinstance(b, int) or isinstance(b, bool) for b in batch):
        raise ConfigError(f"batch must be three integers (min, opt, max), got {batch!r}")
    lo, opt, hi = batch
    if not 1 <= lo <= opt <= hi:
        raise ConfigError(f"batch sizes must satisfy 1 <= min <= opt <= max, got min={lo} opt={opt} max={hi}")
    return lo, opt, hi


def detect_precision(model) -> str:
    """What an ONNX ModelProto carries: 'int8' (Q/DQ nodes), 'fp16' (FP16 weights or casts) or 'fp32'."""
    from onnx import TensorProto

    nodes = list(_all_nodes(model.graph))
    if any(n.op_type in _QDQ_OPS and n.domain in ("", "ai.onnx") for n in nodes):
        return "int8"
    if any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    for n in nodes:
        if n.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT16 for a in n.attribute):
            return "fp16"
        if n.op_type == "Constant" and any(a.name == "value" and a.t.data_type == TensorProto.FLOAT16
                                           for a in n.attribute):
            return "fp16"
    return "fp32"


def _all_nodes(graph):
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.g is not None and len(a.g.node):
                yield from _all_nodes(a.g)
            for g in a.graphs:
                yield from _all_nodes(g)


def qdq_problems(model) -> list[str]:
    """Q/DQ nodes TensorRT cannot take: it quantizes symmetrically to signed INT8, so every
    zero point must be int8 (or an FP8 type) and all zeros. Returns messages (empty: fine)."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    consts = {t.name: t for t in model.graph.initializer}
    for n in _all_nodes(model.graph):
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and n.output:
                    consts[n.output[0]] = a.t
    ok_types = {TensorProto.INT8}
    for name in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "INT4"):
        if hasattr(TensorProto, name):
            ok_types.add(getattr(TensorProto, name))
    problems = []
    for n in _all_nodes(model.graph):
        if n.op_type not in _QDQ_OPS or len(n.input) < 3 or not n.input[2]:
            continue
        zp = consts.get(n.input[2])
        if zp is None:
            continue
        label = n.name or n.output[0]
        if zp.data_type not in ok_types:
            tname = TensorProto.DataType.Name(zp.data_type)
            problems.append(f"{n.op_type} {label}: zero point is {tname}; TensorRT needs signed INT8 (symmetric)")
            continue
        if zp.data_type == TensorProto.INT8 and np.any(numpy_helper.to_array(zp) != 0):
            problems.append(f"{n.op_type} {label}: non-zero zero point; TensorRT supports symmetric quantization only")
    return problems


@dataclass(frozen=True)
class OnnxInfo:
    input_name: str
    input_shape: tuple  # ints for fixed dimensions, None for symbolic ones
    output_names: tuple[str, ...]
    precision: str
    qdq_problems: tuple[str, ...] = ()


def inspect_onnx(path: str | Path) -> OnnxInfo:
    """Read what the build needs from an ONNX file (its single input, outputs, precision)."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise BundleError(f"{path.name} is not a readable ONNX model: {str(exc).splitlines()[0][:200]}") from None
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise BundleError(f"{path.name} has {len(inputs)} graph inputs; edgeseg engines take one NCHW image batch")
    dims = []
    for d in inputs[0].type.tensor_type.shape.dim:
        dims.append(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None)
    if len(dims) != 4:
        raise BundleError(f"{path.name}: input {inputs[0].name!r} has rank {len(dims)}; expected NCHW (rank 4)")
    if dims[1] not in (None, 3):
        raise BundleError(f"{path.name}: input {inputs[0].name!r} has {dims[1]} channels; expected 3 (RGB)")
    precision = detect_precision(model)
    problems = tuple(qdq_problems(model)) if precision == "int8" else ()
    return OnnxInfo(inputs[0].name, tuple(dims), tuple(o.name for o in model.graph.output), precision, problems)


def profile_shapes(input_shape: Sequence[int | None], height: int, width: int,
                   batch: Sequence[int] = (1, 1, 1)) -> dict[str, tuple[int, int, int, int]]:
    """min/opt/max NCHW shapes of the optimisation profile: the batch range at the bundle's own
    height and width (never a guessed large size). A fixed ONNX dimension must agree."""
    lo, opt, hi = validate_batch(tuple(batch))
    n, c, h, w = (list(input_shape) + [None] * 4)[:4]
    c = 3 if c is None else c
    if h is not None and h != height or w is not None and w != width:
        raise BundleError(f"the ONNX input is fixed at {h}x{w} but the bundle's pre-processing makes "
                          f"{height}x{width} images; the bundle is inconsistent")
    if n is not None and (lo, opt, hi) != (n, n, n):
        raise ConfigError(f"the ONNX input has a fixed batch of {n}; build with --batch {n} "
                          f"(asked for min={lo} opt={opt} max={hi}), or export the ONNX with a dynamic batch")
    return {"min": (lo, c, height, width), "opt": (opt, c, height, width), "max": (hi, c, height, width)}


def dla_availability(trt_version: Sequence[int]) -> tuple[bool, str]:
    """Whether this TensorRT release can target DLA at all (the device is checked at build time).
    From NVIDIA's 'Working with DLA' notes: 10.7 was the last 10.x release with DLA (JetPack 6.x
    ships 10.3); 11.0-11.3 have none; 11.4.0 only on Windows on ARM (beta); 11.4.1 brings it
    back on Jetson AGX Orin with JetPack 7.2.2 or later."""
    major, minor, patch = (tuple(trt_version) + (0, 0, 0))[:3]
    if major < 10:
        return False, f"TensorRT {major}.{minor} is older than edgeseg supports (10 or newer)"
    if major == 10:
        if minor <= 7:
            return True, "TensorRT 10.0-10.7 supports DLA on Jetson AGX Orin and Orin NX"
        return False, (f"TensorRT {major}.{minor} has no DLA support: 10.7 was the last 10.x release with DLA "
                       "(JetPack 6.x ships TensorRT 10.3)")
    if major == 11 and (minor, patch) < (4, 0):
        return False, f"TensorRT {major}.{minor} has no DLA support (DLA was unavailable in 11.0 through 11.3)"
    if major == 11 and (minor, patch) == (4, 0):
        return False, ("TensorRT 11.4.0 supports DLA only on Windows on ARM (beta); on Jetson AGX Orin use "
                       "TensorRT 11.4.1+ with JetPack 7.2.2+, or TensorRT 10.3 with JetPack 6.x")
    return True, "TensorRT 11.4.1+ supports DLA on Jetson AGX Orin with JetPack 7.2.2 or later (not on Jetson Thor)"


@dataclass(frozen=True)
class BuildPlan:
    """How to configure the builder; names refer to members of TensorRT's enums."""

    trt_version: tuple[int, int, int]
    precision: str  # what the engine computes in: fp32 | fp16 | int8 | int8+fp16
    model_precision: str  # what the ONNX carries
    strongly_typed: bool
    network_flags: tuple[str, ...] = ()  # NetworkDefinitionCreationFlag members
    builder_flags: tuple[str, ...] = ()  # BuilderFlag members
    dla_core: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def plan_build(trt_version: Sequence[int], requested: str, model_precision: str, dla_core: int | None = None,
               gpu_fallback: bool = True, batch: Sequence[int] = (1, 1, 1)) -> BuildPlan:
    """Decide builder settings from the TensorRT version, the requested precision and what the
    ONNX holds. Raises ConfigError for requests TensorRT cannot honour, with what to do instead."""
    version = tuple(int(v) for v in (tuple(trt_version) + (0, 0, 0))[:3])
    major = version[0]
    vtext = ".".join(map(str, version))
    if major < MIN_TRT_MAJOR:
        raise DependencyError(f"TensorRT {vtext} is too old: edgeseg builds with TensorRT 10 or newer "
                              "(pip install edgeseg[tensorrt], or JetPack 6.x which ships TensorRT 10.3)")
    req = normalize_precision(requested)
    model = normalize_precision(model_precision, allow_auto=False)
    builder_flags: list[str] = []
    network_flags: list[str] = []
    notes: list[str] = []
    if major >= 11:
        strongly_typed = True
        network_flags.append("STRONGLY_TYPED")
        if req not in ("auto", model):
            how = {"fp16": "export an FP16 bundle (edgeseg export --fp16) or convert the ONNX with "
                           "ModelOpt AutoCast",
                   "int8": "make an INT8-QDQ bundle (explicit Q/DQ quantization)",
                   "fp32": "build from the FP32 bundle"}[req]
            raise ConfigError(f"TensorRT {vtext} builds strongly typed networks: the precision comes from the "
                              f"ONNX, which is {model}, so precision={req} contradicts it; {how}, or use "
                              "precision=auto")
        precision = model
    else:
        strongly_typed = False
        if model == "int8":
            if req == "fp32":
                raise ConfigError("this ONNX is INT8-quantized (Q/DQ nodes); it cannot be built as fp32: "
                                  "build from the FP32 bundle instead, or use precision=auto")
            builder_flags.append("INT8")  # explicit quantization: the Q/DQ nodes, never a calibrator
            precision = "int8"
            if req == "fp16":
                builder_flags.append("FP16")  # layers the Q/DQ nodes leave unquantized may use FP16
                precision = "int8+fp16"
        elif model == "fp16":
            if req in ("fp32", "int8"):
                what = ("it already holds FP16 weights; build from the FP32 bundle" if req == "fp32" else
                        "INT8 needs an INT8-QDQ bundle (explicit Q/DQ); edgeseg never calibrates in TensorRT")
                raise ConfigError(f"precision={req} does not fit this FP16 ONNX: {what}")
            builder_flags.append("FP16")
            precision = "fp16"
        else:  # fp32 ONNX
            if req == "int8":
                raise ConfigError("precision=int8 needs an INT8-QDQ bundle (explicit Q/DQ quantization); this ONNX "
                                  "has no Q/DQ nodes, and INT8 calibrators are deprecated since TensorRT 10.1 "
                                  "and gone in 11, so edgeseg does not use them")
            if req == "fp16":
                builder_flags.append("FP16")
                precision = "fp16"
            else:
                precision = "fp32"
    if dla_core is not None:
        if isinstance(dla_core, bool) or not isinstance(dla_core, int) or dla_core < 0:
            raise ConfigError(f"dla_core must be a non-negative integer, got {dla_core!r}")
        ok, why = dla_availability(version)
        if not ok:
            raise ConfigError(f"DLA requested (core {dla_core}) but {why}")
        if precision == "fp32":
            hint = ("pass precision=fp16" if not strongly_typed else
                    "build from an FP16 or INT8-QDQ bundle (strongly typed: the ONNX sets the precision)")
            raise ConfigError(f"DLA runs FP16 and INT8 only and this build would be fp32: {hint}")
        lo, opt, hi = validate_batch(tuple(batch))
        if not lo == opt == hi:
            raise ConfigError(f"DLA does not support dynamic shapes: use one batch size (e.g. --batch {hi}), "
                              f"not min={lo} opt={opt} max={hi}")
        if gpu_fallback:
            builder_flags.append("GPU_FALLBACK")
        else:
            notes.append("GPU fallback is off: every layer must run on DLA or the build fails")
    return BuildPlan(trt_version=version, precision=precision, model_precision=model,
                     strongly_typed=strongly_typed, network_flags=tuple(network_flags),
                     builder_flags=tuple(builder_flags), dla_core=dla_core, notes=tuple(notes))


def sidecar_content(bundle: Bundle, plan: BuildPlan, profile: dict, input_name: str, engine_sha256: str,
                    gpu: dict | None = None, built_at: float | None = None, engine_name: str | None = None,
                    gpu_fallback: bool = True) -> dict:
    """The JSON written next to the engine: what the device needs to use it (the bundle's
    pre-processing, classes, colours, outputs) and how and from what it was built."""
    m = bundle.manifest
    t = time.gmtime(time.time() if built_at is None else built_at)
    side = {
        "format": SIDECAR_FORMAT,
        "sidecar_version": SIDECAR_VERSION,
        "engine": engine_name,
        "engine_sha256": engine_sha256,
        "preprocess": dict(m["preprocess"]),
        "classes": list(m["classes"]),
        "outputs": [dict(o) for o in m["outputs"]],
        "precision": plan.precision,
        "tensorrt": {
            "version": ".".join(map(str, plan.trt_version)),
            "strongly_typed": plan.strongly_typed,
            "network_flags": list(plan.network_flags),
            "builder_flags": list(plan.builder_flags),
        },
        "gpu": dict(gpu or {}),
        "dla_core": plan.dla_core,
        "gpu_fallback": bool(gpu_fallback) if plan.dla_core is not None else None,
        "profile": {"input": input_name, **{k: list(v) for k, v in profile.items()}},
        "source": {
            "bundle": str(Path(bundle.path).resolve()),
            "model": m["model"],
            "model_sha256": m["files"][m["model"]],
            "manifest_sha256": m.get("manifest_sha256"),
            "bundle_precision": m.get("precision"),
            "onnx_precision": plan.model_precision,
        },
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", t),
    }
    if "colors" in m:
        side["colors"] = [list(c) for c in m["colors"]]
    if "input_stats" in m:  # the input-drift guard travels with the engine
        side["input_stats"] = m["input_stats"]
    try:
        from edgeseg import __version__

        side["edgeseg_version"] = __version__
    except ImportError:  # pragma: no cover
        pass
    return side


def default_engine_path(bundle_dir: str | Path) -> Path:
    b = Path(bundle_dir)
    return b.with_name(b.name + ".engine")


# --------------------------------------------------------------------------------------------
# the build (needs tensorrt)


def _atomic_write(path: Path, data: bytes) -> None:
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


def _parser_errors(parser, limit: int = 10) -> str:
    msgs = []
    for i in range(min(int(parser.num_errors), limit)):
        e = parser.get_error(i)
        try:
            node = e.node()
            desc = e.desc()
            msgs.append(f"node {node}: {desc}" if node is not None and node >= 0 else str(desc))
        except Exception:  # noqa: BLE001 - error objects differ a little between releases
            msgs.append(str(e))
    more = int(parser.num_errors) - len(msgs)
    return "; ".join(msgs) + (f"; and {more} more" if more > 0 else "")


def _severity(trt):
    if log.isEnabledFor(logging.DEBUG):
        return trt.Logger.VERBOSE
    if log.isEnabledFor(logging.INFO):
        return trt.Logger.INFO
    return trt.Logger.WARNING


def build_engine(bundle_dir: str | Path, out: Path, precision: str = "auto", batch: tuple[int, int, int] = (1, 1, 1),
                 timing_cache: Path | None = None, workspace_mb: int = 1024, dla_core: int | None = None,
                 gpu_fallback: bool = True) -> Path:
    """Build ``out`` (a ``.engine``/``.plan`` file) from the bundle's ONNX on this machine's GPU.

    Writes the engine atomically, then its sidecar ``out.json``. ``batch`` is (min, opt, max) of
    the optimisation profile, at the bundle's own height and width. ``timing_cache`` is read if
    it exists and written back after the build (it is specific to the GPU and TensorRT version).
    Returns ``out``.
    """
    out = Path(out)
    if out.suffix not in ENGINE_SUFFIXES:
        raise ConfigError(f"engine file name must end in {' or '.join(ENGINE_SUFFIXES)}: {out}")
    batch = validate_batch(tuple(batch))
    if not isinstance(workspace_mb, int) or workspace_mb <= 0:
        raise ConfigError(f"workspace_mb must be a positive integer, got {workspace_mb!r}")
    normalize_precision(precision)
    bundle = read_bundle(bundle_dir)  # verifies every hash
    info = inspect_onnx(bundle.model_file)
    if info.qdq_problems:
        raise BundleError(f"{bundle.model_file.name} has {len(info.qdq_problems)} Q/DQ node(s) TensorRT cannot build "
                          f"(e.g. {info.qdq_problems[0]}): this is a CPU INT8 bundle; make one for TensorRT "
                          "with `edgeseg compress --target tensorrt`, or build from the FP32 bundle")
    declared = str(bundle.manifest.get("precision", "")).lower()
    if _ALIASES.get(declared, declared) in PRECISIONS[1:] and _ALIASES.get(declared, declared) != info.precision:
        log.warning("bundle manifest says precision %s but its ONNX holds %s; building from the ONNX",
                    declared, info.precision)
    profile = profile_shapes(info.input_shape, bundle.preprocess.height, bundle.preprocess.width, batch)

    trt = import_tensorrt()
    try:
        version = parse_version(trt.__version__)
    except ValueError:
        raise DependencyError(f"cannot read the TensorRT version {getattr(trt, '__version__', None)!r}") from None
    plan = plan_build(version, precision, info.precision, dla_core=dla_core, gpu_fallback=gpu_fallback,
                      batch=batch)
    for note in plan.notes:
        log.warning(note)

    logger = trt_logger(trt)
    try:
        logger.min_severity = _severity(trt)
    except (AttributeError, TypeError):  # pragma: no cover - a logger without a settable severity
        pass
    builder = trt.Builder(logger)
    flags = 0
    for name in plan.network_flags:
        member = getattr(trt.NetworkDefinitionCreationFlag, name, None)
        if member is not None:  # a flag an 11.x release dropped is on by default there
            flags |= 1 << int(member)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(bundle.model_file)):
        raise BundleError(f"TensorRT {'.'.join(map(str, version))} cannot parse {bundle.model_file}: "
                          f"{_parser_errors(parser) or 'no details (run with -v)'}")
    if network.num_inputs != 1 or network.get_input(0).name != info.input_name:
        raise BundleError(f"TensorRT sees {network.num_inputs} input(s) in {bundle.model_file.name}; "
                          f"expected one named {info.input_name!r}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    for name in plan.builder_flags:
        member = getattr(trt.BuilderFlag, name, None)
        if member is None:
            raise DependencyError(f"this TensorRT ({trt.__version__}) has no BuilderFlag.{name}")
        config.set_flag(member)
    if plan.dla_core is not None:
        cores = int(getattr(builder, "num_DLA_cores", 0) or 0)
        if cores == 0:
            raise ConfigError("DLA requested but this device has no DLA cores (DLA is on Jetson AGX Orin and "
                              "Orin NX; Jetson Thor, Orin Nano and discrete GPUs have none)")
        if plan.dla_core >= cores:
            raise ConfigError(f"DLA core {plan.dla_core} does not exist: this device has {cores} "
                              f"(cores 0..{cores - 1})")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core

    prof = builder.create_optimization_profile()
    prof.set_shape(info.input_name, profile["min"], profile["opt"], profile["max"])
    config.add_optimization_profile(prof)

    if timing_cache is not None:
        timing_cache = Path(timing_cache)
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        if cache is None and blob:
            log.warning("timing cache %s is unusable here (other GPU or TensorRT version?); starting afresh",
                        timing_cache)
            cache = config.create_timing_cache(b"")
        if cache is not None:
            config.set_timing_cache(cache, False)

    log.info("building %s from %s with TensorRT %s (%s)", out.name, bundle.path, trt.__version__, plan.precision)
    started = time.time()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgesegError(f"TensorRT could not build an engine from {bundle.model_file} (see the TensorRT log "
                           "above; run with -v for details)")
    data = bytes(serialized)
    log.info("built in %.1f s", time.time() - started)

    if timing_cache is not None:
        tc = config.get_timing_cache()
        if tc is not None:
            _atomic_write(timing_cache, bytes(tc.serialize()))

    digest = hashlib.sha256(data).hexdigest()
    side = sidecar_content(bundle, plan, profile, info.input_name, digest, gpu=device_info(0), built_at=started,
                           engine_name=out.name, gpu_fallback=gpu_fallback)
    side["build_seconds"] = round(time.time() - started, 3)
    side["workspace_mb"] = int(workspace_mb)
    _atomic_write(out, data)
    _atomic_write(sidecar_path(out), (json.dumps(side, indent=2) + "\n").encode("utf-8"))
    return out


# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m edgeseg.export.tensorrt",
                                 description="Build a TensorRT engine (and its sidecar JSON) from an edgeseg "
                                             "bundle, on the device that will run it.")
    ap.add_argument("bundle", type=Path, help="bundle directory (edgeseg.json + model.onnx)")
    ap.add_argument("-o", "--out", type=Path, default=None,
                    help="engine file (.engine or .plan); default: BUNDLE.engine next to the bundle")
    ap.add_argument("--precision", default="auto", help="auto (the ONNX's own), fp32, fp16 or int8 (default auto)")
    ap.add_argument("--batch", default="1,1,1", help="MIN,OPT,MAX batch of the optimisation profile, or one N "
                                                     "(default 1,1,1)")
    ap.add_argument("--timing-cache", type=Path, default=None, help="timing cache file to read and update")
    ap.add_argument("--workspace-mb", type=int, default=1024, help="builder workspace limit in MiB (default 1024)")
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
    side = json.loads(sidecar_path(path).read_text())
    print(json.dumps({"engine": str(path), "sidecar": str(sidecar_path(path)), "precision": side["precision"],
                      "tensorrt": side["tensorrt"]["version"], "gpu": side["gpu"].get("name"),
                      "profile": side["profile"]}, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
