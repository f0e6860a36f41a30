"""THE table of TensorRT build rules, for every engine builder edgeseg has.

Three builders apply these rules: ``python3 -m edgeseg.export.tensorrt`` (edgeseg's own),
``export/build_engine.py`` (python3 + TensorRT only) and ``export/jetson_build.sh`` (trtexec).
The two scripts in ``export/`` load this file *by path* (edgeseg need not be installed on the
device), so it imports nothing but the standard library; its errors are edgeseg's when edgeseg
is importable and plain ``ValueError`` stand-ins when it is not.

What lives here:

- precisions and their aliases, engine file suffixes, the oldest TensorRT major edgeseg builds with;
- :func:`plan_build`: TensorRT version x requested precision x what the ONNX holds x DLA ->
  builder settings (or a refusal that says what to do instead). Per major version:

  - TensorRT 10.x builds weakly typed networks: an FP16 request (or an FP16 ONNX) sets
    ``BuilderFlag.FP16``; an INT8-QDQ ONNX (explicit quantization) sets ``BuilderFlag.INT8``.
    INT8 calibrators (deprecated since 10.1) are never used: INT8 comes only from Q/DQ nodes.
  - TensorRT 11 removed the precision builder flags: networks are strongly typed and the
    precision is that of the ONNX. The network is created with
    ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` where the enum still has it; a precision
    request that contradicts the ONNX is refused.

- :func:`dla_availability`: which TensorRT releases can target DLA at all;
- :func:`profile_shapes`: the optimisation profile, the batch range at the bundle's own size;
- :data:`TRTEXEC_FLAGS`: the same decisions spelled as trtexec options.

The sidecar written next to an engine is described in :mod:`.sidecar`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

try:  # inside edgeseg: its one error hierarchy
    from edgeseg.errors import BundleError, ConfigError, DependencyError
except ImportError:  # loaded by path from export/ on a device without edgeseg

    class ConfigError(ValueError):  # type: ignore[no-redef]
        """A build request the rules refuse."""

    class DependencyError(ValueError):  # type: ignore[no-redef]
        """A TensorRT too old (or missing) for these rules."""

    class BundleError(ValueError):  # type: ignore[no-redef]
        """A bundle whose ONNX and manifest disagree."""

REFUSALS = (ConfigError, DependencyError, BundleError)  # what a builder reports as one line

PRECISIONS = ("auto", "fp32", "fp16", "int8")
ALIASES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "int8-qdq": "int8", "int8_qdq": "int8",
           "qdq": "int8", "int8qdq": "int8"}
ENGINE_SUFFIXES = (".engine", ".plan")
MIN_TRT_MAJOR = 10
DEFAULT_BATCH = (1, 1, 1)
DEFAULT_WORKSPACE_MB = 1024
# the plan's flag names as trtexec options (TensorRT 11's trtexec has no --fp16/--int8; plan_build
# never asks for them there). DLA adds --useDLACore=N besides GPU_FALLBACK.
TRTEXEC_FLAGS = {"FP16": "--fp16", "INT8": "--int8", "GPU_FALLBACK": "--allowGPUFallback",
                 "STRONGLY_TYPED": "--stronglyTyped"}


def parse_version(text: str) -> tuple[int, int, int]:
    """'10.3.0.30' -> (10, 3, 0); '11.0' -> (11, 0, 0); '10.0.1b' -> (10, 0, 1). ValueError otherwise."""
    m = re.match(r"\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(text))
    if m is None:
        raise ValueError(f"not a version string: {text!r}")
    return tuple(int(g or 0) for g in m.groups())  # type: ignore[return-value]


def normalize_precision(value: str, allow_auto: bool = True) -> str:
    p = str(value).strip().lower()
    p = ALIASES.get(p, p)
    known = PRECISIONS if allow_auto else PRECISIONS[1:]
    if p not in known:
        raise ConfigError(f"unknown precision {value!r}; choose from {', '.join(known)}")
    return p


def check_engine_name(name: str) -> None:
    if not str(name).endswith(ENGINE_SUFFIXES):
        raise ConfigError(f"engine file name must end in {' or '.join(ENGINE_SUFFIXES)}: {name}")


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


def onnx_precision_without_onnx(has_qdq: bool, manifest_precision: object) -> str:
    """What the ONNX holds, for builders that cannot read it with the onnx package: Q/DQ nodes
    (seen by TensorRT's parser, or their op names in the file) mean int8; otherwise the
    bundle's declared precision tells fp16 from fp32."""
    if has_qdq:
        return "int8"
    declared = str(manifest_precision or "").strip().lower()
    return "fp16" if ALIASES.get(declared, declared) == "fp16" else "fp32"


def profile_shapes(input_shape: Sequence[int | None], height: int, width: int,
                   batch: Sequence[int] = DEFAULT_BATCH) -> dict[str, tuple[int, int, int, int]]:
    """min/opt/max NCHW shapes of the optimisation profile: the batch range at the bundle's own
    height and width (never a guessed large size). A fixed ONNX dimension must agree; a symbolic
    or unknown one is given as None (or any negative number, as TensorRT reports it)."""
    lo, opt, hi = validate_batch(tuple(batch))
    n, c, h, w = [None if d is None or d < 0 else d for d in (list(input_shape) + [None] * 4)[:4]]
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
    if major < MIN_TRT_MAJOR:
        return False, f"TensorRT {major}.{minor} is older than edgeseg supports ({MIN_TRT_MAJOR} or newer)"
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

    def trtexec_args(self) -> list[str]:
        """The same plan as trtexec options (precision, typing and DLA; shapes are added apart)."""
        args = [TRTEXEC_FLAGS[f] for f in self.network_flags + self.builder_flags]
        if self.dla_core is not None:
            args.append(f"--useDLACore={self.dla_core}")
        return args


def network_flags(trt_version: Sequence[int]) -> tuple[str, ...]:
    """NetworkDefinitionCreationFlag members to create the network with: STRONGLY_TYPED from
    TensorRT 11 on (where the enum still has it; strong typing is always on there), none before.
    They do not depend on the ONNX, so a builder may create the network before it plans."""
    return ("STRONGLY_TYPED",) if supported_version(trt_version)[0] >= 11 else ()


def supported_version(trt_version: Sequence[int]) -> tuple[int, int, int]:
    """(major, minor, patch), or DependencyError for a TensorRT older than :data:`MIN_TRT_MAJOR`."""
    version = tuple(int(v) for v in (tuple(trt_version) + (0, 0, 0))[:3])
    if version[0] < MIN_TRT_MAJOR:
        raise DependencyError(f"TensorRT {'.'.join(map(str, version))} is too old: edgeseg builds with TensorRT "
                              f"{MIN_TRT_MAJOR} or newer (pip install edgeseg[tensorrt], or JetPack 6.x which "
                              "ships TensorRT 10.3)")
    return version  # type: ignore[return-value]


_HOW_STRONGLY_TYPED = {
    "fp16": "export an FP16 bundle (edgeseg export --fp16) or convert the ONNX with ModelOpt AutoCast",
    "int8": "make an INT8-QDQ bundle (explicit Q/DQ quantization)",
    "fp32": "build from the FP32 bundle",
}


def _weakly_typed(req: str, model: str) -> tuple[str, list[str]]:
    """TensorRT 10.x: (engine precision, builder flags) for a request on an ONNX, or a refusal."""
    if model == "int8":
        if req == "fp32":
            raise ConfigError("this ONNX is INT8-quantized (Q/DQ nodes); it cannot be built as fp32: "
                              "build from the FP32 bundle instead, or use precision=auto")
        if req == "fp16":  # layers the Q/DQ nodes leave unquantized may use FP16
            return "int8+fp16", ["INT8", "FP16"]
        return "int8", ["INT8"]  # explicit quantization: the Q/DQ nodes, never a calibrator
    if model == "fp16":
        if req in ("fp32", "int8"):
            what = ("it already holds FP16 weights; build from the FP32 bundle" if req == "fp32" else
                    "INT8 needs an INT8-QDQ bundle (explicit Q/DQ); edgeseg never calibrates in TensorRT")
            raise ConfigError(f"precision={req} does not fit this FP16 ONNX: {what}")
        return "fp16", ["FP16"]
    if req == "int8":
        raise ConfigError("precision=int8 needs an INT8-QDQ bundle (explicit Q/DQ quantization); this ONNX "
                          "has no Q/DQ nodes, and INT8 calibrators are deprecated since TensorRT 10.1 "
                          "and gone in 11, so edgeseg does not use them")
    return ("fp16", ["FP16"]) if req == "fp16" else ("fp32", [])


def plan_build(trt_version: Sequence[int], requested: str, model_precision: str, dla_core: int | None = None,
               gpu_fallback: bool = True, batch: Sequence[int] = DEFAULT_BATCH) -> BuildPlan:
    """Decide builder settings from the TensorRT version, the requested precision and what the
    ONNX holds. Raises ConfigError for requests TensorRT cannot honour, with what to do instead,
    and DependencyError for a TensorRT older than :data:`MIN_TRT_MAJOR`."""
    version = supported_version(trt_version)
    vtext = ".".join(map(str, version))
    req = normalize_precision(requested)
    model = normalize_precision(model_precision, allow_auto=False)
    notes: list[str] = []
    strongly_typed = version[0] >= 11
    if strongly_typed:
        if req not in ("auto", model):
            raise ConfigError(f"TensorRT {vtext} builds strongly typed networks: the precision comes from the "
                              f"ONNX, which is {model}, so precision={req} contradicts it; "
                              f"{_HOW_STRONGLY_TYPED[req]}, or use precision=auto")
        precision, builder_flags = model, []
    else:
        precision, builder_flags = _weakly_typed(req, model)
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
    return BuildPlan(trt_version=version, precision=precision, model_precision=model,  # type: ignore[arg-type]
                     strongly_typed=strongly_typed, network_flags=network_flags(version),
                     builder_flags=tuple(builder_flags), dla_core=dla_core, notes=tuple(notes))
