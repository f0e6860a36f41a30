"""TensorRT runner: run a serialized engine (``*.engine`` / ``*.plan``) built on this device.

Torch-free. ``tensorrt`` and the CUDA memory library are imported lazily, inside the
constructor, so importing this module never needs either. The runner mirrors
:class:`edgeseg.runtime.runners.onnxrt.OnnxRuntimeRunner`: ``infer`` takes an NCHW float32 array and
returns every engine output by name; ``metadata`` returns the engine's sidecar
(``ENGINE.engine.json``: pre-processing, classes, outputs and build facts); ``close`` frees
the GPU memory.

It uses the name-based tensor API of TensorRT 10 and later (``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``); the binding-index API of TensorRT 8 is gone.
Device memory comes from :mod:`edgeseg.runtime.runners.cuda` (``cuda-python`` when it is
importable, else ``pycuda``; torch never). A missing library is a ``MissingDependency``
(``edgeseg.runtime.errors``) naming what to install. :func:`read_sidecar` is the one sidecar
reader (the Segmenter uses it too); the builders write sidecars with
``edgeseg/export/tensorrt/sidecar.py``.

Engines are specific to the GPU model and the TensorRT version that built them: build them
on the target (``python3 -m edgeseg.export.tensorrt BUNDLE -o model.engine``). A sidecar that
records the engine's sha256 is checked at load, so a rebuilt engine next to a stale sidecar
is refused instead of being run with the wrong pre-processing.

Thread safety: one execution context, guarded by a lock; concurrent ``infer`` calls queue.
"""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path

import numpy as np

from edgeseg.runtime.errors import BundleError, EdgesegError, InputError, MissingDependency
from edgeseg.runtime.files import read_json
from edgeseg.runtime.runners.cuda import open_cuda

INSTALL_HINT = ("pip install edgeseg[tensorrt] (x86-64 / SBSA); on Jetson use the TensorRT that "
                "JetPack ships (apt install python3-libnvinfer; a virtualenv needs --system-site-packages)")

_LOGGER = None  # one TensorRT logger per process, created on first use


def import_tensorrt():
    """``import tensorrt`` or raise MissingDependency saying how to install it."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but libnvinfer is not
        detail = "" if isinstance(exc, ModuleNotFoundError) else f" ({str(exc).splitlines()[0][:200]})"
        raise MissingDependency(f"TensorRT is not installed or cannot be loaded{detail}: {INSTALL_HINT}") from None
    return tensorrt


def parse_version(text: str) -> tuple[int, int, int]:
    """'10.3.0.30' -> (10, 3, 0); '11.0' -> (11, 0, 0); '10.0.1b' -> (10, 0, 1). ValueError otherwise."""
    m = re.match(r"\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(text))
    if m is None:
        raise ValueError(f"not a version string: {text!r}")
    return tuple(int(g or 0) for g in m.groups())  # type: ignore[return-value]


def tensorrt_version() -> tuple[int, int, int] | None:
    """The installed TensorRT's (major, minor, patch), or None when it cannot be imported."""
    try:
        import tensorrt
    except (ImportError, OSError):
        return None
    try:
        return parse_version(getattr(tensorrt, "__version__", ""))
    except ValueError:
        return None


