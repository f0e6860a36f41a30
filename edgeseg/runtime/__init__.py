"""edgeseg.runtime: what device apps embed. numpy + onnxruntime (or openvino, or tensorrt); never torch.

    from edgeseg.runtime import Segmenter
    seg = Segmenter("bundle_dir")           # verifies the bundle's hashes and schema
    mask = seg.predict(rgb_uint8_image)     # (H, W) uint8 label ids at the image's size

Nothing here imports torch, transformers or the toolkit half of edgeseg.
"""

from edgeseg.runtime.errors import BundleError, EdgesegError, InputError


def open(path, providers=None, threads=None, runtime=None):  # noqa: A001 - mirrors io.open's role
    """Open a bundle directory, an edgeseg ONNX file or a TensorRT engine as a Segmenter
    (``runtime``: onnxruntime, openvino or "auto"; see ``edgeseg.runtime.runners``)."""
    from edgeseg.runtime.segmenter import Segmenter

    return Segmenter(path, providers=providers, threads=threads, runtime=runtime)


def __getattr__(name):
    if name == "Segmenter":
        from edgeseg.runtime.segmenter import Segmenter

        return Segmenter
    raise AttributeError(name)


__all__ = ["open", "Segmenter", "EdgesegError", "InputError", "BundleError"]
