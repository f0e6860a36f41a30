"""A catalogue of bad inputs, one test each, against every command and the runtime API.

Every refusal must be: a non-zero exit, exactly one ``error:`` line that names the problem,
no traceback, and no partial output (the output path does not exist afterwards, or is
byte-for-byte unchanged when it existed before). Valid-but-unusual images (16-bit, gray,
RGBA) must simply work.

CLI cases run in-process through ``typer.testing.CliRunner`` (fast); a few run the installed
``edgeseg`` executable in a subprocess, the way users run it. The models are an untrained tiny
SegFormer (64 px) and its bundle, built once per module: no training needed. The helpers and
fixtures live in ``tests/badinput.py``; the other classes of the catalogue in
``tests/test_bad_inputs_*.py``.

Very large images: images above 100 megapixels (``edgeseg.runtime.preprocess.MAX_IMAGE_PIXELS``)
are refused with a message; files are measured from their PNG/JPEG/BMP/TIFF header before any
pixel is decoded, arrays given to the runtime API by their shape.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from badinput import Unchanged, cli, huge_png, labelled, mask01, refused, rehash, rgb, worked
from conftest import EMBEDDED, run_cli, write_img
from edgeseg.runtime.bundle import MANIFEST
from edgeseg.runtime.errors import BundleError, InputError

pytest_plugins = ["badinput"]  # the shared fixtures: models, ckpt, bundle, out, seg


# =========================================================================== images and masks
def test_truncated_jpeg_image_evaluate(bundle, tmp_path, out):
    d = labelled(tmp_path / "d", ext=".jpg")
    data = (d / "images/s1.jpg").read_bytes()
    (d / "images/s1.jpg").write_bytes(data[: len(data) // 2])
    refused(cli("evaluate", bundle, d, "--json", out / "s.json", "-q"), "corrupt or truncated", "s1.jpg")


def test_truncated_png_mask_evaluate(bundle, tmp_path, out):
    d = labelled(tmp_path / "d")
    data = (d / "masks/s0.png").read_bytes()
    (d / "masks/s0.png").write_bytes(data[:-30])
    refused(cli("evaluate", bundle, d, "--csv", out / "rows.csv", "-q"), "corrupt or truncated", "s0.png")


def test_zero_size_image_predict(bundle, tmp_path, out):
    write_img(tmp_path / "in/good.png", rgb())
    (tmp_path / "in/empty.png").write_bytes(b"")
    refused(cli("predict", bundle, tmp_path / "in", "-o", out / "pred"), "empty file", "empty.png")


def test_zero_size_mask_bench(bundle, tmp_path, out):
    d = labelled(tmp_path / "d")
    (d / "masks/s1.png").write_bytes(b"")
    refused(cli("bench", bundle, "--data", d, "--runs", 2, "--warmup", 1, "--json", out / "b.json", "-q"),
            "empty file", "s1.png")


def test_text_file_named_png_train(tmp_path, out):
    d = labelled(tmp_path / "d", n=3)
    (d / "images/s2.png").write_text("this is not an image\n")
    refused(cli("train", d, "-o", out / "ckpt", "--variant", "tiny", "--size", 64, "--epochs", 1, "-q"),
            "not a readable image", "s2.png")


def test_16bit_image_works_evaluate(bundle, tmp_path):
    d = tmp_path / "d"
    write_img(d / "images/a.png", (rgb().astype(np.uint16) * 257))
    write_img(d / "masks/a.png", mask01())
    r = cli("evaluate", bundle, d, "--json", tmp_path / "s.json", "-q")
    worked(r)
    assert json.loads((tmp_path / "s.json").read_text())["summary"]["n_images"] == 1


def test_grayscale_image_works_predict(bundle, tmp_path):
    write_img(tmp_path / "in/g.png", rgb()[:, :, 0])
    worked(cli("predict", bundle, tmp_path / "in", "-o", tmp_path / "p"))
    assert cv2.imread(str(tmp_path / "p/masks/g.png"), cv2.IMREAD_UNCHANGED).shape == (40, 56)


def test_rgba_image_works_predict(bundle, tmp_path):
    rgba = np.dstack([rgb(), np.full((40, 56), 128, np.uint8)])
    write_img(tmp_path / "in/a.png", rgba)
    worked(cli("predict", bundle, tmp_path / "in", "-o", tmp_path / "p", "--probs"))
    assert cv2.imread(str(tmp_path / "p/masks/a.png"), cv2.IMREAD_UNCHANGED).shape == (40, 56)
    assert (tmp_path / "p/probs/a.png").is_file()


def test_huge_png_refused_before_decoding_predict(bundle, tmp_path, out):
    huge_png(tmp_path / "in/huge.png")
    t = time.perf_counter()
    refused(cli("predict", bundle, tmp_path / "in", "-o", out / "pred"), "too large", "20000x20000", "100 MP")
    assert time.perf_counter() - t < 10  # measured from the header: nothing decoded


def test_huge_jpeg_header_refused_evaluate(bundle, tmp_path, out):
    d = labelled(tmp_path / "d", ext=".jpg")
    data = bytearray((d / "images/s0.jpg").read_bytes())
    i = data.find(b"\xff\xc0")  # baseline frame header: height, width follow the precision byte
    assert i > 0
    data[i + 5:i + 9] = struct.pack(">HH", 30000, 30000)
    (d / "images/s0.jpg").write_bytes(bytes(data))
    refused(cli("evaluate", bundle, d, "--json", out / "s.json", "-q"), "too large", "30000x30000")


def test_nan_float_tiff_evaluate(bundle, tmp_path, out):
    d = labelled(tmp_path / "d", n=1)
    img = np.full((40, 56, 3), np.nan, np.float32)
    (d / "images/s0.png").unlink()
    write_img(d / "images/s0.tif", img)
    refused(cli("evaluate", bundle, d, "--json", out / "s.json", "-q"), "NaN", "s0.tif")


def test_mask_of_wrong_size_strict_evaluate(bundle, tmp_path, out):
    d = labelled(tmp_path / "d")
    write_img(d / "masks/s1.png", mask01(30, 56))
    refused(cli("evaluate", bundle, d, "--strict", "--json", out / "s.json", "-q"), "56x30", "56x40")


def test_mask_of_wrong_size_is_left_out_loudly_bench(bundle, tmp_path):
    """Without --strict one mismatched pair among good ones is left out, named in a warning, and
    never resized to fit."""
    from edgeseg.data import folders as D

    d = labelled(tmp_path / "d")
    write_img(d / "masks/s1.png", mask01(30, 56))
    samples = D.discover(d)
    assert "s1" not in [s.name for s in samples] and samples.skipped[0][0] == "s1"
    assert "56x30" in samples.skipped[0][1]
    r = cli("bench", bundle, "--data", d, "--runs", 2, "--warmup", 1, "-q")
    assert r.exit_code == 0


def test_mask_with_unexpected_labels_evaluate(bundle, tmp_path, out):
    d = labelled(tmp_path / "d")
    write_img(d / "masks/s0.png", (mask01() > 0).astype(np.uint8) * 7)
    refused(cli("evaluate", bundle, d, "--json", out / "s.json", "-q"), "not binary", "s0.png")


def test_mask_label_beyond_classes_train(tmp_path, out):
    d = labelled(tmp_path / "d", n=2)
    write_img(d / "masks/s0.png", (mask01() > 0).astype(np.uint8) * 2)
    write_img(d / "masks/s1.png", (mask01() > 0).astype(np.uint8) * 5)
    refused(cli("train", d, "-o", out / "ckpt", "--classes", "bg,a,b", "--variant", "tiny", "--size", 64,
                "--epochs", 1, "-q"), "label 5", "3 classes")


def test_empty_folders_evaluate(bundle, tmp_path, out):
    (tmp_path / "d/images").mkdir(parents=True)
    (tmp_path / "d/masks").mkdir()
    refused(cli("evaluate", bundle, tmp_path / "d", "--json", out / "s.json"), "no images")


def test_empty_folder_predict(bundle, tmp_path, out):
    (tmp_path / "in").mkdir()
    (tmp_path / "in/notes.txt").write_text("no images here")
    refused(cli("predict", bundle, tmp_path / "in", "-o", out / "pred"), "no images found")


def test_empty_calibration_folder_compress(ckpt, tmp_path, out):
    (tmp_path / "calib").mkdir()
    refused(cli("compress", ckpt, "-o", out / "c", "--calib", tmp_path / "calib", "--val", EMBEDDED,
                "--val-split", "val", "--distill-epochs", 0, "-q"), "no images")


def test_predict_into_existing_folder_leaves_it_unchanged(bundle, tmp_path):
    write_img(tmp_path / "in/a.png", rgb())
    worked(cli("predict", bundle, tmp_path / "in", "-o", tmp_path / "prev"))
    (tmp_path / "in/b.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with Unchanged(tmp_path / "prev"):
        refused(cli("predict", bundle, tmp_path / "in", "-o", tmp_path / "prev", "--overwrite"), "b.jpg")


# =========================================================================== checkpoints
def _fake_ckpt(root: Path, config) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return root


def test_checkpoint_of_another_model_type_compress(tmp_path, out):
    c = _fake_ckpt(tmp_path / "bert", {"model_type": "bert", "architectures": ["BertModel"]})
    refused(cli("compress", c, "-o", out / "c", "--calib", EMBEDDED, "--val", EMBEDDED, "-q"), "not a SegFormer")


def test_segformer_classifier_is_not_a_segmenter_export(ckpt, tmp_path, out):
    c = shutil.copytree(ckpt, tmp_path / "cls")
    cfg = json.loads((c / "config.json").read_text())
    cfg["architectures"] = ["SegformerForImageClassification"]
    (c / "config.json").write_text(json.dumps(cfg))
    refused(cli("export", c, "-o", out / "b"), "not a SegformerForSemanticSegmentation")


def test_truncated_safetensors_export(ckpt, tmp_path, out):
    c = shutil.copytree(ckpt, tmp_path / "c")
    w = c / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size * 2 // 3])
    refused(cli("export", c, "-o", out / "b"), "corrupt or truncated", "model.safetensors")


def test_failed_export_keeps_previous_bundle(ckpt, models, tmp_path):
    prev = shutil.copytree(models[1], tmp_path / "prev")
    c = shutil.copytree(ckpt, tmp_path / "c")
    w = c / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with Unchanged(tmp_path):
        refused(cli("export", c, "-o", prev, "--overwrite", "--data", EMBEDDED, "--split", "val"),
                "corrupt or truncated")


def test_checkpoint_config_not_json_evaluate(tmp_path, out):
    c = _fake_ckpt(tmp_path / "c", "{not json")
    refused(cli("evaluate", c, EMBEDDED, "--json", out / "s.json"), "not valid JSON")


def test_checkpoint_without_weights_predict(ckpt, tmp_path, out):
    c = shutil.copytree(ckpt, tmp_path / "c")
    (c / "model.safetensors").unlink()
    write_img(tmp_path / "in/a.png", rgb())
    refused(cli("predict", c, tmp_path / "in", "-o", out / "p"), "no model.safetensors")


def test_init_checkpoint_not_segformer_train(tmp_path, out):
    c = _fake_ckpt(tmp_path / "vit", {"model_type": "vit"})
    d = labelled(tmp_path / "d")
    refused(cli("train", d, "-o", out / "ckpt", "--init", c, "--size", 64, "--epochs", 1, "-q"), "not a SegFormer")


def test_config_file_not_segformer_train(tmp_path, out):
    (tmp_path / "vit.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 8}))
    d = labelled(tmp_path / "d")
    refused(cli("train", d, "-o", out / "ckpt", "--config", tmp_path / "vit.json", "--size", 64, "--epochs", 1,
                "-q"), "not a SegFormer")


# =========================================================================== ONNX and bundles
def test_truncated_bare_onnx_evaluate(models, tmp_path, out):
    data = (models[1] / "model.onnx").read_bytes()
    (tmp_path / "m.onnx").write_bytes(data[: len(data) // 2])
    refused(cli("evaluate", tmp_path / "m.onnx", EMBEDDED, "--split", "val", "--json", out / "s.json"),
            "cannot load ONNX model")


def test_truncated_onnx_in_consistent_bundle_predict(bundle, tmp_path, out):
    data = (bundle / "model.onnx").read_bytes()
    (bundle / "model.onnx").write_bytes(data[: len(data) // 3])
    rehash(bundle)  # the hashes match the truncated file: ONNX Runtime itself must refuse it
    write_img(tmp_path / "in/a.png", rgb())
    refused(cli("predict", bundle, tmp_path / "in", "-o", out / "p"), "cannot load ONNX model")


def test_tampered_model_predict(bundle, tmp_path, out):
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[-50] ^= 0x01
    (bundle / "model.onnx").write_bytes(bytes(data))
    write_img(tmp_path / "in/a.png", rgb())
    refused(cli("predict", bundle, tmp_path / "in", "-o", out / "p"), "sha256", "model.onnx")


def test_tampered_manifest_bench(bundle, out):
    m = json.loads((bundle / MANIFEST).read_text())
    m["classes"] = ["background", "tumour"]
    (bundle / MANIFEST).write_text(json.dumps(m))
    refused(cli("bench", bundle, "--data", EMBEDDED, "--split", "val", "--json", out / "b.json", "-q"),
            "modified after it was written")


def test_unknown_schema_version_predict(bundle, tmp_path, out):
    rehash(bundle, lambda m: m.update(schema_version=2))
    write_img(tmp_path / "in/a.png", rgb())
    refused(cli("predict", bundle, tmp_path / "in", "-o", out / "p"), "schema version 2")


def test_manifest_file_name_with_parent_dir_evaluate(bundle, out):
    def edit(m):
        m["files"]["../model.onnx"] = m["files"].pop("model.onnx")
        m["model"] = "../model.onnx"
    rehash(bundle, edit)
    refused(cli("evaluate", bundle, EMBEDDED, "--split", "val", "--json", out / "s.json"), "path components",
            "../model.onnx")


def test_manifest_absolute_file_name_evaluate(bundle, out):
    def edit(m):
        m["files"]["/etc/passwd"] = m["files"]["model.onnx"]
    rehash(bundle, edit)
    refused(cli("evaluate", bundle, EMBEDDED, "--split", "val", "--json", out / "s.json"), "path components")


def test_manifest_not_json_evaluate(bundle, out):
    (bundle / MANIFEST).write_text('{"schema_version": 1,')
    refused(cli("evaluate", bundle, EMBEDDED, "--split", "val", "--json", out / "s.json"), "not valid JSON")


def test_manifest_missing_field_bench(bundle, out):
    rehash(bundle, lambda m: m.pop("preprocess"))
    refused(cli("bench", bundle, "--data", EMBEDDED, "--split", "val", "--json", out / "b.json", "-q"),
            "lacks required field", "preprocess")


def test_manifest_invalid_input_stats_runtime(bundle):
    from edgeseg.runtime import Segmenter

    rehash(bundle, lambda m: m["input_stats"].update(threshold=-1))
    with pytest.raises(BundleError, match="invalid input statistics"):
        Segmenter(bundle)


def test_export_tensorrt_given_a_checkpoint(ckpt, out):
    refused(cli("export", ckpt, "--format", "tensorrt", "-o", out / "m.engine"), "not a bundle")


# =========================================================================== conflicting and unknown options
def test_export_tensorrt_with_fp16_conflicts(bundle, out):
    refused(cli("export", bundle, "--format", "tensorrt", "--fp16", "-o", out / "m.engine"), "--fp16",
            "--precision")


def test_export_bundle_with_int8_precision_conflicts(ckpt, out):
    refused(cli("export", ckpt, "--precision", "int8", "-o", out / "b"), "--precision", "--format tensorrt")


def test_compress_no_int8_with_calib_method_conflicts(ckpt, out):
    refused(cli("compress", ckpt, "-o", out / "c", "--no-int8", "--calib-method", "entropy", "--calib", EMBEDDED,
                "--val", EMBEDDED), "--no-int8", "--calib-method")


def test_unknown_option_predict(bundle, tmp_path, out):
    refused(cli("predict", bundle, tmp_path, "-o", out / "p", "--frobnicate"), "no such option", "--frobnicate")


def test_bad_batch_sizes_bench(bundle, out):
    refused(cli("bench", bundle, "--data", EMBEDDED, "--batch-sizes", "1,x", "--json", out / "b.json"),
            "--batch-sizes")


def test_bad_spacing_evaluate(bundle, out):
    refused(cli("evaluate", bundle, EMBEDDED, "--split", "val", "--spacing", "a,b", "--json", out / "s.json"),
            "--spacing")


def test_baseline_not_json_bench(bundle, tmp_path, out):
    (tmp_path / "base.json").write_text("[1, 2")
    refused(cli("bench", bundle, "--data", EMBEDDED, "--split", "val", "--baseline", tmp_path / "base.json",
                "--json", out / "b.json", "-q"), "not valid JSON")


def test_unknown_variant_train(tmp_path, out):
    refused(cli("train", labelled(tmp_path / "d"), "-o", out / "ckpt", "--variant", "b9", "--size", 64, "-q"),
            "unknown variant")


# =========================================================================== runtime API
def test_runtime_nan_float_image(seg):
    with pytest.raises(InputError, match="NaN"):
        seg.predict(np.full((20, 30, 3), np.nan, np.float32))


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.float16, bool])
def test_runtime_wrong_dtype(seg, dtype):
    with pytest.raises(InputError, match=f"uint8.*{np.dtype(dtype).name}"):
        seg.predict(np.zeros((20, 30, 3), dtype))


@pytest.mark.parametrize("shape", [(20, 30, 4), (20, 30, 1), (3, 20, 30), (20, 30, 3, 1), (600,)])
def test_runtime_wrong_shape_or_channels(seg, shape):
    with pytest.raises(InputError, match="HxWx3"):
        seg.predict(np.zeros(shape, np.uint8))


def test_runtime_empty_image(seg):
    with pytest.raises(InputError, match="empty"):
        seg.predict(np.zeros((0, 30, 3), np.uint8))


def test_runtime_huge_image_refused_without_allocating(seg):
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (20000, 20000, 3))  # a view: no memory
    with pytest.raises(InputError, match="too large.*20000x20000"):
        seg.predict(huge)
    with pytest.raises(InputError, match="too large"):
        seg.drift(huge)


def test_runtime_infer_wrong_input_size(seg):
    with pytest.raises(InputError, match="fixed at 64"):
        seg.infer(np.zeros((1, 3, 32, 64), np.float32))
    with pytest.raises(InputError, match="NCHW"):
        seg.infer(np.zeros((3, 64, 64), np.float32))


def test_runtime_predict_batch_not_a_list(seg):
    with pytest.raises(InputError, match="non-empty list"):
        seg.predict_batch(np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(InputError, match="numpy array"):
        seg.predict_batch([[[0, 0, 0]]])


def test_runtime_truncated_onnx(models, tmp_path):
    from edgeseg.runtime import Segmenter

    data = (models[1] / "model.onnx").read_bytes()
    (tmp_path / "m.onnx").write_bytes(data[:1000])
    with pytest.raises(BundleError, match="cannot load ONNX model"):
        Segmenter(tmp_path / "m.onnx")


def test_runtime_folder_that_is_not_a_bundle(tmp_path):
    from edgeseg.runtime import Segmenter

    with pytest.raises(BundleError, match="not a bundle"):
        Segmenter(tmp_path)


def test_runtime_drift_without_statistics(bundle):
    from edgeseg.runtime import Segmenter

    rehash(bundle, lambda m: m.pop("input_stats"))
    s = Segmenter(bundle)
    assert s.drift_guard is None
    with pytest.raises(BundleError, match="no input statistics"):
        s.drift(rgb())


# =========================================================================== as users run it (subprocess)
def test_subprocess_huge_image_no_memory_blowup(models, tmp_path, out):
    import subprocess
    import sys

    huge_png(tmp_path / "in/huge.png")
    exe = Path(sys.executable).with_name("edgeseg")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edgeseg"]
    # a parent of its own, so the peak resident memory reported is that of this one CLI run
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
               "sys.exit(r.returncode)")
    r = subprocess.run([sys.executable, "-c", wrapper, *cmd, "predict", str(models[1]), str(tmp_path / "in"),
                        "-o", str(out / "pred")], capture_output=True, text=True, timeout=600)
    refused(r, "too large", "20000x20000")
    peak_mb = int(r.stderr.rsplit("peak_rss_kb", 1)[1].split()[0]) / 1024
    assert peak_mb < 1000, peak_mb  # a decoded 20000x20000 RGB image alone would be 1.2 GB


def test_subprocess_unknown_schema_version(bundle, tmp_path, out):
    rehash(bundle, lambda m: m.update(schema_version=99))
    r = run_cli("evaluate", bundle, EMBEDDED, "--split", "val", "--json", out / "s.json")
    refused(r, "schema version 99")
    assert r.returncode == 2


def test_subprocess_export_conflicting_options(ckpt, out):
    r = run_cli("export", ckpt, "--format", "bundle", "--dla-core", "0", "-o", out / "b")
    refused(r, "--dla-core")
    assert r.returncode == 2
