"""Static Q/DQ INT8 quantization with calibration (the ``cpu`` and ``tensorrt`` targets).

- :class:`CalibrationReader` feeds calibration images to ONNX Runtime's calibrators, one
  distinct batch per call;
- :data:`CALIBRATION_METHODS` holds the range estimators (``minmax``, ``entropy``, ``percentile``);
- :class:`Int8Quantizer` calibrates once and then writes any number of Q/DQ models quickly,
  each with a chosen set of nodes left in float (the building block of the per-block float
  fallback that ``compress``'s accuracy guard searches over; see :func:`group_of`).

What each target's model looks like is in :mod:`edgeseg.quantize.targets`. Only compute-heavy
ops (Conv, MatMul, Gemm) are quantized; LayerNormalization, Softmax, GELU (Erf), Add, Resize, ...
stay in float: those are the ops where INT8 buys little speed but costs most accuracy in
transformers. Calibration images come from :func:`edgeseg.data.calibration.load_calibration`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod

from edgeseg.errors import ConfigError, DataError, ModelError
from edgeseg.export.qdq_rules import tensorrt_qdq_problems as check_tensorrt_qdq  # noqa: F401 - old import path
from edgeseg.quantize.graph import (edgeseg_meta, float_graph_outputs, group_of, image_input, load_onnx, mark_int8,
                                    save_model)
from edgeseg.quantize.targets import QuantRecipe, get_target, pick

log = logging.getLogger(__name__)

__all__ = ["CalibrationReader", "Calibration", "CALIBRATION_METHODS", "get_calibration", "Int8Quantizer"]


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


def get_calibration(name: str | Calibration) -> Calibration:
    """The range estimator called ``name``; ConfigError listing the known ones otherwise."""
    return name if isinstance(name, Calibration) else pick(CALIBRATION_METHODS, name, "calibration method")


class Int8Quantizer:
    """Calibrate an FP32 ONNX model once; write Q/DQ INT8 models from it many times.

    ``calib`` is the (N, 3, h, w) float32 output of :func:`load_calibration`; pass its info dict
    as ``calib_info`` to record the calibration set in the quantized models' metadata.
    The model is first prepared with ``onnxruntime.quantization.quant_pre_process`` (shape
    inference + basic graph optimisation; node names are kept), calibrated on the op types of the
    recipe, and the tensor ranges are kept; :meth:`quantize` then only inserts Q/DQ nodes.
    """

    def __init__(self, fp32_onnx: str | Path, calib: np.ndarray, recipe: str | QuantRecipe = "cpu", method: str = "percentile",
                 batch_size: int = 1, *, calib_info: dict | None = None, preprocess_model: bool = True,
                 images_per_pass: int = 8) -> None:
        from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

        self.recipe = get_target(recipe)
        if self.recipe.weight_only:
            raise ConfigError(f"target {self.recipe.name!r} is weight-only and needs no calibration: use "
                              "weight_only_int8() or quantize()")
        self.calibration = get_calibration(method)
        self.source = Path(fp32_onnx)
        self.calib_info = dict(calib_info) if calib_info else None
        src = load_onnx(self.source)
        self.source_meta = edgeseg_meta(src)
        self.input_name, dims = image_input(src)
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
            float_graph_outputs(qmodel)
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
        mark_int8(qmodel, self.source_meta, quant)
        return save_model(qmodel, Path(out))
