"""``edgeseg export --format triton``: a Triton Inference Server model repository from a bundle
(ONNX Runtime backend, CPU) or from a TensorRT engine built from one (``tensorrt_plan``, GPU).

Layout written (atomically)::

    OUT/<name>/config.pbtxt      max_batch_size, dynamic batching, instance group, inputs/outputs
    OUT/<name>/1/model.onnx      the bundle's verified model bytes (or 1/model.plan: the engine)
    OUT/<name>/preprocessing.json  what the client must do before and after (from the manifest)
    OUT/<name>/README.md         the same in words, and what has (not) been run

Inputs and outputs of the ONNX model come from the graph itself, run once at the bundle's input
size so every dimension is concrete. An engine's config leaves them to Triton's auto-complete
(TensorRT plans describe their own bindings). ``config.pbtxt`` is parsed back with the
model-config protobuf that ships with ``tritonclient`` (extra ``triton``) before anything is
kept; Triton itself has not run here.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from edgeseg.errors import ConfigError, DependencyError
from edgeseg.runtime.bundle import is_bundle, read_bundle
from edgeseg.runtime.files import atomic_dir, atomic_write_json, atomic_write_text, read_json
from edgeseg.runtime.formats import ENGINE_SUFFIXES

ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(int64)": "TYPE_INT64",
             "tensor(int32)": "TYPE_INT32", "tensor(uint8)": "TYPE_UINT8", "tensor(int8)": "TYPE_INT8",
             "tensor(bool)": "TYPE_BOOL"}
DEFAULT_MAX_BATCH = 8
QUEUE_DELAY_US = 2000


def _name(path: Path, name: str | None) -> str:
    name = name or re.sub(r"[^A-Za-z0-9_-]", "_", path.stem if path.is_file() else path.name) or "edgeseg"
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise ConfigError(f"Triton model name {name!r} must be 1-64 letters, digits, '_' or '-'")
    return name


def _tensor(t: dict) -> str:
    dims = ", ".join(str(int(d)) for d in t["dims"])
    return f'  {{\n    name: "{t["name"]}"\n    data_type: {t["data_type"]}\n    dims: [ {dims} ]\n  }}'


def config_text(name: str, platform: str, max_batch: int, inputs: list[dict], outputs: list[dict], kind: str) -> str:
    """config.pbtxt: the protobuf text format of inference.ModelConfig."""
    preferred = sorted({b for b in (max_batch // 2, max_batch) if b >= 1})
    parts = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch}"]
    if inputs:
        parts.append("input [\n" + ",\n".join(map(_tensor, inputs)) + "\n]")
    if outputs:
        parts.append("output [\n" + ",\n".join(map(_tensor, outputs)) + "\n]")
    parts.append("dynamic_batching {\n  preferred_batch_size: [ " + ", ".join(map(str, preferred))
                 + f" ]\n  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}")
    parts.append(f"instance_group [\n  {{\n    count: 1\n    kind: {kind}\n  }}\n]")
    return "\n".join(parts) + "\n"


def validate_config(text: str):
    """Parse config.pbtxt into tritonclient's ModelConfig; one ConfigError line if it does not parse."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise DependencyError('checking a Triton config needs tritonclient: pip install "edgeseg[triton]"') from None
    cfg = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as exc:
        raise ConfigError(f"the Triton config written does not parse as ModelConfig: {exc}") from None
    return cfg


def _onnx_io(bundle) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs of the bundle's graph, without the batch dimension, every dimension
    concrete: the graph run once on a zero batch at the bundle's input size."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    for key, value in bundle.manifest.session_config.items():  # e.g. weight-only INT8 needs its entries
        opts.add_session_config_entry(key, str(value))
    sess = ort.InferenceSession(bundle.model_bytes, opts, providers=["CPUExecutionProvider"])
    pp = bundle.preprocess
    (inp,) = sess.get_inputs()
    if inp.type not in ORT_TYPES:
        raise ConfigError(f"input {inp.name} is {inp.type}, which has no Triton type here")
    outs = sess.run(None, {inp.name: np.zeros((1, 3, pp.height, pp.width), np.float32)})
    inputs = [{"name": inp.name, "data_type": ORT_TYPES[inp.type], "dims": [3, pp.height, pp.width]}]
    outputs = []
    for meta, value in zip(sess.get_outputs(), outs):
        if meta.type not in ORT_TYPES:
            raise ConfigError(f"output {meta.name} is {meta.type}, which has no Triton type here")
        outputs.append({"name": meta.name, "data_type": ORT_TYPES[meta.type], "dims": list(value.shape[1:])})
    return inputs, outputs