def trt_logger(trt):
    """The process-wide TensorRT logger (TensorRT wants one logger for all its objects)."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def sidecar_path(engine: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json`` (the metadata never goes inside the engine)."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def read_sidecar(engine: str | Path) -> dict:
    """The engine's sidecar as a dict; {} when there is none. BundleError when it is corrupt.
    The one sidecar reader: the Segmenter and the runner both use it (torch- and tensorrt-free)."""
    side = sidecar_path(engine)
    if not side.is_file():
        return {}
    return read_json(side, BundleError)


def check_engine_digest(data: bytes, meta: dict, path: Path) -> None:
    want = meta.get("engine_sha256")
    if want is None:
        return
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise BundleError(f"{path.name} does not match the sha256 recorded in {sidecar_path(path).name}: the engine "
                          "was rebuilt or changed without its sidecar; rebuild both with edgeseg")


def check_input_shape(shape: tuple[int, ...], engine_shape: tuple[int, ...],
                      profile: tuple[tuple[int, ...], tuple[int, ...]] | None) -> None:
    """Refuse an input the engine cannot take. A batch (dimension 0) above the profile's max, or a
    multiple of a fixed batch, is allowed: ``infer`` splits it. Everything else must match the
    engine's fixed dimensions and lie inside [min, max] of its profile."""
    if len(shape) != len(engine_shape):
        raise InputError(f"engine input has {len(engine_shape)} dimensions {tuple(engine_shape)}, got shape {shape}")
    for i, (want, got) in enumerate(zip(engine_shape, shape)):
        if i == 0 and want > 0:
            if got % want:
                raise InputError(f"engine batch is fixed at {want}; got {got} images, not a multiple of {want}")
            continue
        if want >= 0 and want != got:
            raise InputError(f"engine input dimension {i} is fixed at {want}, got {got} (input shape {shape})")
    if profile is None:
        return
    lo, hi = profile
    for i, got in enumerate(shape):
        if got < lo[i] or (got > hi[i] and i != 0):
            raise InputError(f"input shape {shape} is outside the engine's optimisation profile "
                             f"min {tuple(lo)} .. max {tuple(hi)}; rebuild the engine for this size")


# --------------------------------------------------------------------------------------------


