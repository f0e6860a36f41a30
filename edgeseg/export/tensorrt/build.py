"""Build a TensorRT engine and its sidecar from a bundle, on the device that will run it.

:func:`build_engine` checks everything it can before touching TensorRT (engine name, batch,
precision, the bundle's hashes, the ONNX's input and Q/DQ nodes), then applies the decisions
of :func:`.rules.plan_build` to TensorRT's builder (``tensorrt`` is imported inside it), writes
the engine atomically and then its sidecar (:mod:`.sidecar`). Nothing is prepended to the engine.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

from edgeseg.errors import BundleError, ConfigError, DependencyError, EdgesegError
from edgeseg.export.tensorrt.onnx_info import inspect_onnx
from edgeseg.export.tensorrt.rules import (ALIASES, DEFAULT_BATCH, DEFAULT_WORKSPACE_MB, PRECISIONS,
                                           check_engine_name, normalize_precision, plan_build, profile_shapes,
                                           validate_batch)
from edgeseg.export.tensorrt.sidecar import sidecar_content
from edgeseg.runtime.bundle import Bundle, read_bundle
from edgeseg.runtime.errors import MissingDependency
from edgeseg.runtime.files import atomic_write_bytes, atomic_write_json
from edgeseg.runtime.runners.cuda import device_info
from edgeseg.runtime.runners.tensorrt import import_tensorrt, parse_version, sidecar_path, trt_logger

log = logging.getLogger(__name__)


def default_engine_path(bundle_dir: str | Path) -> Path:
    b = Path(bundle_dir)
    return b.with_name(b.name + ".engine")


def manifest_dict(bundle: Bundle) -> dict:
    """The bundle's manifest as the JSON dict written in ``edgeseg.json`` (the sidecar copies from it)."""
    m = bundle.manifest
    return m.to_dict() if hasattr(m, "to_dict") else dict(m)


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


def _check_bundle_onnx(bundle: Bundle, info) -> None:
    if info.qdq_problems:
        raise BundleError(f"{bundle.model_file.name} has {len(info.qdq_problems)} Q/DQ node(s) TensorRT cannot build "
                          f"(e.g. {info.qdq_problems[0]}): this is a CPU INT8 bundle; make one for TensorRT "
                          "with `edgeseg compress --target tensorrt`, or build from the FP32 bundle")
    declared = str(bundle.precision).lower()
    declared = ALIASES.get(declared, declared)
    if declared in PRECISIONS[1:] and declared != info.precision:
        log.warning("bundle manifest says precision %s but its ONNX holds %s; building from the ONNX",
                    declared, info.precision)


def _configure(trt, builder, plan, workspace_mb: int):
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
    return config


def _use_timing_cache(config, timing_cache: Path) -> None:
    blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is None and blob:
        log.warning("timing cache %s is unusable here (other GPU or TensorRT version?); starting afresh",
                    timing_cache)
        cache = config.create_timing_cache(b"")
    if cache is not None:
        config.set_timing_cache(cache, False)


def build_engine(bundle_dir: str | Path, out: Path, precision: str = "auto",
                 batch: tuple[int, int, int] = DEFAULT_BATCH, timing_cache: Path | None = None,
                 workspace_mb: int = DEFAULT_WORKSPACE_MB, dla_core: int | None = None,
                 gpu_fallback: bool = True) -> Path:
    """Build ``out`` (a ``.engine``/``.plan`` file) from the bundle's ONNX on this machine's GPU.

    Writes the engine atomically, then its sidecar ``out.json``. ``batch`` is (min, opt, max) of
    the optimisation profile, at the bundle's own height and width. ``timing_cache`` is read if
    it exists and written back after the build (it is specific to the GPU and TensorRT version).
    Returns ``out``.
    """
    out = Path(out)
    check_engine_name(out.name)
    batch = validate_batch(tuple(batch))
    if not isinstance(workspace_mb, int) or isinstance(workspace_mb, bool) or workspace_mb <= 0:
        raise ConfigError(f"workspace_mb must be a positive integer, got {workspace_mb!r}")
    normalize_precision(precision)
    bundle = read_bundle(bundle_dir)  # verifies every hash
    info = inspect_onnx(bundle.model_file)
    _check_bundle_onnx(bundle, info)
    profile = profile_shapes(info.input_shape, bundle.preprocess.height, bundle.preprocess.width, batch)

    try:
        trt = import_tensorrt()
    except MissingDependency as exc:  # the toolkit's kind of it (a subclass: both excepts catch it)
        raise DependencyError(str(exc)) from None
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

    config = _configure(trt, builder, plan, workspace_mb)
    prof = builder.create_optimization_profile()
    prof.set_shape(info.input_name, profile["min"], profile["opt"], profile["max"])
    config.add_optimization_profile(prof)
    if timing_cache is not None:
        timing_cache = Path(timing_cache)
        _use_timing_cache(config, timing_cache)

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
            timing_cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(timing_cache, bytes(tc.serialize()))

    from edgeseg import __version__

    side = sidecar_content(manifest_dict(bundle), bundle.path, plan, profile, info.input_name,
                           hashlib.sha256(data).hexdigest(), gpu=device_info(0), built_at=started,
                           engine_name=out.name, gpu_fallback=gpu_fallback, built_with=f"edgeseg {__version__}")
    side["build_seconds"] = round(time.time() - started, 3)
    side["workspace_mb"] = int(workspace_mb)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, data)
    atomic_write_json(sidecar_path(out), side)
    return out
