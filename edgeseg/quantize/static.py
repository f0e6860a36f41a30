"""Post-training INT8 quantization of exported SegFormer ONNX models (Q/DQ format).

The pieces, in the order a user meets them:

- :func:`load_calibration` reads *real* images (and refuses noise, constant images, or too few),
  pre-processes them exactly like the model expects and fingerprints the set;
- :class:`CalibrationReader` feeds them to ONNX Runtime's calibrators, one distinct batch per call;
- :data:`RECIPES` holds the quantization settings per deployment target (``cpu``, ``tensorrt``),
  :data:`CALIBRATION_METHODS` the range estimators (``minmax``, ``entropy``, ``percentile``);
- :class:`Int8Quantizer` calibrates once and then writes any number of Q/DQ models quickly, each
  with a chosen set of nodes left in float (the building block of sensitivity searches);
- :func:`check_tensorrt_qdq` lists what TensorRT's explicit quantization would not accept;
- :func:`quantize_dynamic_baseline` / :func:`quantize_static_baseline` reproduce what users get
  today from ONNX Runtime's defaults, for benchmarks.

Only compute-heavy ops (Conv, MatMul, Gemm) are quantized; LayerNormalization, Softmax, GELU
(Erf), Add, Resize, ... stay in float. Those are the ops where INT8 buys little speed but costs
most accuracy in transformers.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantType

from edgeseg.data import folders as D
from edgeseg.errors import ConfigError, DataError, ModelError
from edgeseg.runtime.preprocess import Preprocess, preprocess, validate_image

log = logging.getLogger(__name__)

__all__ = [
    "MIN_CALIBRATION_IMAGES",
    "NOISE_CORRELATION",
    "CONSTANT_STD",
    "noise_stats",
    "looks_like_noise",
    "load_calibration",
    "CalibrationReader",
    "Recipe",
    "RECIPES",
    "Calibration",
    "CALIBRATION_METHODS",
    "get_recipe",
    "get_calibration",
    "Int8Quantizer",
    "group_of",
    "check_tensorrt_qdq",
    "quantize_dynamic_baseline",
    "quantize_static_baseline",
]

# --------------------------------------------------------------------------------------------
# calibration data

MIN_CALIBRATION_IMAGES = 8
# Lag-1 autocorrelation of the gray image, averaged over the horizontal and vertical directions.
# Photographs and medical images are dominated by smooth structure: neighbouring pixels are
# strongly correlated (the embedded endoscopy-like set: >= 0.93; typical photos, CT, X-ray,
# ultrasound: 0.8-0.99). Independent per-pixel noise (np.random uniform/normal, salt-and-pepper)
# has ~0 correlation (|r| < 0.07 even after JPEG at quality 50). 0.5 sits far from both.
NOISE_CORRELATION = 0.5
# A gray-level standard deviation below 2 (on 0-255) is a blank/constant image (JPEG ringing of
# a flat image stays well below this).
CONSTANT_STD = 2.0
_STATS_MAX_SIDE = 512


def _gray(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> HxW float64 mean of the channels, block-averaged down to <= 512 px.

    Averaging non-overlapping k x k blocks keeps i.i.d. noise i.i.d. (so its neighbour correlation
    stays ~0) and keeps natural images correlated, while bounding the cost on huge images.
    """
    g = image.astype(np.float64).mean(axis=2)
    k = int(np.ceil(max(g.shape) / _STATS_MAX_SIDE))
    if k > 1:
        h, w = (g.shape[0] // k) * k, (g.shape[1] // k) * k
        g = g[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3))
    return g


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    d = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / d) if d > 0 else 0.0


def noise_stats(image: np.ndarray) -> tuple[float, float]:
    """(neighbour correlation, gray std) of an HxWx3 (or HxW) uint8 image.

    The correlation is the mean of the Pearson correlations between horizontally and between
    vertically adjacent pixels of the gray image; 0.0 for images without variation or smaller
    than 2x2.
    """
    g = _gray(validate_image(image))
    std = float(g.std())
    if g.shape[0] < 2 or g.shape[1] < 2 or std == 0.0:
        return 0.0, std
    return 0.5 * (_corr(g[:, :-1], g[:, 1:]) + _corr(g[:-1, :], g[1:, :])), std


def looks_like_noise(image: np.ndarray) -> bool:
    """True when an image carries no image structure: constant (gray std < 2 levels) or
    noise-like (neighbouring pixels correlate less than 0.5; see :data:`NOISE_CORRELATION`).

    Calibrating on such images makes INT8 ranges that match no real input, so
    :func:`load_calibration` refuses sets made of them.
    """
    corr, std = noise_stats(image)
    return std < CONSTANT_STD or corr < NOISE_CORRELATION


