"""CUDA device memory and a stream for the TensorRT runner: cuda-python first, pycuda second, torch never.

Both backends expose the same small interface (``malloc``, ``free``, ``htod``, ``dtoh``, ``sync``,
``activate``/``deactivate`` around every use, ``stream_handle``, ``close``); :func:`open_cuda`
picks the first that imports. ``cuda-python`` is used through its runtime API
(``cuda.bindings.runtime``, or ``cuda.cudart`` in older releases); ``pycuda`` on the device's
primary context, the one the CUDA runtime (and so TensorRT) uses. :func:`device_info` names
the GPU for an engine's sidecar. Both libraries are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.runtime.errors import EdgesegError, MissingDependency

CUDA_HINT = ("pip install cuda-python (pick the major version of your CUDA, e.g. 'cuda-python>=12,<13' "
             "on JetPack 6) or pip install pycuda")


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6 layout
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


class _CudaPython:
    """Device memory and a stream through cuda-python's runtime API (every call returns a tuple
    whose first item is the cudaError_t)."""

    name = "cuda-python"

    def __init__(self, rt, device: int) -> None:
        self.rt = rt
        self.device = device
        n = self._call(rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if not 0 <= device < n:
            raise EdgesegError(f"CUDA device {device} does not exist: this machine has {n} CUDA device(s)")
        self._call(rt.cudaSetDevice(device), "cudaSetDevice")
        self._stream = self._call(rt.cudaStreamCreate(), "cudaStreamCreate")

    def _call(self, result, what: str):
        if not isinstance(result, tuple):
            result = (result,)
        err, rest = result[0], result[1:]
        if err != self.rt.cudaError_t.cudaSuccess:
            raise EdgesegError(f"CUDA call {what} failed: {err!r}")
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else rest

    @property
    def stream_handle(self) -> int:
        return int(self._stream)

    def activate(self) -> None:
        # the current device is per host thread in the runtime API
        self._call(self.rt.cudaSetDevice(self.device), "cudaSetDevice")

    def deactivate(self) -> None:
        pass

    def malloc(self, nbytes: int) -> int:
        return int(self._call(self.rt.cudaMalloc(int(nbytes)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self._call(self.rt.cudaFree(ptr), "cudaFree")

    def htod(self, ptr: int, arr: np.ndarray) -> None:
        self._call(self.rt.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes,
                                           self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream),
                   "cudaMemcpyAsync(host to device)")

    def dtoh(self, arr: np.ndarray, ptr: int) -> None:
        self._call(self.rt.cudaMemcpyAsync(arr.ctypes.data, ptr, arr.nbytes,
                                           self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream),
                   "cudaMemcpyAsync(device to host)")

    def sync(self) -> None:
        self._call(self.rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def close(self) -> None:
        if self._stream is not None:
            self.rt.cudaStreamDestroy(self._stream)
            self._stream = None


class _PyCuda:
    """Device memory and a stream through pycuda, on the device's primary context (the one the
    CUDA runtime, and so TensorRT, uses); the context is pushed around every use."""

    name = "pycuda"

    def __init__(self, drv, device: int) -> None:
        self.drv = drv
        self.device = device
        drv.init()
        n = drv.Device.count()
        if not 0 <= device < n:
            raise EdgesegError(f"CUDA device {device} does not exist: this machine has {n} CUDA device(s)")
        self._ctx = drv.Device(device).retain_primary_context()
        self._allocs: dict[int, object] = {}
        self._ctx.push()
        try:
            self._stream = drv.Stream()
        finally:
            drv.Context.pop()

    @property
    def stream_handle(self) -> int:
        return int(self._stream.handle)

    def activate(self) -> None:
        self._ctx.push()

    def deactivate(self) -> None:
        self.drv.Context.pop()

    def malloc(self, nbytes: int) -> int:
        a = self.drv.mem_alloc(int(nbytes))
        self._allocs[int(a)] = a
        return int(a)

    def free(self, ptr: int) -> None:
        a = self._allocs.pop(ptr, None)
        if a is not None:
            a.free()

    def htod(self, ptr: int, arr: np.ndarray) -> None:
        self.drv.memcpy_htod_async(ptr, arr, self._stream)

    def dtoh(self, arr: np.ndarray, ptr: int) -> None:
        self.drv.memcpy_dtoh_async(arr, ptr, self._stream)

    def sync(self) -> None:
        self._stream.synchronize()

    def close(self) -> None:
        if self._ctx is None:
            return
        self._ctx.push()
        try:
            for ptr in list(self._allocs):
                self.free(ptr)
            self._stream = None
        finally:
            self.drv.Context.pop()
        self._ctx.detach()
        self._ctx = None


def open_cuda(device: int = 0):
    """A device-memory backend for ``device``: cuda-python if importable, else pycuda."""
    try:
        rt = _import_cudart()
    except ImportError:
        rt = None
    if rt is not None:
        return _CudaPython(rt, device)
    try:
        import pycuda.driver as drv
    except ImportError:
        drv = None
    if drv is not None:
        return _PyCuda(drv, device)
    raise MissingDependency("TensorRT inference needs a library for CUDA device memory and found neither "
                            f"cuda-python nor pycuda: {CUDA_HINT}")


def device_info(device: int = 0) -> dict:
    """{'name': ..., 'compute_capability': 'X.Y'} of a CUDA device, as far as it can be learnt
    without torch; values are None when unknown. On a Jetson without either CUDA library the
    board model from the device tree is used as the name."""
    info: dict = {"name": None, "compute_capability": None}
    try:
        rt = _import_cudart()
        err, props = rt.cudaGetDeviceProperties(device)
        if err == rt.cudaError_t.cudaSuccess:
            name = props.name
            if isinstance(name, bytes):
                name = name.split(b"\0", 1)[0].decode("utf-8", "replace")
            info["name"] = str(name).strip() or None
            info["compute_capability"] = f"{props.major}.{props.minor}"
            return info
    except Exception:  # noqa: BLE001 - best effort only
        pass
    try:
        import pycuda.driver as drv

        drv.init()
        d = drv.Device(device)
        info["name"] = d.name()
        info["compute_capability"] = "{}.{}".format(*d.compute_capability())
        return info
    except Exception:  # noqa: BLE001
        pass
    model = Path("/proc/device-tree/model")
    try:
        if model.is_file():
            info["name"] = model.read_bytes().split(b"\0", 1)[0].decode("utf-8", "replace").strip() or None
    except OSError:
        pass
    return info


__all__ = ["open_cuda", "device_info", "CUDA_HINT"]