class TensorRTRunner:
    """Runs a TensorRT engine. ``infer`` takes NCHW float32 and returns every output by name."""

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, device: int = 0) -> None:
        path = Path(engine_path)
        if not path.is_file():
            raise BundleError(f"TensorRT engine not found: {path}")
        trt = import_tensorrt()
        self._trt = trt
        self.path = path
        self.device = int(device)
        self._meta = read_sidecar(path)
        data = path.read_bytes()
        check_engine_digest(data, self._meta, path)
        self._lock = threading.Lock()
        self._buffers: dict[str, tuple[int, int]] = {}  # tensor name -> (device pointer, bytes)
        self._context = None
        self._engine = None
        self._cuda = open_cuda(self.device)
        try:
            self._cuda.activate()
            try:
                self._runtime = trt.Runtime(trt_logger(trt))
                engine = self._runtime.deserialize_cuda_engine(data)
                if engine is None:
                    raise BundleError(self._deserialize_failure())
                context = engine.create_execution_context()
                if context is None:
                    raise EdgesegError(f"TensorRT could not create an execution context for {path.name} "
                                       "(out of GPU memory?)")
            finally:
                self._cuda.deactivate()
            self._engine, self._context = engine, context
            self._inspect_io()
        except BaseException:
            self._context = self._engine = None
            self._cuda.close()
            raise

    def _deserialize_failure(self) -> str:
        here = ".".join(map(str, tensorrt_version() or ())) or "unknown"
        built = self._meta.get("tensorrt", {}).get("version") if isinstance(self._meta.get("tensorrt"), dict) else None
        gpu = self._meta.get("gpu", {}).get("name") if isinstance(self._meta.get("gpu"), dict) else None
        origin = f" It was built with TensorRT {built}" + (f" on {gpu}" if gpu else "") + "." if built else ""
        return (f"TensorRT {here} cannot load {self.path.name}.{origin} Engines only run on the GPU model and "
                "TensorRT version that built them: rebuild it on this device from its bundle "
                "(python3 -m edgeseg.export.tensorrt BUNDLE -o ENGINE)")

    def _inspect_io(self) -> None:
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1:
            raise BundleError(f"{self.path.name} has {len(inputs)} inputs {inputs}; edgeseg engines take one "
                              "NCHW image batch")
        if not outputs:
            raise BundleError(f"{self.path.name} has no outputs")
        self.input_name = inputs[0]
        self.input_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.input_name)))
        self.input_shape = tuple(int(d) for d in engine.get_tensor_shape(self.input_name))
        self.output_names = outputs
        self._out_dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in outputs}
        self.profile = None
        if any(d < 0 for d in self.input_shape):
            lo, _opt, hi = engine.get_tensor_profile_shape(self.input_name, 0)
            self.profile = (tuple(int(d) for d in lo), tuple(int(d) for d in hi))

    @property
    def max_batch(self) -> int | None:
        if self.profile is not None:
            return self.profile[1][0]
        return self.input_shape[0] if self.input_shape and self.input_shape[0] >= 0 else None

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._context is None:
            raise EdgesegError("this TensorRT runner has been closed")
        if not isinstance(batch, np.ndarray) or batch.ndim != 4:
            raise InputError(f"expected an NCHW array, got {getattr(batch, 'shape', type(batch).__name__)}")
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        check_input_shape(x.shape, self.input_shape, self.profile)
        step = self.max_batch
        if step is None or x.shape[0] <= step:
            return self._run(x)
        # the profile caps the batch: run it in slices and join the outputs along the batch axis
        parts = [self._run(np.ascontiguousarray(x[i:i + step])) for i in range(0, x.shape[0], step)]
        return {n: np.concatenate([p[n] for p in parts], axis=0) for n in self.output_names}

    def _buffer(self, name: str, nbytes: int) -> int:
        nbytes = max(int(nbytes), 1)
        have = self._buffers.get(name)
        if have is not None and have[1] >= nbytes:
            return have[0]
        if have is not None:
            self._cuda.free(have[0])
            del self._buffers[name]
        ptr = self._cuda.malloc(nbytes)
        self._buffers[name] = (ptr, nbytes)
        return ptr

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            ctx = self._context
            if ctx is None:
                raise EdgesegError("this TensorRT runner has been closed")
            self._cuda.activate()
            try:
                if any(d < 0 for d in self.input_shape) and not ctx.set_input_shape(self.input_name, x.shape):
                    raise InputError(f"TensorRT refused input shape {x.shape} for {self.input_name}")
                in_ptr = self._buffer(self.input_name, x.nbytes)
                ctx.set_tensor_address(self.input_name, in_ptr)
                outs: dict[str, np.ndarray] = {}
                for n in self.output_names:
                    shape = tuple(int(d) for d in ctx.get_tensor_shape(n))
                    if any(d < 0 for d in shape):
                        raise EdgesegError(f"output {n} has a data-dependent shape {shape}; edgeseg engines "
                                           "need output shapes known from the input shape")
                    arr = np.empty(shape, dtype=self._out_dtypes[n])
                    ctx.set_tensor_address(n, self._buffer(n, arr.nbytes))
                    outs[n] = arr
                self._cuda.htod(in_ptr, x)
                if not ctx.execute_async_v3(self._cuda.stream_handle):
                    raise EdgesegError(f"TensorRT execution of {self.path.name} failed (see the TensorRT log)")
                for n, arr in outs.items():
                    self._cuda.dtoh(arr, self._buffers[n][0])
                self._cuda.sync()
            finally:
                self._cuda.deactivate()
        return outs

    def metadata(self) -> dict:
        """The engine's sidecar (pre-processing, classes, outputs, build facts); {} if none."""
        return dict(self._meta)

    def close(self) -> None:
        with self._lock:
            if self._context is None and not self._buffers:
                return
            try:
                self._cuda.activate()
                try:
                    for ptr, _ in self._buffers.values():
                        self._cuda.free(ptr)
                finally:
                    self._cuda.deactivate()
            finally:
                self._buffers.clear()
                self._context = None
                self._engine = None
                self._runtime = None
                self._cuda.close()

    def __enter__(self) -> "TensorRTRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["TensorRTRunner", "tensorrt_version", "parse_version", "sidecar_path", "read_sidecar",
           "import_tensorrt", "check_input_shape", "check_engine_digest"]
