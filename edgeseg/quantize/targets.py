"""The INT8 targets, as one table: ``cpu``, ``tensorrt`` and ``cpu-weights``.

Each entry of :data:`TARGETS` is a :class:`QuantRecipe` saying what the target's INT8 model
looks like (activation and weight types, symmetric or not, per-channel, weight-only, which ops),
what ONNX Runtime session settings a bundle of it needs, and a one-line description. Every
check of a target name (``edgeseg quantize``, ``edgeseg compress``'s recipe, the CLI's
``--target`` help) reads this table; :func:`get_target` refuses unknown names by listing it.
The recipes' reasons are in the comments of the table.

This module imports nothing heavy (no onnxruntime at import time), so the CLI can read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from edgeseg.errors import ConfigError

__all__ = ["QuantRecipe", "TARGETS", "target_names", "get_target", "pick", "DEFAULT_OP_TYPES"]

DEFAULT_OP_TYPES = ("Conv", "MatMul", "Gemm")


@dataclass(frozen=True)
class QuantRecipe:
    """How one deployment target's INT8 model is made (all Q/DQ format).

    ``activation_type`` is None for weight-only models (activations stay float and no
    calibration is needed). ``reduce_range`` quantizes weights to 7 bits ([-64, 64]);
    ``quantize_outputs`` puts Q/DQ on the outputs of the quantized ops too (needed by ONNX
    Runtime's CPU fusions into QLinearConv / QLinearMatMul; TensorRT prefers Q/DQ on inputs only
    and fuses the rest); ``quantize_bias`` stores Conv/Gemm biases as INT32 (ONNX Runtime) or
    keeps them float (TensorRT); ``weight_qdq_pair`` keeps weights float behind a Q->DQ pair
    instead of INT8 initializers + DQ; ``session_config`` holds the ONNX Runtime session entries
    a bundle of this target must be run with; ``tensorrt_qdq`` promises a model that passes
    :func:`edgeseg.export.qdq_rules.tensorrt_qdq_problems` (checked after quantizing).
    """

    name: str
    description: str
    activation_type: str | None  # "QUInt8" | "QInt8" | None (weight-only: float activations)
    weight_type: str = "QInt8"
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    per_channel: bool = True
    weight_only: bool = False
    reduce_range: bool = False
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    quantize_outputs: bool = True
    quantize_bias: bool = True
    dedicated_qdq_pair: bool = False
    weight_qdq_pair: bool = False
    matmul_weight_axis: int = 1  # (K, N) weights: one scale per output column
    session_config: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    tensorrt_qdq: bool = False  # promises Q/DQ that TensorRT's explicit quantization accepts

    @property
    def needs_calibration(self) -> bool:
        return not self.weight_only

    @property
    def activation_qtype(self):
        """onnxruntime's QuantType of the activations (None for weight-only)."""
        from onnxruntime.quantization import QuantType

        return None if self.activation_type is None else QuantType[self.activation_type]

    @property
    def weight_qtype(self):
        from onnxruntime.quantization import QuantType

        return QuantType[self.weight_type]

    def extra_options(self) -> dict:
        """The ``extra_options`` dict of onnxruntime.quantization for these settings."""
        return {
            "ActivationSymmetric": self.activation_symmetric,
            "WeightSymmetric": self.weight_symmetric,
            "QuantizeBias": self.quantize_bias,
            "DedicatedQDQPair": self.dedicated_qdq_pair,
            "AddQDQPairToWeight": self.weight_qdq_pair,
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": self.matmul_weight_axis},
            "OpTypesToExcludeOutputQuantization": [] if self.quantize_outputs else list(self.op_types),
        }

    def to_dict(self) -> dict:
        """What a quantized model records about its recipe (JSON)."""
        d = {"recipe": self.name, "format": "QDQ", "activations": self.activation_type or "float",
             "activations_symmetric": self.activation_symmetric if self.activation_type else None,
             "weights": self.weight_type, "weights_symmetric": self.weight_symmetric,
             "per_channel": self.per_channel, "reduce_range": self.reduce_range, "op_types": list(self.op_types)}
        if self.weight_only:
            d["weight_only"] = True
        if self.session_config:
            d["onnxruntime_session_config"] = dict(self.session_config)
        return d


