"""``Segmenter``: open a bundle (or an edgeseg ONNX file), give it RGB images, get masks back.

Applies the bundle's own pre-processing, runs the graph, and maps the result back to each
image's original size. Safe to share across threads: it holds no per-call state.

When the bundle records an intensity policy (manifest ``intensity``, edgeseg.runtime.intensity),
every image given to ``predict``/``predict_batch``/``prepare``/``drift`` is the source pixels of
any type (CT in Hounsfield units, 16-bit, float; gray, RGB or RGBA), mapped by the policy first;
an image that does not fit it gives a RuntimeWarning (``intensity_check`` says why). Without a
policy images are 8-bit RGB (or gray), as always.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from edgeseg.runtime.bundle import Bundle, read_bundle
from edgeseg.runtime.errors import BundleError, InputError
from edgeseg.runtime.formats import detect, expected
from edgeseg.runtime.preprocess import Preprocess, postprocess, preprocess, resize_chw, softmax, validate_image
from edgeseg.runtime.temperature import temper_probs, temperature_of
from edgeseg.runtime.uncertainty import assess, profile_of

COLOR_ORDERS = ("RGB", "BGR")
ONNX_META_KEY = "edgeseg"  # exported ONNX files carry their manifest subset in metadata_props


class Segmenter:
    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None,
                 verify: bool = True, runtime: str | None = None) -> None:
        """``runtime``: onnxruntime, openvino, tensorrt (engines), or "auto" (the bundle's recorded
        ``runtime.preferred`` when installed here); default: the format's own (see runners.RUNTIMES)."""
        path = Path(path)
        self.bundle: Bundle | None = None
        fmt = detect(path)
        if fmt is not None and fmt.name == "bundle":
            self.bundle = read_bundle(path, verify=verify)
            model_file = self.bundle.model_file
            info = self.bundle.manifest
        elif fmt is not None and fmt.name == "engine":
            info = _sidecar(path)
            model_file = path
        elif fmt is not None and fmt.name == "onnx":
            model_file = path
            info = None
        elif path.is_dir():
            raise BundleError(f"{path} is not a bundle (no edgeseg.json)")
        else:
            raise BundleError(f"model not found or of unknown type: {path} (expected a {expected('runtime')})")
        from edgeseg.runtime.runners import choose_runtime, open_runner

        self.runtime = choose_runtime(runtime, fmt.name, info)
        cfg = self.bundle.manifest.session_config if self.bundle is not None else None
        self.runner = open_runner(self.runtime, model_file, providers=providers, threads=threads, session_config=cfg,
                                  model_bytes=self.bundle.model_bytes if self.bundle is not None else None)
        if info is None and self.runtime == "onnxruntime":  # a bare ONNX file may ask for session settings
            meta = json.loads(self.runner.metadata().get(ONNX_META_KEY, "{}") or "{}")
            cfg = (meta.get("quantization") or {}).get("onnxruntime_session_config")
            if cfg:
                self.runner = open_runner(self.runtime, model_file, providers=providers, threads=threads,
                                          session_config=cfg)
        if info is None:
            meta = self.runner.metadata().get(ONNX_META_KEY)
            if meta is None:
                raise BundleError(f"{path.name} carries no edgeseg metadata: export it with `edgeseg export` "
                                  "or open its bundle, so pre-processing is known rather than guessed")
            info = json.loads(meta)
        self.info = info
        self.preprocess_spec = Preprocess.from_dict(info["preprocess"])
        self.classes: list[str] = list(info["classes"])
        self.outputs: list[dict] = list(info["outputs"])
        self.path = path
        kinds = {o["kind"]: o["name"] for o in self.outputs}
        if "logits" not in kinds and "probs" not in kinds and "mask" not in kinds:
            raise BundleError(f"{path}: the model declares no usable output")
        self._kinds = kinds
        _check_graph(self.runner, self.outputs, self.preprocess_spec, path)  # at load, not at the first predict
        self.drift_guard = _drift_guard(info, path)  # [drift guard] None when no input_stats recorded
        self.intensity = _intensity(info, path)  # [intensity] None: uint8 RGB images only, as before
        self.temperature = temperature_of(info, path)  # [temperature] 1.0 when the bundle records none
        self.uncertainty_profile = profile_of(info, path)  # [uncertainty] None without a validation distribution
        self._warned_bgr = False

    @classmethod
    def from_runner(cls, runner, info: dict, path: str | Path = "<memory>") -> "Segmenter":
        """Wrap any runner (e.g. the toolkit's torch runner) with the same pre/post-processing."""
        self = cls.__new__(cls)
        self.bundle = None
        self.runner = runner
        self.runtime = None  # a runner given directly (e.g. the toolkit's torch runner), not from runners.RUNTIMES
        self.info = info
        self.preprocess_spec = Preprocess.from_dict(info["preprocess"])
        self.classes = list(info["classes"])
        self.outputs = list(info["outputs"])
        self.path = Path(path)
        self._kinds = {o["kind"]: o["name"] for o in self.outputs}
        self.drift_guard = _drift_guard(info, path)
        self.intensity = _intensity(info, path)
        self.temperature = temperature_of(info, path)
        self.uncertainty_profile = profile_of(info, path)
        self._warned_bgr = False
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def prepare(self, images: list[np.ndarray]) -> np.ndarray:
        """Images -> the model's NCHW batch; with an intensity policy the images are source pixels
        (any dtype), mapped by it first, as in :meth:`predict`."""
        if self.intensity is not None:
            images = [_image(im, i, len(images), self.intensity) for i, im in enumerate(images)]
        return np.stack([preprocess(im, self.preprocess_spec) for im in images])

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Model only: NCHW float32 in, raw graph outputs out."""
        return self.runner.infer(batch)

    def finish(self, outs: dict[str, np.ndarray], sizes: list[tuple[int, int]], probabilities: bool = False):
        """Graph outputs -> per-image masks (and probabilities) at the original sizes."""
        results = []
        for i, (h, w) in enumerate(sizes):
            t = self.temperature if probabilities else 1.0  # [temperature] masks always from the raw outputs
            if "logits" in self._kinds:
                z = outs[self._kinds["logits"]][i].astype(np.float32)
                r = postprocess(z, h, w, probabilities)
                results.append(r if t == 1.0 else (r[0], postprocess(z / np.float32(t), h, w, True)[1]))
            elif "probs" in self._kinds:
                p = resize_chw(outs[self._kinds["probs"]][i].astype(np.float32), h, w)
                p = p / np.maximum(p.sum(axis=0, keepdims=True), 1e-12)
                m = p.argmax(axis=0).astype(np.uint8)
                results.append((m, p if t == 1.0 else temper_probs(p, t)) if probabilities else m)
            else:
                if probabilities:
                    raise InputError("this model outputs masks only; probabilities are not available")
                m = outs[self._kinds["mask"]][i]
                results.append(_nearest(m, h, w))
        return results

    def predict(self, image: np.ndarray, probabilities: bool = False, color: str = "RGB", uncertainty: bool = False,
                tiled: bool = False):
        """One HxWx3 uint8 image -> uint8 mask (H, W) [, float32 probabilities (C, H, W)].

        ``color``: the channel order of ``image``: "RGB" (the default; PIL, imageio, tifffile) or
        "BGR" (what ``cv2.imread`` returns). When the bundle records input statistics and an
        "RGB" image looks like a BGR one, a RuntimeWarning says so (once per Segmenter).
        ``uncertainty``: return an :class:`edgeseg.runtime.uncertainty.Prediction` instead (mask,
        uncertainty map, summary, and the flag against the bundle's validation distribution).
        ``tiled``: predict by sliding windows instead (:meth:`predict_tiled`); images over 100 MP are
        refused whole, never silently downscaled."""
        if tiled:
            return self.predict_tiled(image, probabilities=probabilities, color=color)
        return self.predict_batch([image], probabilities, color, uncertainty)[0]

    def predict_tiled(self, image: np.ndarray, probabilities: bool = False, color: str = "RGB", **options):
        """One image of any size by overlapping windows at the model's input size, blended
        (:mod:`edgeseg.runtime.tiled`; ``options``: overlap, batch, blend, scale, skip_background)."""
        from edgeseg.runtime.tiled import TileOptions, predict_array

        image = np.asarray(image) if isinstance(image, np.ndarray) else image  # np.matrix etc.: the plain array
        if self.intensity is not None:  # [intensity] source pixels; windows mapped as the whole image is
            seg, image = self._for_windows(image, color)
            return predict_array(seg, image, TileOptions(**options), probabilities)
        image = self._rgb(validate_image(image, max_pixels=None), color)
        return predict_array(self, image, TileOptions(**options), probabilities)

    def predict_batch(self, images, probabilities: bool = False, color: str = "RGB", uncertainty: bool = False) -> list:
        if isinstance(images, np.ndarray):
            if images.dtype == object or images.ndim != 4:
                raise InputError("predict_batch needs a non-empty list of HxWx3 uint8 images or an NxHxWx3 uint8 array, got "
                                 f"an array of shape {images.shape} and dtype {images.dtype}")
            images = list(images)
        if not isinstance(images, (list, tuple)) or not len(images):
            raise InputError("predict_batch needs a non-empty list of HxWx3 uint8 images (or an NxHxWx3 array), got "
                             + (f"an empty {type(images).__name__}" if isinstance(images, (list, tuple))
                                else type(images).__name__))
        images = [self._rgb(_image(im, i, len(images), self.intensity), color) for i, im in enumerate(images)]
        batch = np.stack([preprocess(im, self.preprocess_spec) for im in images])  # mapped above, not again
        outs = self.infer(batch)
        if uncertainty:  # [uncertainty] probabilities are needed; off, nothing below runs
            res = self.finish(outs, [im.shape[:2] for im in images], True)
            return [assess(m, p, self.uncertainty_profile, keep_probabilities=probabilities) for m, p in res]
        return self.finish(outs, [im.shape[:2] for im in images], probabilities)

    def _rgb(self, image: np.ndarray, color: str) -> np.ndarray:
        if color not in COLOR_ORDERS:
            raise InputError(f"color must be one of {', '.join(COLOR_ORDERS)}, got {color!r}")
        if color == "BGR":
            return np.ascontiguousarray(image[:, :, ::-1])
        if self.drift_guard is not None and not self._warned_bgr:
            from edgeseg.runtime.drift import channels_look_swapped

            if channels_look_swapped(self.drift_guard.stats, image):
                self._warned_bgr = True
                warnings.warn("this image's colour channels look swapped against the bundle's calibration images: "
                              "if it comes from cv2.imread (BGR), pass color='BGR'", RuntimeWarning, stacklevel=4)
        return image

    # --- [drift guard] -------------------------------------------------------------------
    def drift(self, image: np.ndarray, color: str = "RGB") -> dict:
        """How far one HxWx3 uint8 RGB image lies from the bundle's calibration images:
        ``{"score", "drifted", "threshold", "details"}`` (see :mod:`edgeseg.runtime.drift`).
        A device app shows a warning instead of trusting the mask when ``drifted`` is true."""
        if self.drift_guard is None:
            raise BundleError(f"{self.path} records no input statistics (input_stats); re-export or "
                              "re-compress it with this edgeseg to get a drift guard")
        return self.drift_guard.check(self._rgb(_image(image, policy=self.intensity), color))
    # --- [/drift guard] ------------------------------------------------------------------

    # --- [intensity] --------------------------------------------------------------------
    def intensity_check(self, image: np.ndarray) -> dict | None:
        """How ``image`` (source pixels, any dtype) fits the bundle's intensity policy:
        ``{"flagged", "reason", "below", "above", ...}`` (see :func:`edgeseg.runtime.intensity.check`);
        None when the bundle records no policy."""
        if self.intensity is None:
            return None
        from edgeseg.runtime.intensity import check

        return check(_plain(image), self.intensity)

    def _for_windows(self, image: np.ndarray, color: str):
        """(a copy of this Segmenter whose policy maps each window as the whole image is mapped, the
        image): a percentile policy's bounds are fixed once; the whole image is checked once."""
        import copy

        from edgeseg.runtime.intensity import for_windows

        policy, rep = for_windows(self.intensity, image)
        if rep["flagged"]:
            warnings.warn(f"image does not fit the bundle's intensity policy: {rep['reason']}", RuntimeWarning,
                          stacklevel=4)
        if color not in COLOR_ORDERS:
            raise InputError(f"color must be one of {', '.join(COLOR_ORDERS)}, got {color!r}")
        if color == "BGR" and image.ndim == 3 and image.shape[2] in (3, 4):
            image = image[:, :, [2, 1, 0, 3][:image.shape[2]]]
        seg = copy.copy(self)
        seg.intensity = policy
        return seg, image[:, :, None] if image.ndim == 2 else image  # the tiler crops and pads H x W x C
    # --- [/intensity] --------------------------------------------------------------------

    def close(self) -> None:
        self.runner.close()


def _plain(image):
    return np.asarray(image) if isinstance(image, np.ndarray) and type(image) is not np.ndarray else image


def _image(image, i: int = 0, n: int = 1, policy=None) -> np.ndarray:
    """One image given to the API, checked (``validate_image``); an ndarray subclass (np.matrix, a
    masked array) is taken as the plain array it holds; in a batch the error names the image.
    With an intensity ``policy`` any-dtype source pixels are mapped to uint8 RGB first (an image
    that does not fit the policy gives a RuntimeWarning saying why)."""
    image = _plain(image)
    try:
        if policy is not None:
            image = _apply_intensity(image, policy)
        return validate_image(image)
    except InputError as exc:
        if n == 1:
            raise
        raise InputError(f"image {i} of {n}: {exc}") from None


def _check_graph(runner, outputs: list[dict], pp: Preprocess, path: Path) -> None:
    """The graph has what the manifest says: each declared output (of its kind's dtype and rank)
    and an input of the pre-processed image's size. Refused with one BundleError line."""
    shape = getattr(runner, "input_shape", None)
    if shape is not None and len(shape) == 4:
        h, w = shape[2], shape[3]
        if (isinstance(h, int) and h != pp.height) or (isinstance(w, int) and w != pp.width):
            raise BundleError(f"{path.name}: the graph's input is fixed at {h}x{w} but the manifest's pre-processing "
                              f"makes {pp.height}x{pp.width} images")
    names = list(getattr(runner, "output_names", []) or [])
    types = getattr(runner, "output_types", {}) or {}
    for o in outputs:
        name, kind = o.get("name"), o.get("kind")
        if names and name not in names:
            raise BundleError(f"{path.name}: the manifest names output '{name}' ({kind}) but the graph's outputs are "
                              f"{', '.join(names)}")
        if name not in types:
            continue
        dtype, rank = types[name]
        want_rank, want = (3, "an integer (N, H, W)") if kind == "mask" else (4, "a float (N, C, H, W)")
        ok_type = dtype.startswith(("int", "uint")) if kind == "mask" else dtype in ("float32", "float16")
        if not ok_type or (rank is not None and rank != want_rank):
            raise BundleError(f"{path.name}: output '{name}' (kind {kind}) is a {rank}-D {dtype} tensor; a {kind} "
                              f"output is {want} tensor, {want_rank}-D")


def _nearest(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    mh, mw = mask.shape
    rows = np.minimum(((np.arange(h) + 0.5) * mh / h).astype(int), mh - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * mw / w).astype(int), mw - 1)
    return mask[rows][:, cols].astype(np.uint8)


def _apply_intensity(image, policy) -> np.ndarray:
    """[intensity] Source pixels -> uint8 RGB under the bundle's policy; flagged images warn."""
    from edgeseg.runtime.intensity import apply, check

    rep = check(image, policy)
    if rep["flagged"]:
        warnings.warn(f"image does not fit the bundle's intensity policy: {rep['reason']}", RuntimeWarning,
                      stacklevel=5)
    return apply(image, policy)


def _intensity(info, path):
    """[intensity] The bundle's intensity policy, None when it records none."""
    from edgeseg.runtime.intensity import from_info

    try:
        return from_info(info)
    except InputError as exc:
        raise BundleError(f"{path}: {exc}") from None


def _drift_guard(info: dict, path):
    """[drift guard] The bundle's DriftGuard, None when it records no input statistics."""
    stats = info.get("input_stats") if hasattr(info, "get") else None
    if stats is None:
        return None
    from edgeseg.runtime.drift import DriftGuard

    try:
        return DriftGuard(stats)
    except InputError as exc:
        raise BundleError(f"{path}: {exc}") from None


def _sidecar(engine: Path) -> dict:
    from edgeseg.runtime.runners.tensorrt import read_sidecar, sidecar_path  # both torch- and tensorrt-free

    meta = read_sidecar(engine)
    if not meta:
        raise BundleError(f"TensorRT engine {engine.name} has no sidecar {sidecar_path(engine).name} "
                          "describing its pre-processing")
    return meta


__all__ = ["Segmenter", "softmax"]
