"""The typed manifest and bundle integrity: a bundle is exactly the files its manifest lists,
each verified, none a link, the manifest sealed by its checksum; the runtime loads the bytes it
verified."""

import json
import os
import shutil

import numpy as np
import onnx
import pytest

from edgeseg.runtime import Segmenter
from edgeseg.runtime.bundle import MANIFEST, Manifest, manifest_digest, read_bundle, write_bundle
from edgeseg.runtime.errors import BundleError
from edgeseg.runtime.files import sha256_file


@pytest.fixture()
def bundle(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle, tmp_path / "b")


def _reseal(b, edit):
    m = json.loads((b / MANIFEST).read_text())
    edit(m)
    m["files"] = {n: sha256_file(b / n) for n in m["files"] if (b / n).is_file()} or m["files"]
    m["manifest_sha256"] = manifest_digest(m)
    (b / MANIFEST).write_text(json.dumps(m))


def test_manifest_round_trip_and_derive(bundle, tmp_path):
    b = read_bundle(bundle)
    m = b.manifest
    assert isinstance(m, Manifest) and m.precision == "fp32" and len(m.classes) == 2
    assert m.preprocess.height == b.preprocess.height and m.outputs[0].kind in ("logits", "mask", "probs")
    d = m.derive(precision="int8", quantization={"target": "cpu"}, parity=None)
    assert d.precision == "int8" and d.get("quantization") == {"target": "cpu"} and "parity" not in d
    assert d.files == {} and d.manifest_sha256 is None  # writer-only keys never carried over
    assert m.precision == "fp32"  # derive never changes the source
    out = write_bundle(tmp_path / "q", {"model.onnx": b.model_file}, d)
    again = read_bundle(out).manifest
    assert again.precision == "int8" and again.get("quantization") == {"target": "cpu"}
    assert again.files["model.onnx"] == sha256_file(b.model_file)
    with pytest.raises(BundleError, match="set by the bundle writer"):
        m.derive(files={})


def test_derive_validates_like_the_reader(bundle):
    m = read_bundle(bundle).manifest
    with pytest.raises(BundleError, match="precision"):
        m.derive(precision="int4")
    with pytest.raises(BundleError, match="classes"):
        m.derive(classes=["only-one"])
    with pytest.raises(BundleError, match="metrics"):
        m.derive(metrics=[1, 2])


def test_foreign_file_in_bundle_refused(bundle):
    (bundle / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(BundleError, match="does not list: weights.bin"):
        read_bundle(bundle)


def test_missing_manifest_checksum_refused(bundle):
    m = json.loads((bundle / MANIFEST).read_text())
    del m["manifest_sha256"]
    (bundle / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="no manifest checksum"):
        Segmenter(bundle)


def test_linked_model_refused(bundle, tmp_path):
    real = tmp_path / "elsewhere.onnx"
    shutil.move(bundle / "model.onnx", real)
    os.symlink(real, bundle / "model.onnx")
    with pytest.raises(BundleError, match="is a link"):
        read_bundle(bundle)


def test_linked_manifest_refused(bundle, tmp_path):
    real = tmp_path / "m.json"
    shutil.move(bundle / MANIFEST, real)
    os.symlink(real, bundle / MANIFEST)
    with pytest.raises(BundleError, match="is a link"):
        read_bundle(bundle)


def test_external_data_model_refused_even_when_listed(bundle, tmp_path):
    """A model whose weights live in a side file: listing the side file does not make it load."""
    model = onnx.load(str(bundle / "model.onnx"))
    onnx.save_model(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.data", size_threshold=0)
    shutil.copy(tmp_path / "ext.onnx", bundle / "model.onnx")
    shutil.copy(tmp_path / "weights.data", bundle / "weights.data")
    _reseal(bundle, lambda m: m["files"].update({"weights.data": ""}))
    with pytest.raises(BundleError, match="external data"):
        Segmenter(bundle)


@pytest.mark.parametrize("version,hint", [(0, "re-export"), (None, "re-export"), (99, "upgrade edgeseg"),
                                          ("1", "re-export")])
def test_schema_versions(bundle, version, hint):
    _reseal(bundle, lambda m: m.update(schema_version=version))
    with pytest.raises(BundleError, match=hint):
        read_bundle(bundle)


def test_runtime_loads_the_verified_bytes(bundle, monkeypatch):
    """The model file is read once: bytes swapped in between verification and loading never run."""
    import edgeseg.runtime.segmenter as S

    real = S.read_bundle

    def read_then_swap(path, verify=True):
        b = real(path, verify=verify)
        (bundle / "model.onnx").write_bytes(b"not the verified model")
        return b

    expected = Segmenter(bundle).predict(np.full((40, 50, 3), 120, np.uint8))
    monkeypatch.setattr(S, "read_bundle", read_then_swap)
    seg = Segmenter(bundle)  # would fail to load (or load other weights) if it re-read the file
    assert np.array_equal(seg.predict(np.full((40, 50, 3), 120, np.uint8)), expected)


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(colors=[[0, 0, 0], [300, 0, 0]]), "colors"),
    (lambda m: m.update(outputs=[{"name": "x", "kind": "heatmap"}]), "outputs"),
    (lambda m: m.update(input_stats=[1]), "input_stats"),
    (lambda m: m.update(model=7), "model"),
    (lambda m: m.pop("preprocess"), "preprocess"),
])
def test_malformed_manifest_fields_one_line(bundle, edit, match):
    _reseal(bundle, edit)
    with pytest.raises(BundleError, match=match):
        read_bundle(bundle)


def test_deeply_nested_manifest_refused(bundle):
    m = json.loads((bundle / MANIFEST).read_text())
    text = json.dumps(m)[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (bundle / MANIFEST).write_text(text)
    with pytest.raises(BundleError, match="nested|not valid JSON"):
        read_bundle(bundle)
