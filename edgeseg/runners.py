"""Open any model edgeseg knows (HF checkpoint dir, bundle, ONNX file, TensorRT engine) as a
``Segmenter``, so evaluate / predict / bench / export checks treat every backend the same way.
The torch runner lives here, in the toolkit half; the others live in ``edgeseg.runtime``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.errors import ModelError
from edgeseg.runtime.formats import detect, expected
from edgeseg.runtime.segmenter import Segmenter


class TorchRunner:
    """Runs a SegformerForSemanticSegmentation; NCHW float32 in, {"logits": ...} out."""

    def __init__(self, model, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.name = f"torch-{device.split(':')[0]}"

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            logits = self.model(pixel_values=x).logits
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            return {"logits": logits.float().cpu().numpy()}

    def close(self) -> None:
        self.model = None


def is_checkpoint(path: str | Path) -> bool:
    f = detect(path)
    return f is not None and f.name == "checkpoint"


def torch_segmenter(model, meta, device: str = "cpu", path: str | Path = "<memory>") -> Segmenter:
    info = {"preprocess": meta.preprocess.to_dict(), "classes": meta.classes,
            "colors": [list(c) for c in meta.colors], "outputs": [{"name": "logits", "kind": "logits"}]}
    if getattr(meta, "intensity", None):  # [intensity] the same policy the bundle's runtime applies
        info["intensity"] = meta.intensity
    return Segmenter.from_runner(TorchRunner(model, device), info, path)


def open_model(path: str | Path, providers: list[str] | None = None, threads: int | None = None,
               device: str = "cpu", runtime: str | None = None) -> Segmenter:
    """The one way the toolkit opens a model to run it. ``runtime`` (onnxruntime, openvino, auto;
    see ``edgeseg.runtime.runners.RUNTIMES``) applies to bundles and ONNX files; a checkpoint runs
    on torch and refuses any other runtime."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model not found: {path} (expected a {expected()})")
    fmt = detect(path)
    if fmt is None:
        raise ModelError(f"{path} is not a model edgeseg opens: expected a {expected()}")
    if fmt.runner == "torch":
        from edgeseg.model.checkpoint import load_checkpoint

        if runtime not in (None, "auto", "torch"):
            raise ModelError(f"{path} is a checkpoint, which runs on torch; --runtime {runtime} applies to bundles "
                             "and .onnx files (export the checkpoint first)")

        if threads:
            import torch

            torch.set_num_threads(threads)
        model, meta = load_checkpoint(path, device=device)
        return torch_segmenter(model, meta, device, path)
    return Segmenter(path, providers=providers, threads=threads, runtime=runtime)


def model_id(seg: Segmenter, path: str | Path) -> str:
    """A short identity of the model behind ``seg``: the bundle's manifest checksum, the
    checkpoint's weights hash, or the model file's sha256 (first 16 hex digits)."""
    from edgeseg.runtime.files import sha256_file

    if seg.bundle is not None:
        return seg.bundle.manifest.manifest_sha256[:16]
    if is_checkpoint(path):
        from edgeseg.model.checkpoint import checkpoint_sha256

        return checkpoint_sha256(path)[:16]
    return sha256_file(path)[:16]