TARGETS: Mapping[str, QuantRecipe] = MappingProxyType({
    # ONNX Runtime CPU (MLAS) on x86 and ARM. The fastest INT8 path is QDQ that ORT fuses into
    # QLinearConv/QLinearMatMul with uint8 activations x int8 weights (U8S8): activations QUInt8
    # asymmetric (post-GELU/ReLU tensors are one-sided, a zero point uses all 256 levels),
    # weights QInt8 symmetric per output channel (zero point 0, as the kernels require per-channel).
    #
    # reduce_range=True, deliberately: on x86 CPUs without VNNI (AVX2, and AVX-512 before
    # Cascade Lake) MLAS computes U8S8 products with VPMADDUBSW, which adds two u8*s8 products
    # into a *saturating* int16: 2 * 255 * 127 = 64770 > 32767, so dot products silently clip
    # whenever both neighbours are large. Per-channel weights make that common, because every
    # channel uses its full [-127, 127]. With 7-bit weights (|w| <= 64) the pair sum is at most
    # 2 * 255 * 64 = 32640 and can never saturate. The price (one bit of weight resolution) is
    # small with per-channel scales; the gain is that the same file gives the same results on
    # AVX2, AVX-512, AVX-VNNI/AVX512-VNNI/AMX and ARM (NEON/SDOT), instead of errors that depend
    # on which CPU the device happens to have. ONNX Runtime's own guidance (quantize_static
    # docstring) recommends reduce_range=True for non-VNNI x86 CPUs.
    "cpu": QuantRecipe(
        name="cpu",
        description="ONNX Runtime CPU (x86/ARM): QDQ, uint8 asymmetric activations, int8 symmetric "
                    "per-channel 7-bit weights (no VPMADDUBSW saturation on AVX2 without VNNI)",
        activation_type="QUInt8",  # asymmetric; weights: the defaults (QInt8, symmetric, per-channel)
        reduce_range=True,
    ),
    # TensorRT explicit quantization: only signed INT8 with zero point 0 (symmetric) for both
    # activations (per-tensor) and weights (per-channel on the output-channel axis: 0 for Conv,
    # 1 for MatMul's (K, N) weights). Q/DQ go on the inputs of the quantized ops only (TensorRT
    # fuses Conv/MatMul with bias and the following op and decides the output precision itself);
    # biases stay float (TensorRT has no INT32 DequantizeLinear); dedicated Q/DQ pairs per
    # consumer and float weights behind Q->DQ, the form NVIDIA's and ORT's TensorRT examples use.
    "tensorrt": QuantRecipe(
        name="tensorrt",
        description="TensorRT explicit quantization: QDQ, int8 symmetric (zero point 0) activations "
                    "and per-channel weights, Q/DQ on inputs only, float biases",
        activation_type="QInt8",
        activation_symmetric=True,
        quantize_outputs=False,
        quantize_bias=False,
        dedicated_qdq_pair=True,
        weight_qdq_pair=True,
        tensorrt_qdq=True,
    ),
    # Weight-only INT8 for ONNX Runtime CPU: Conv/MatMul weights stored as int8 (symmetric, per
    # output channel) behind a DequantizeLinear; activations stay float. Loaded with the session
    # config below, ONNX Runtime folds each DequantizeLinear once at load time, so the model runs
    # at FP32 speed from a file about 4x smaller: for CPUs where INT8 arithmetic is not faster.
    # No calibration images are needed. (edgeseg.quantize.weight_only makes these models.)
    "cpu-weights": QuantRecipe(
        name="cpu-weights",
        description="ONNX Runtime CPU, weight-only: int8 symmetric per-channel weights, float "
                    "activations, no calibration; FP32 speed from a ~4x smaller file",
        activation_type=None,
        weight_only=True,
        op_types=("Conv", "MatMul"),
        quantize_outputs=False,
        quantize_bias=False,
        session_config=MappingProxyType({"session.disable_quant_qdq": "1"}),
    ),
})


def target_names() -> tuple[str, ...]:
    """The INT8 target names, in table order (for option checks and help texts)."""
    return tuple(TARGETS)


def pick(table: Mapping, name, what: str):
    """``table[name]`` (case and surrounding spaces ignored), or ConfigError naming the valid keys."""
    entry = table.get(str(name).strip().lower())
    if entry is None:
        raise ConfigError(f"unknown {what} {name!r}; choose one of: {', '.join(table)}")
    return entry


def get_target(name: str | QuantRecipe) -> QuantRecipe:
    """The table entry for ``name``; ConfigError listing the valid names otherwise."""
    return name if isinstance(name, QuantRecipe) else pick(TARGETS, name, "INT8 target")