def load_calibration(root: str | Path, pp: Preprocess, count: int = 64, split: str | None = None, seed: int = 0,
                     allow_few: bool = False) -> tuple[np.ndarray, dict]:
    """Read, check and pre-process calibration images.

    ``root`` is a dataset folder (its ``images/`` are used, masks are not needed) or a plain
    folder of images. ``split`` is a split name (``ROOT/splits/NAME.txt``) or a split file.
    ``count`` images are chosen (all of them if there are fewer) by a seeded random choice, kept
    in folder order. Returns ``(N x 3 x h x w float32, info)`` with info ``count``, ``sha256``
    (see :func:`edgeseg.data.folders.fingerprint`), ``root``, ``split``, ``seed``.

    Raises DataError for fewer than 8 images (unless ``allow_few``) and when more than a quarter
    of the images are noise or constant.
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ConfigError(f"calibration count must be a positive integer, got {count!r}")
    root = Path(root)
    samples = D.discover(root, split=split, require_masks=False)
    found = len(samples)
    if found > count:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(found, size=int(count), replace=False))
        samples = [samples[i] for i in keep]
    where = f"{root}" + (f" (split {split})" if split else "")
    if len(samples) < MIN_CALIBRATION_IMAGES and not allow_few:
        why = (f"count={count} was asked for" if count < MIN_CALIBRATION_IMAGES and found >= count
               else f"only {found} image(s) found in {where}")
        raise DataError(f"too few calibration images: {len(samples)} ({why}); INT8 ranges from fewer than "
                        f"{MIN_CALIBRATION_IMAGES} images are unreliable. Add real images of the kind the model "
                        "will see (64-512 is typical), or pass allow_few=True to accept the risk")

    images, noisy, flat = [], [], []
    for s in samples:
        im = D.read_image(s.image)
        corr, std = noise_stats(im)
        if std < CONSTANT_STD:
            flat.append(s.name)
        elif corr < NOISE_CORRELATION:
            noisy.append(s.name)
        images.append(im)
    bad = len(noisy) + len(flat)
    if bad * 4 > len(images):
        parts = []
        if noisy:
            parts.append(f"{len(noisy)} look like random noise (neighbouring pixels uncorrelated, "
                         f"e.g. {noisy[0]!r})")
        if flat:
            parts.append(f"{len(flat)} are constant/blank (e.g. {flat[0]!r})")
        raise DataError(f"calibration set {where} is not usable: of {len(images)} images, "
                        f"{' and '.join(parts)}. Calibrating on such data gives INT8 ranges that fit no real "
                        "input; use real images from the deployment domain (e.g. the training or a "
                        "calibration split of the dataset)")
    if bad:
        log.warning("%d of %d calibration images look like noise or are constant (e.g. %r); using them anyway",
                    bad, len(images), (noisy + flat)[0])
    arr = np.stack([preprocess(im, pp) for im in images]).astype(np.float32, copy=False)
    info = {"count": len(samples), "sha256": D.fingerprint(samples)["sha256"], "root": str(root),
            "split": split, "seed": seed}
    return np.ascontiguousarray(arr), info


class CalibrationReader(CalibrationDataReader):
    """ONNX Runtime calibration feed over an (N, 3, h, w) array.

    Each :meth:`get_next` returns the next *different* slice of ``batch_size`` images (the last
    one may be smaller) as ``{input_name: batch}`` and ``None`` once exhausted; :meth:`rewind`
    starts again. ``len()`` is the number of batches; :meth:`set_range` (batch indices, as ONNX
    Runtime's strided calibration uses it) restricts the feed to a range of batches.
    """

    def __init__(self, data: np.ndarray, batch_size: int = 1, input_name: str = "pixel_values") -> None:
        if not isinstance(data, np.ndarray) or data.ndim != 4 or data.shape[0] < 1:
            shape = getattr(data, "shape", None)
            raise DataError(f"calibration data must be a non-empty (N, C, H, W) array, got shape {shape}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        self.batch_size = int(batch_size)
        self.input_name = input_name
        self.num_batches = -(-self.data.shape[0] // self.batch_size)
        self._start, self._end = 0, self.num_batches
        self._next = 0

    def get_next(self) -> dict | None:
        if self._next >= self._end:
            return None
        i = self._next * self.batch_size
        self._next += 1
        return {self.input_name: self.data[i:i + self.batch_size]}

    def rewind(self) -> None:
        self._next = self._start

    def __len__(self) -> int:
        return self._end - self._start

    def set_range(self, start_index: int, end_index: int) -> None:
        if not 0 <= start_index <= end_index <= self.num_batches:
            raise ConfigError(f"batch range {start_index}..{end_index} outside 0..{self.num_batches}")
        self._start, self._end = start_index, end_index
        self._next = start_index

    def batch_rows(self, index: int) -> int:
        """How many images batch ``index`` holds."""
        return min(self.batch_size, self.data.shape[0] - index * self.batch_size)


# --------------------------------------------------------------------------------------------
# recipes and calibration methods

DEFAULT_OP_TYPES = ("Conv", "MatMul", "Gemm")


@dataclass(frozen=True)
class Recipe:
    """Quantization settings for one deployment target (all Q/DQ format).

    ``reduce_range`` quantizes weights to 7 bits ([-64, 64]); ``quantize_outputs`` puts Q/DQ on
    the outputs of the quantized ops too (needed by ONNX Runtime's CPU fusions into QLinearConv /
    QLinearMatMul; TensorRT prefers Q/DQ on inputs only and fuses the rest); ``quantize_bias``
    stores Conv/Gemm biases as INT32 (ONNX Runtime) or keeps them float (TensorRT);
    ``weight_qdq_pair`` keeps weights float behind a Q->DQ pair instead of INT8 initializers + DQ.
    """

    name: str
    description: str
    activation_type: str  # "QUInt8" | "QInt8"
    weight_type: str
    activation_symmetric: bool
    weight_symmetric: bool = True
    per_channel: bool = True
    reduce_range: bool = False
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    quantize_outputs: bool = True
    quantize_bias: bool = True
    dedicated_qdq_pair: bool = False
    weight_qdq_pair: bool = False
    matmul_weight_axis: int = 1  # (K, N) weights: one scale per output column

    @property
    def activation_qtype(self) -> QuantType:
        return QuantType[self.activation_type]

    @property
    def weight_qtype(self) -> QuantType:
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
        return {"recipe": self.name, "format": "QDQ", "activations": self.activation_type,
                "activations_symmetric": self.activation_symmetric, "weights": self.weight_type,
                "weights_symmetric": self.weight_symmetric, "per_channel": self.per_channel,
                "reduce_range": self.reduce_range, "op_types": list(self.op_types)}


RECIPES: dict[str, Recipe] = {
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
    "cpu": Recipe(
        name="cpu",
        description="ONNX Runtime CPU (x86/ARM): QDQ, uint8 asymmetric activations, int8 symmetric "
                    "per-channel 7-bit weights (no VPMADDUBSW saturation on AVX2 without VNNI)",
        activation_type="QUInt8",
        weight_type="QInt8",
        activation_symmetric=False,
        reduce_range=True,
        quantize_outputs=True,
        quantize_bias=True,
    ),
    # TensorRT explicit quantization: only signed INT8 with zero point 0 (symmetric) for both
    # activations (per-tensor) and weights (per-channel on the output-channel axis: 0 for Conv,
    # 1 for MatMul's (K, N) weights). Q/DQ go on the inputs of the quantized ops only (TensorRT
    # fuses Conv/MatMul with bias and the following op and decides the output precision itself);
    # biases stay float (TensorRT has no INT32 DequantizeLinear); dedicated Q/DQ pairs per
    # consumer and float weights behind Q->DQ, the form NVIDIA's and ORT's TensorRT examples use.
    "tensorrt": Recipe(
        name="tensorrt",
        description="TensorRT explicit quantization: QDQ, int8 symmetric (zero point 0) activations "
                    "and per-channel weights, Q/DQ on inputs only, float biases",
        activation_type="QInt8",
        weight_type="QInt8",
        activation_symmetric=True,
        reduce_range=False,
        quantize_outputs=False,
        quantize_bias=False,
        dedicated_qdq_pair=True,
        weight_qdq_pair=True,
    ),
}


@dataclass(frozen=True)
class Calibration:
    """One range estimator: the onnxruntime CalibrationMethod and its create_calibrator options."""

    name: str
    method: CalibrationMethod
    options: Mapping = field(default_factory=lambda: MappingProxyType({}))

    def calibrator_options(self, symmetric: bool) -> dict:
        opts = dict(self.options)
        opts["symmetric"] = symmetric
        return opts

    def to_dict(self) -> dict:
        return {"method": self.name, **{k: v for k, v in self.options.items()}}


CALIBRATION_METHODS: dict[str, Calibration] = {
    # global min/max over all images: exact, but one outlier pixel stretches the range
    "minmax": Calibration("minmax", CalibrationMethod.MinMax, MappingProxyType({"moving_average": False})),
    # KL-divergence threshold (TensorRT's classic method). onnxruntime's default of 128 histogram
    # bins with 128 quantized bins leaves a single candidate threshold (= the max); 512 bins
    # gives it 193 candidates at an acceptable cost (its search is pure Python).
    "entropy": Calibration("entropy", CalibrationMethod.Entropy,
                           MappingProxyType({"num_bins": 512, "num_quantized_bins": 128})),
    # clip the 0.01 % most extreme values
    "percentile": Calibration("percentile", CalibrationMethod.Percentile,
                              MappingProxyType({"percentile": 99.99, "num_bins": 2048})),
}


def get_recipe(name: str | Recipe) -> Recipe:
    if isinstance(name, Recipe):
        return name
    r = RECIPES.get(str(name).strip().lower())
    if r is None:
        raise ConfigError(f"unknown quantization recipe {name!r}; known: {', '.join(RECIPES)}")
    return r


def get_calibration(name: str | Calibration) -> Calibration:
    if isinstance(name, Calibration):
        return name
    c = CALIBRATION_METHODS.get(str(name).strip().lower())
    if c is None:
        raise ConfigError(f"unknown calibration method {name!r}; known: {', '.join(CALIBRATION_METHODS)}")
    return c


# --------------------------------------------------------------------------------------------
# model helpers


def _load_onnx(path: str | Path):
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ONNX model not found: {path}")
    try:
        m = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise ModelError(f"{path} is not an ONNX model: {str(exc).splitlines()[0][:200] if str(exc) else exc!r}") \
            from None
    if not m.graph.node or not m.graph.input or not m.opset_import:
        raise ModelError(f"{path} is not an ONNX model (no graph, inputs or opset)")
    return m


def _image_input(m):
    inits = {t.name for t in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelError(f"the model has {len(inputs)} inputs; edgeseg quantizes single-input image models")
    inp = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    return inp.name, dims


def _edgeseg_meta(m) -> dict | None:
    from edgeseg.export.onnx import get_metadata

    try:
        return get_metadata(m)
    except ValueError:
        log.warning("the model's edgeseg metadata is not valid JSON; it is not carried over")
        return None


def _save_model(m, out: Path) -> Path:
    import onnx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        onnx.save(m, str(tmp))
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _mark_int8(m, source_meta: dict | None, quant: dict) -> None:
    """Carry the source's edgeseg metadata over, with precision int8 and how it was quantized."""
    from edgeseg.export.onnx import set_metadata

    if source_meta is None:
        log.warning("the source model has no edgeseg metadata; the INT8 model has none either")
        return
    meta = dict(source_meta)
    meta["precision"] = "int8"
    meta["quantization"] = quant
    set_metadata(m, meta)


def _float_graph_outputs(m) -> int:
    """Drop the Q->DQ pair in front of each graph output, so logits/probabilities leave the model
    in full float precision (8-bit logits would turn near-ties at class boundaries into coin
    flips, for no speed gain: the last op is tiny). Returns the number of outputs changed."""
    nodes = list(m.graph.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output}
    uses: dict[str, int] = {}
    for n in nodes:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    outputs = {o.name for o in m.graph.output}
    drop: set[int] = set()
    for name in outputs:
        dq = producer.get(name)
        if dq is None or nodes[dq].op_type != "DequantizeLinear":
            continue
        q = producer.get(nodes[dq].input[0])
        if q is None or nodes[q].op_type != "QuantizeLinear" or uses.get(nodes[q].output[0], 0) != 1:
            continue
        tensor = nodes[q].input[0]
        src = producer.get(tensor)
        if src is None or tensor in outputs or uses.get(tensor, 0) != 1:
            continue
        for k, o in enumerate(nodes[src].output):
            if o == tensor:
                nodes[src].output[k] = name
        drop.update((q, dq))
    for k in sorted(drop, reverse=True):
        del m.graph.node[k]
    return len(drop) // 2


_STAGE_BLOCK = [
    # transformers >= 5: segformer.stages.N.blocks.M / stages.N.patch_embeddings
    re.compile(r"/stages\.(?P<stage>\d+)/blocks\.(?P<block>\d+)/(?P<part>attention|mlp)?"),
    # transformers 4.x: segformer.encoder.block.N.M / encoder.patch_embeddings.N
    re.compile(r"/encoder/block\.(?P<stage>\d+)/(?P<block>\d+)/(?P<part>attention|mlp)?"),
]
_PATCH = [re.compile(r"/stages\.(?P<stage>\d+)/patch_embeddings/"),
          re.compile(r"/encoder/patch_embeddings\.(?P<stage>\d+)/")]


def group_of(node_name: str) -> str:
    """SegFormer block a node belongs to, from the module path in its exported name.

    ``stage{N}.block{M}.attention`` (q/k/v/o projections, the spatial-reduction conv and the two
    attention products), ``stage{N}.block{M}.mlp`` (fc1, depth-wise conv, fc2),
    ``stage{N}.patch_embed``, ``decode_head``; ``other`` for anything else. N and M are the
    module indices as in the names (0-based).
    """
    for rx in _STAGE_BLOCK:
        mt = rx.search(node_name)
        if mt:
            g = f"stage{int(mt['stage'])}.block{int(mt['block'])}"
            return f"{g}.{mt['part']}" if mt["part"] else g
    for rx in _PATCH:
        mt = rx.search(node_name)
        if mt:
            return f"stage{int(mt['stage'])}.patch_embed"
    if "/decode_head/" in node_name or node_name.startswith("decode_head"):
        return "decode_head"
    return "other"


# --------------------------------------------------------------------------------------------
# the quantizer


class Int8Quantizer:
    """Calibrate an FP32 ONNX model once; write Q/DQ INT8 models from it many times.

    ``calib`` is the (N, 3, h, w) float32 output of :func:`load_calibration`; pass its info dict
    as ``calib_info`` to record the calibration set in the quantized models' metadata.
    The model is first prepared with ``onnxruntime.quantization.quant_pre_process`` (shape
    inference + basic graph optimisation; node names are kept), calibrated on the op types of the
    recipe, and the tensor ranges are kept; :meth:`quantize` then only inserts Q/DQ nodes.
    """

    def __init__(self, fp32_onnx: str | Path, calib: np.ndarray, recipe: str = "cpu", method: str = "percentile",
                 batch_size: int = 1, *, calib_info: dict | None = None, preprocess_model: bool = True,
                 images_per_pass: int = 8) -> None:
        from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

        self.recipe = get_recipe(recipe)
        self.calibration = get_calibration(method)
        self.source = Path(fp32_onnx)
        self.calib_info = dict(calib_info) if calib_info else None
        src = _load_onnx(self.source)
        self.source_meta = _edgeseg_meta(src)
        self.input_name, dims = _image_input(src)
        calib = self._check_calib(calib, dims)
        if dims and dims[0] is not None and dims[0] != batch_size:
            log.info("the model has a fixed batch of %d: calibrating with that batch size", dims[0])
            batch_size = dims[0]
            usable = (calib.shape[0] // batch_size) * batch_size
            if usable == 0:
                raise DataError(f"the model takes batches of exactly {batch_size} images but only "
                                f"{calib.shape[0]} calibration images were given")
            calib = calib[:usable]
        self.reader = CalibrationReader(calib, batch_size, self.input_name)
        self.num_images = int(calib.shape[0])

        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="edgeseg-quant-") as tmp:
            tmp = Path(tmp)
            prepared = self._prepare(tmp, preprocess_model)
            self._model = load_model_with_shape_infer(prepared)
            self.tensors_range = self._calibrate(prepared, tmp, images_per_pass)
        self.calibration_seconds = time.perf_counter() - t0
        log.info("calibrated %d tensors on %d images (%s, %s) in %.1f s", len(self.tensors_range.data),
                 self.num_images, self.recipe.name, self.calibration.name, self.calibration_seconds)
        self._names = [n.name for n in self._model.graph.node]

    # -- setup -------------------------------------------------------------------------------

    def _check_calib(self, calib, dims) -> np.ndarray:
        if not isinstance(calib, np.ndarray) or calib.ndim != 4 or calib.shape[0] < 1:
            raise DataError(f"calibration data must be a non-empty (N, 3, H, W) array, got "
                            f"{getattr(calib, 'shape', type(calib).__name__)}")
        if not np.issubdtype(calib.dtype, np.floating):
            raise DataError(f"calibration data must be pre-processed float32 (see load_calibration), got {calib.dtype}")
        if not np.isfinite(calib).all():
            raise DataError("calibration data contains NaN or infinite values")
        if len(dims) == 4:
            for axis, label in ((1, "channels"), (2, "height"), (3, "width")):
                if dims[axis] is not None and dims[axis] != calib.shape[axis]:
                    raise DataError(f"calibration data has {label} {calib.shape[axis]} but the model takes "
                                    f"{dims[axis]}: pre-process the images with the model's Preprocess "
                                    f"(input {dims[2]}x{dims[3]})")
        return np.ascontiguousarray(calib, dtype=np.float32)

    def _prepare(self, tmp: Path, enabled: bool) -> Path:
        import shutil

        from onnxruntime.quantization.shape_inference import quant_pre_process

        prepared = tmp / "prepared.onnx"
        if enabled:
            try:
                quant_pre_process(str(self.source), str(prepared))
                return prepared
            except Exception as exc:  # noqa: BLE001 - optional step; quantization works without it
                log.warning("quant_pre_process failed (%s); quantizing the model as exported",
                            str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        shutil.copyfile(self.source, prepared)
        return prepared

    def _calibrate(self, prepared: Path, tmp: Path, images_per_pass: int):
        from onnxruntime.quantization import TensorsData, create_calibrator

        symmetric = self.recipe.activation_symmetric
        calibrator = create_calibrator(prepared, list(self.recipe.op_types),
                                       augmented_model_path=str(tmp / "augmented.onnx"),
                                       calibrate_method=self.calibration.method,
                                       extra_options=self.calibration.calibrator_options(symmetric))
        # Feed the calibrator a few batches per collect_data() call: bounded memory (the histogram
        # calibrators keep every intermediate output of a call), and each call sees batches of one
        # size (they stack the outputs of a call into one array, which a shorter last batch breaks).
        reader = self.reader
        per_pass = max(1, int(images_per_pass) // reader.batch_size)
        chunks, start = [], 0
        while start < reader.num_batches:
            end = min(start + per_pass, reader.num_batches)
            if reader.batch_rows(end - 1) != reader.batch_size and end - 1 > start:
                end -= 1  # the short last batch gets a pass of its own
            chunks.append((start, end))
            start = end
        sink = io.StringIO()  # onnxruntime's histogram collector print()s progress lines
        try:
            with contextlib.redirect_stdout(sink):
                for a, b in chunks:
                    reader.set_range(a, b)
                    calibrator.collect_data(reader)
                ranges = calibrator.compute_data()
        except Exception as exc:
            raise ModelError(f"calibration failed: {str(exc).splitlines()[0][:300] if str(exc) else exc!r}") from exc
        finally:
            reader.set_range(0, reader.num_batches)
            del calibrator
        if not isinstance(ranges, TensorsData) or not ranges.data:
            raise ModelError(f"calibration produced no ranges: the model has no {'/'.join(self.recipe.op_types)} "
                             "nodes with float tensors")
        return ranges

    # -- inspection --------------------------------------------------------------------------

    def quantizable_nodes(self) -> list[str]:
        """Names of the nodes of the recipe's op types (Conv, MatMul, Gemm), in graph order."""
        ops = set(self.recipe.op_types)
        return [n.name for n in self._model.graph.node if n.op_type in ops]

    def node_groups(self) -> dict[str, list[str]]:
        """Quantizable nodes grouped by SegFormer block (see :func:`group_of`), in graph order."""
        groups: dict[str, list[str]] = {}
        for name in self.quantizable_nodes():
            groups.setdefault(group_of(name), []).append(name)
        return groups

    # -- quantization ------------------------------------------------------------------------

    def quantize(self, out: str | Path, exclude: Iterable[str] = ()) -> Path:
        """Write a Q/DQ INT8 model to ``out`` with the nodes named in ``exclude`` left in float.

        Uses the stored ranges (no recalibration). Excluded nodes get no Q/DQ of their own: their
        weights stay float; an activation they share with a quantized node may still arrive
        through that node's Q/DQ pair. Graph outputs (logits) are always left in float. The graph
        is topologically sorted and passes ``onnx.checker``. Returns ``out``.
        """
        import onnx
        from onnxruntime.quantization import QDQQuantizer
        from onnxruntime.quantization.quant_utils import update_opset_version

        if isinstance(exclude, str):
            exclude = [exclude]
        exclude = list(dict.fromkeys(exclude))
        known = set(self._names)
        missing = [e for e in exclude if e not in known]
        if missing:
            raise ConfigError(f"{len(missing)} node(s) to exclude are not in the model, e.g. {missing[0]!r}; "
                              "see quantizable_nodes()")
        r = self.recipe
        model = update_opset_version(copy.deepcopy(self._model), r.weight_qtype, r.activation_qtype)
        try:
            quantizer = QDQQuantizer(model, r.per_channel, r.reduce_range, r.weight_qtype, r.activation_qtype,
                                     self.tensors_range, [], exclude, list(r.op_types), r.extra_options())
            qmodel = quantizer.quantize_model()
            _float_graph_outputs(qmodel)
            quantizer.model.clean_initializers()
            quantizer.model.topological_sort()  # Q/DQ nodes are appended; TensorRT's parser needs order
            onnx.checker.check_model(qmodel)
        except Exception as exc:
            raise ModelError(f"quantization failed: {str(exc).splitlines()[0][:300] if str(exc) else exc!r}") \
                from exc
        quant = {**r.to_dict(), "calibration": self.calibration.to_dict(), "excluded": sorted(exclude),
                 "calibration_images": self.num_images}
        if self.calib_info:
            quant["calibration_set"] = {k: self.calib_info[k] for k in ("count", "sha256") if k in self.calib_info}
        _mark_int8(qmodel, self.source_meta, quant)
        return _save_model(qmodel, Path(out))


# --------------------------------------------------------------------------------------------
# TensorRT compatibility check


def _constants(graph) -> dict:
    consts = {t.name: t for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = a.t
    return consts


def check_tensorrt_qdq(onnx_path) -> list[str]:
    """What in a Q/DQ model TensorRT's explicit INT8 quantization would reject; [] when fine.

    Rules (TensorRT quantizes symmetrically to signed INT8 only):

    - every QuantizeLinear/DequantizeLinear has a constant zero point of type INT8 (not UINT8,
      not INT32: TensorRT has no INT32 dequantization, keep biases float) and all its values 0
      (a QuantizeLinear without zero point outputs UINT8);
    - scales are constant, float, finite and > 0;
    - activation scales are per-tensor (one value);
    - per-channel weight scales run along the output channels with one scale per channel:
      axis 0 for Conv weights (K, C/g, kh, kw), axis 1 for ConvTranspose and for MatMul's (K, N)
      weights, axis 0/1 for Gemm with/without transB. Per-tensor weight scales are allowed.

    ``onnx_path`` is a path or an onnx ModelProto.
    """
    from onnx import TensorProto, numpy_helper

    m = onnx_path if hasattr(onnx_path, "graph") else _load_onnx(onnx_path)
    g = m.graph
    consts = _constants(g)
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i, name in enumerate(n.input):
            consumers.setdefault(name, []).append((n, i))
    qdq = ("QuantizeLinear", "DequantizeLinear")
    problems: list[str] = []

    def from_weight(n) -> bool:
        """Does this Q/DQ node carry a constant (a weight) rather than an activation?"""
        x = n.input[0]
        if x in consts:
            return True
        p = producer.get(x)
        return p is not None and p.op_type == "QuantizeLinear" and p.input[0] in consts

    def weight_users(n):
        """(consumer op node, input index) of the float tensor a weight Q/DQ chain produces."""
        out = n.output[0]
        if n.op_type == "QuantizeLinear":
            nxt = [c for c, _ in consumers.get(out, []) if c.op_type == "DequantizeLinear"]
            return [u for d in nxt for u in consumers.get(d.output[0], [])]
        return consumers.get(out, [])

    for n in g.node:
        if n.op_type not in qdq or n.domain not in ("", "ai.onnx", "com.microsoft"):
            continue
        label = f"{n.op_type} {n.name or n.output[0]}"
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        # zero point
        zp_name = n.input[2] if len(n.input) > 2 else ""
        if not zp_name:
            x = consts.get(n.input[0])
            if n.op_type == "QuantizeLinear" or x is None or x.data_type != TensorProto.INT8:
                problems.append(f"{label}: no zero point (defaults to UINT8); TensorRT needs an INT8 zero point of 0")
        elif zp_name not in consts:
            problems.append(f"{label}: zero point is not a constant")
        else:
            zp = consts[zp_name]
            if zp.data_type != TensorProto.INT8:
                tname = TensorProto.DataType.Name(zp.data_type)
                is_bias = zp.data_type == TensorProto.INT32
                hint = " (a quantized bias: keep biases float for TensorRT)" if is_bias else ""
                problems.append(f"{label}: zero point is {tname}; TensorRT needs signed INT8{hint}")
            elif np.any(numpy_helper.to_array(zp) != 0):
                problems.append(f"{label}: non-zero zero point; TensorRT supports symmetric quantization only")
        # scale
        sc_name = n.input[1] if len(n.input) > 1 else ""
        if sc_name not in consts:
            problems.append(f"{label}: scale is not a constant")
            continue
        sc = consts[sc_name]
        if sc.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16):
            problems.append(f"{label}: scale has type {TensorProto.DataType.Name(sc.data_type)}, expected float")
            continue
        s = numpy_helper.to_array(sc).astype(np.float64)
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            problems.append(f"{label}: scales must be finite and > 0 (min {np.nanmin(s) if s.size else 'none'})")
        per_channel = s.size > 1
        if not from_weight(n):
            if per_channel:
                problems.append(f"{label}: activation has {s.size} scales; TensorRT takes per-tensor activation scales")
            continue
        if not per_channel:
            continue
        for user, idx in weight_users(n):
            if idx != 1 or user.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
                continue
            if user.op_type == "Conv":
                want = 0
            elif user.op_type == "Gemm":
                want = 0 if any(a.name == "transB" and a.i for a in user.attribute) else 1
            else:
                want = 1  # ConvTranspose (C, K/g, kh, kw) and MatMul (K, N): output channels on axis 1
            w = consts.get(n.input[0]) if n.input[0] in consts else consts.get(producer[n.input[0]].input[0])
            rank = len(w.dims) if w is not None else None
            norm = axis + rank if (rank is not None and axis < 0) else axis
            if norm != want:
                problems.append(f"{label}: per-channel weight scales on axis {axis}; {user.op_type} "
                                f"{user.name} needs axis {want} (output channels)")
            elif w is not None and w.dims[want] != s.size:
                problems.append(f"{label}: {s.size} scales for {w.dims[want]} output channels")
    return problems


# --------------------------------------------------------------------------------------------
# baselines: what ONNX Runtime's defaults give, for benchmarks


def quantize_dynamic_baseline(fp32: str | Path, out: str | Path) -> Path:
    """Dynamic INT8 as ``optimum-cli onnxruntime quantize --avx512`` makes it.

    That is ORT's ``quantize_dynamic`` with int8 symmetric per-tensor weights, no reduced range,
    on MatMul only (optimum's default operator list is MatMul and Add, and Add has no dynamic
    kernel); activations are quantized at run time, Convs stay float.
    """
    from onnxruntime.quantization import quantize_dynamic

    src = _load_onnx(fp32)
    meta = _edgeseg_meta(src)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        quantize_dynamic(Path(fp32), out, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         per_channel=False, reduce_range=False)
    except Exception as exc:
        raise ModelError(f"dynamic quantization failed: {str(exc).splitlines()[0][:300]}") from exc
    return _restamp(out, meta, {"baseline": "onnxruntime quantize_dynamic", "weights": "QInt8", "per_channel": False,
                                "op_types": ["MatMul"]})


def quantize_static_baseline(fp32: str | Path, out: str | Path, calib: np.ndarray) -> Path:
    """Static QDQ INT8 with ONNX Runtime's defaults: ``quantize_static`` with MinMax calibration,
    int8 asymmetric activations, int8 per-tensor weights, every op type it can quantize
    (LayerNormalization, Softmax, Resize, Transpose, ... included), no pre-processing."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    src = _load_onnx(fp32)
    meta = _edgeseg_meta(src)
    name, _ = _image_input(src)
    reader = CalibrationReader(np.asarray(calib), 1, name)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        quantize_static(Path(fp32), out, reader, quant_format=QuantFormat.QDQ,
                        calibrate_method=CalibrationMethod.MinMax)
    except Exception as exc:
        raise ModelError(f"static quantization failed: {str(exc).splitlines()[0][:300]}") from exc
    return _restamp(out, meta, {"baseline": "onnxruntime quantize_static", "calibration": {"method": "minmax"},
                                "activations": "QInt8", "weights": "QInt8", "per_channel": False,
                                "calibration_images": int(reader.data.shape[0])})


def _restamp(out: Path, meta: dict | None, quant: dict) -> Path:
    import onnx

    m = onnx.load(str(out))
    _mark_int8(m, meta, quant)
    return _save_model(m, out)


# =========================================================================== weight-only INT8
# ONNX Runtime session settings a weight-only model needs to run at float speed: with QDQ
# handling off, every DequantizeLinear of a constant weight is folded once at load time.
WEIGHT_ONLY_SESSION_CONFIG = {"session.disable_quant_qdq": "1"}


def weight_only_int8(fp32: str | Path, out: str | Path, min_size: int = 256) -> Path:
    """INT8 storage of Conv/MatMul weights (symmetric, per output channel), activations float.

    Each weight W becomes int8 W_q + float scale + DequantizeLinear; loaded with
    ``WEIGHT_ONLY_SESSION_CONFIG`` ONNX Runtime folds the DequantizeLinear once, so the model runs
    at FP32 speed from a file about 4x smaller, with no calibration and only weight rounding error.
    For CPUs where INT8 activations are not faster (measured: see benchmarks/README.md)."""
    from onnx import helper, numpy_helper

    m = _load_onnx(fp32)
    meta = _edgeseg_meta(m)
    users: dict[str, list] = {}
    for n in m.graph.node:
        for k, name in enumerate(n.input):
            users.setdefault(name, []).append((n.op_type, k))
    dq_nodes, count = [], 0
    for t in list(m.graph.initializer):
        a = numpy_helper.to_array(t)
        us = users.get(t.name, [])
        if a.ndim < 2 or a.size < min_size or not us or a.dtype != np.float32:
            continue
        if not all(op in ("Conv", "MatMul") and k == 1 for op, k in us):
            continue
        if len({op for op, _ in us}) != 1:
            continue
        axis = 0 if us[0][0] == "Conv" else a.ndim - 1  # Conv: output channels; MatMul B (K, N): columns
        red = tuple(i for i in range(a.ndim) if i != axis)
        scale = (np.maximum(np.abs(a).max(axis=red), 1e-12) / 127.0).astype(np.float32)
        shape = [1] * a.ndim
        shape[axis] = -1
        q = np.clip(np.round(a / scale.reshape(shape)), -127, 127).astype(np.int8)
        m.graph.initializer.remove(t)
        m.graph.initializer.extend([numpy_helper.from_array(q, t.name + "_int8"),
                                    numpy_helper.from_array(scale, t.name + "_scale"),
                                    numpy_helper.from_array(np.zeros(scale.shape, np.int8), t.name + "_zero_point")])
        dq_nodes.append(helper.make_node("DequantizeLinear", [t.name + "_int8", t.name + "_scale", t.name + "_zero_point"],
                                         [t.name], axis=axis, name=t.name + "_DequantizeLinear"))
        count += 1
    if count == 0:
        raise ModelError(f"{Path(fp32).name} has no Conv/MatMul weights to store in INT8")
    for n in reversed(dq_nodes):
        m.graph.node.insert(0, n)
    _mark_int8(m, meta, {"recipe": "cpu-weights", "weight_only": True, "weights": count,
                         "onnxruntime_session_config": WEIGHT_ONLY_SESSION_CONFIG})
    return _save_model(m, Path(out))