def preprocessing(info: dict, inputs: list[dict], outputs: list[dict]) -> dict:
    """What a Triton client does around the model, from the manifest (or sidecar)."""
    pp = info["preprocess"]
    kinds = {o["name"]: o["kind"] for o in info["outputs"]}
    return {
        "input": inputs[0]["name"] if inputs else (info.get("profile") or {}).get("input"),
        "steps": [
            "decode the image to RGB uint8, H x W x 3 (RGB order, not OpenCV's BGR)",
            (f"resize the whole image to {pp['height']} x {pp['width']} (policy '{pp['resize']}'): area averaging "
             "when shrinking, bilinear with half-pixel centres when enlarging "
             "(edgeseg.runtime.preprocess.preprocess does exactly this)"),
            f"x = (pixel * {pp['scale']} - mean) / std per channel, mean {pp['mean']}, std {pp['std']}",
            "transpose to C x H x W float32 and stack images along a leading batch dimension",
        ],
        "preprocess": pp,
        "outputs": {name: {"kind": kind, "after": {
            "logits": "resize (C, h, w) bilinearly to the original image size, argmax over C = label ids",
            "probs": "resize (C, h, w) bilinearly to the original image size, argmax over C = label ids",
            "mask": "label ids at the model's size: resize to the original size by nearest neighbour",
        }.get(kind, "")} for name, kind in kinds.items()},
        "classes": list(info["classes"]),
        "declared_outputs": outputs,
    }


def _readme(name: str, platform: str, prep: dict, source: str) -> str:
    steps = "\n".join(f"{i}. {s}" for i, s in enumerate(prep["steps"], 1))
    after = "\n".join(f"- `{n}` ({o['kind']}): {o['after']}" for n, o in prep["outputs"].items())
    return (f"# Triton model `{name}` ({platform})\n\nWritten by `edgeseg export --format triton` from `{source}`.\n\n"
            f"## Before the model (the client's job)\n\n{steps}\n\nInput tensor: `{prep['input']}`.\n\n"
            f"## After the model\n\n{after}\n\nClasses (label id order): {', '.join(prep['classes'])}.\n\n"
            "## What has been run\n\n`config.pbtxt` was parsed with the ModelConfig protobuf shipped with "
            "`tritonclient`, and the ONNX model was run once by ONNX Runtime to read its output shapes. "
            "Triton Inference Server itself has **not** run this repository where edgeseg is developed.\n")


def export_triton(model: str | Path, out: str | Path, name: str | None = None,
                  max_batch: int = DEFAULT_MAX_BATCH, marker=None) -> Path:
    """Write a Triton model repository at ``out`` from a bundle (ONNX Runtime, CPU) or a TensorRT
    engine with its sidecar (tensorrt_plan, GPU). The caller has applied the output policy."""
    model, out = Path(model), Path(out)
    name = _name(model, name)
    if is_bundle(model):
        bundle = read_bundle(model)  # verified: the bytes written are the bytes hashed
        info = bundle.manifest.to_dict()
        inputs, outputs = _onnx_io(bundle)
        platform, kind, fname = "onnxruntime_onnx", "KIND_CPU", "model.onnx"
        data = bundle.model_bytes
    elif model.is_file() and model.suffix.lower() in ENGINE_SUFFIXES:
        from edgeseg.runtime.runners.tensorrt import check_engine_digest, sidecar_path

        side = sidecar_path(model)
        if not side.is_file():
            raise ConfigError(f"{model.name} has no sidecar {side.name}: build engines with `edgeseg export --format "
                              "tensorrt` so their pre-processing is known")
        info = read_json(side, error=ConfigError)
        data = model.read_bytes()
        check_engine_digest(data, info, model)
        prof_max = (info.get("profile") or {}).get("max") or [max_batch]
        max_batch = min(max_batch, int(prof_max[0]))
        inputs, outputs = [], []  # the plan describes its own bindings: Triton auto-completes them
        platform, kind, fname = "tensorrt_plan", "KIND_GPU", "model.plan"
    else:
        raise ConfigError(f"{model} is neither a bundle folder nor a TensorRT engine (.engine/.plan with its sidecar)")
    text = config_text(name, platform, max_batch, inputs, outputs, kind)
    cfg = validate_config(text)
    if cfg.name != name or cfg.max_batch_size != max_batch or len(cfg.input) != len(inputs):
        raise ConfigError("the Triton config written does not read back as written")
    prep = preprocessing(info, inputs, outputs)
    with atomic_dir(out) as tmp:
        d = tmp / name
        (d / "1").mkdir(parents=True)
        (d / "1" / fname).write_bytes(data)
        atomic_write_text(d / "config.pbtxt", text)
        atomic_write_json(d / "preprocessing.json", prep)
        atomic_write_text(d / "README.md", _readme(name, platform, prep, model.name))
        if is_bundle(model):
            shutil.copyfile(model / "edgeseg.json", d / "edgeseg.json")  # provenance travels with the model
        if marker is not None:
            marker(tmp)
    return out


__all__ = ["config_text", "export_triton", "preprocessing", "validate_config"]
