"""The one table of model formats: what a path is, and which runner opens it.

Used by the Segmenter (runtime), the toolkit's ``open_model`` (which adds the torch runner for
checkpoints), bench's model facts and the CLI's messages. A path is recognised by what it is
(folder with a given file, or file suffix), never guessed from its contents.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelFormat:
    name: str  # checkpoint | bundle | onnx | engine
    runner: str  # the runner family that opens it
    folder_with: str | None = None  # a folder holding this file
    suffixes: tuple[str, ...] = ()  # or a file with one of these suffixes
    half: str = "runtime"  # which half of edgeseg can open it: runtime, or toolkit only
    what: str = ""

    def matches(self, path: Path) -> bool:
        if self.folder_with is not None:
            return path.is_dir() and (path / self.folder_with).is_file()
        return path.is_file() and path.suffix.lower() in self.suffixes


# order matters: a bundle folder is checked before a checkpoint folder
FORMATS: dict[str, ModelFormat] = {f.name: f for f in (
    ModelFormat("bundle", "onnxruntime", folder_with="edgeseg.json", what="bundle folder (model.onnx + edgeseg.json)"),
    ModelFormat("checkpoint", "torch", folder_with="config.json", half="toolkit",
                what="Hugging Face checkpoint folder (config.json + model.safetensors)"),
    ModelFormat("onnx", "onnxruntime", suffixes=(".onnx",), what=".onnx file exported by edgeseg"),
    ModelFormat("engine", "tensorrt", suffixes=(".engine", ".plan"), what="TensorRT .engine/.plan with its sidecar"),
)}
ENGINE_SUFFIXES = FORMATS["engine"].suffixes


def detect(path: str | Path) -> ModelFormat | None:
    """The format of an existing path, or None."""
    p = Path(path)
    return next((f for f in FORMATS.values() if f.matches(p)), None)


def expected(half: str = "toolkit") -> str:
    """A one-line list of what a model path may be, for error messages."""
    return ", ".join(f.what for f in FORMATS.values() if half == "toolkit" or f.half == "runtime")
