"""Bad-input catalogue, class *one line, never a traceback*: JSON and text files.

Every JSON file edgeseg reads (a ``train --config``, a checkpoint's ``config.json`` and
``edgeseg_checkpoint.json``, ``bench --baseline``, ``compress --recipe``, a bundle's manifest)
is malformed, nested too deeply, of the wrong shape or types, or in another encoding; every
split file is in another encoding or has other line endings. Each is read correctly (a UTF-8
BOM, CRLF line endings, a UTF-16 file with its BOM) or refused with one ``error:`` line that
names the file and, for encodings, the encoding to use.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from badinput import Unchanged, cli, labelled, refused, rehash, worked
from conftest import EMBEDDED
from edgeseg.runtime.bundle import MANIFEST
from edgeseg.runtime.errors import BundleError

pytest_plugins = ["badinput"]  # the shared fixtures: models, ckpt, bundle, out, seg

NESTED = "[" * 100_000 + "]" * 100_000  # deeper than any parser's recursion limit
TINY = {"model_type": "segformer", "hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1],
        "decoder_hidden_size": 32, "num_attention_heads": [1, 1, 2, 2]}


def _write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


# =========================================================================== train --config
def _train_config(tmp_path, out, content):
    cfg = _write(tmp_path / "cfg.json", content)
    return cli("train", labelled(tmp_path / "d"), "-o", out / "ckpt", "--config", cfg, "--size", 64, "--epochs", 1,
               "-q")


@pytest.mark.parametrize("content, words", [
    ("[1, 2, 3]", ("cfg.json", "object", "list")),
    ('"segformer"', ("cfg.json", "object", "str")),
    ("", ("cfg.json", "not valid JSON")),
    ("{\"hidden_sizes\": [8, 16,", ("cfg.json", "not valid JSON")),
    (NESTED, ("cfg.json", "nested")),
    ('{"a": ' * 200 + "1" + "}" * 200, ("cfg.json", "nested")),
    ('{"hidden_sizes": NaN}', ("cfg.json", "NaN")),
    ({**TINY, "hidden_sizes": "abc"}, ("cfg.json", "hidden_sizes")),
    ({**TINY, "hidden_sizes": [8, 16, "x", 32]}, ("cfg.json", "hidden_sizes")),
    ({**TINY, "hidden_sizes": [8, 16, 24]}, ("cfg.json", "hidden_sizes", "4")),
    ({**TINY, "depths": [1, 1, 0, 1]}, ("cfg.json", "depths")),
    ({**TINY, "depths": [1, 1, 1.5, 1]}, ("cfg.json", "depths")),
    ({**TINY, "num_attention_heads": [1, 1, 5, 2]}, ("cfg.json", "num_attention_heads")),
    ({**TINY, "decoder_hidden_size": -32}, ("cfg.json", "decoder_hidden_size")),
    ({**TINY, "decoder_hidden_size": True}, ("cfg.json", "decoder_hidden_size")),
    ({**TINY, "hidden_sizes": [8, 16, 24, 10 ** 9]}, ("cfg.json", "hidden_sizes")),
    (json.dumps(TINY)[:-1] + ', "layer_norm_eps": 1e999}', ("cfg.json", "1e999")),  # 1e999 parses as inf
    ({**TINY, "layer_norm_eps": -1.0}, ("cfg.json", "layer_norm_eps")),
    ({**TINY, "drop_path_rate": 2.0}, ("cfg.json", "drop_path_rate")),
    ({**TINY, "num_channels": 4}, ("cfg.json", "num_channels")),
    ({**TINY, "model_type": ["segformer"]}, ("cfg.json", "model_type")),
], ids=lambda v: None if isinstance(v, tuple) else repr(v)[:40])
def test_train_config_file_wrong_shape_or_type(tmp_path, out, content, words):
    refused(_train_config(tmp_path, out, content), *words)


@pytest.mark.parametrize("encoding, words", [
    ("latin-1", ("cfg.json", "UTF-8")),
    ("utf-16", ("cfg.json", "UTF-16", "UTF-8")),  # Python's utf-16 writes a BOM
    ("utf-32", ("cfg.json", "UTF-32", "UTF-8")),
])
def test_train_config_file_in_another_encoding(tmp_path, out, encoding, words):
    text = json.dumps({**TINY, "id2label": {"0": "arrière-plan", "1": "polype"}}, ensure_ascii=False)
    refused(_train_config(tmp_path, out, text.encode(encoding)), *words)


def test_train_config_file_with_utf8_bom_works(tmp_path):
    """A UTF-8 BOM (what some Windows editors write) is not an error."""
    from edgeseg.model.variants import build_config

    cfg = _write(tmp_path / "cfg.json", b"\xef\xbb\xbf" + json.dumps(TINY).encode())
    assert list(build_config(config_file=cfg).hidden_sizes) == TINY["hidden_sizes"]


def test_train_config_file_is_a_folder(tmp_path, out):
    (tmp_path / "cfg.json").mkdir()
    refused(cli("train", labelled(tmp_path / "d"), "-o", out / "ckpt", "--config", tmp_path / "cfg.json", "--size",
                64, "--epochs", 1, "-q"), "cfg.json", "folder")


# =========================================================================== checkpoint JSON
def _with_json(ckpt, tmp_path, name, content) -> Path:
    c = shutil.copytree(ckpt, tmp_path / "c")
    _write(c / name, content)
    return c


@pytest.mark.parametrize("edit, words", [
    (lambda d: [d], ("config.json", "object")),
    (lambda d: '"segformer"', ("config.json", "object")),
    (lambda d: {**d, "architectures": "SegformerForSemanticSegmentation"}, ("config.json", "architectures")),
    (lambda d: {**d, "architectures": [7]}, ("config.json", "architectures")),
    (lambda d: {**d, "num_labels": "two"}, ("config.json", "num_labels")),
    (lambda d: {**d, "id2label": ["background", "foreground"]}, ("config.json", "id2label")),
    (lambda d: {**d, "hidden_sizes": "abc"}, ("config.json", "hidden_sizes")),
    (lambda d: {**d, "model_type": None}, ("not a SegFormer",)),
], ids=["list", "string", "architectures-string", "architectures-int", "num_labels", "id2label-list",
        "hidden_sizes", "model_type-null"])
def test_checkpoint_config_json_wrong_shape_export(ckpt, tmp_path, out, edit, words):
    d = json.loads((ckpt / "config.json").read_text())
    c = _with_json(ckpt, tmp_path, "config.json", edit(d))
    refused(cli("export", c, "-o", out / "b", "--data", EMBEDDED, "--split", "val"), *words)


def test_checkpoint_config_json_deeply_nested_evaluate(ckpt, tmp_path, out):
    c = _with_json(ckpt, tmp_path, "config.json", NESTED)
    refused(cli("evaluate", c, EMBEDDED, "--split", "val", "--json", out / "s.json"), "config.json", "nested")


def test_checkpoint_config_json_utf16_predict(ckpt, tmp_path, out):
    text = (ckpt / "config.json").read_text()
    c = _with_json(ckpt, tmp_path, "config.json", text.encode("utf-16"))
    refused(cli("predict", c, EMBEDDED / "images", "-o", out / "p"), "config.json", "UTF-16")


@pytest.mark.parametrize("edit, words", [
    (lambda d: [d], ("edgeseg_checkpoint.json", "object")),
    (lambda d: {**d, "preprocess": "abc"}, ("edgeseg_checkpoint.json", "preprocess")),
    (lambda d: {**d, "preprocess": {**d["preprocess"], "mean": "abc"}}, ("edgeseg_checkpoint.json", "mean")),
    (lambda d: {**d, "preprocess": {**d["preprocess"], "std": [0, 1, 1]}}, ("edgeseg_checkpoint.json", "std")),
    (lambda d: {**d, "preprocess": {**d["preprocess"], "height": 64.5}}, ("edgeseg_checkpoint.json", "height")),
    (lambda d: {**d, "classes": "ab"}, ("edgeseg_checkpoint.json", "classes")),
    (lambda d: {**d, "classes": [1, 2]}, ("edgeseg_checkpoint.json", "classes")),
    (lambda d: {**d, "colors": "red"}, ("edgeseg_checkpoint.json", "colors")),
    (lambda d: {**d, "colors": [[0, 0, 0], [300, 0, 0]]}, ("edgeseg_checkpoint.json", "colors")),
    (lambda d: {**d, "metrics": [0.5]}, ("edgeseg_checkpoint.json", "metrics")),
    (lambda d: {**d, "provenance": "x"}, ("edgeseg_checkpoint.json", "provenance")),
    (lambda d: {**d, "training": 3}, ("edgeseg_checkpoint.json", "training")),
    (lambda d: {k: v for k, v in d.items() if k != "format"}, ("edgeseg_checkpoint.json", "format")),
], ids=["list", "preprocess-str", "mean-str", "std-zero", "height-float", "classes-str", "classes-int",
        "colors-str", "colors-range", "metrics-list", "provenance-str", "training-int", "no-format"])
def test_checkpoint_meta_wrong_types_evaluate(ckpt, tmp_path, out, edit, words):
    d = json.loads((ckpt / "edgeseg_checkpoint.json").read_text())
    c = _with_json(ckpt, tmp_path, "edgeseg_checkpoint.json", edit(d))
    refused(cli("evaluate", c, EMBEDDED, "--split", "val", "--json", out / "s.json"), *words)


@pytest.mark.parametrize("content, words", [
    ("{", ("edgeseg_checkpoint.json", "not valid JSON")),
    (b"\xff\xfe{\x00}\x00", ("edgeseg_checkpoint.json", "UTF-16")),
    (NESTED, ("edgeseg_checkpoint.json", "nested")),
    ("", ("edgeseg_checkpoint.json", "not valid JSON")),
])
def test_checkpoint_meta_malformed_export(ckpt, tmp_path, out, content, words):
    c = _with_json(ckpt, tmp_path, "edgeseg_checkpoint.json", content)
    refused(cli("export", c, "-o", out / "b", "--data", EMBEDDED, "--split", "val"), *words)


def test_plain_hf_preprocessor_config_wrong_types_export(ckpt, tmp_path, out):
    c = shutil.copytree(ckpt, tmp_path / "c")
    (c / "edgeseg_checkpoint.json").unlink()
    _write(c / "preprocessor_config.json", {"size": {"height": "big", "width": 64}, "image_mean": [0.5] * 3})
    refused(cli("export", c, "-o", out / "b", "--data", EMBEDDED, "--split", "val"), "preprocessor_config.json",
            "height")


def test_plain_hf_preprocessor_config_list_export(ckpt, tmp_path, out):
    c = shutil.copytree(ckpt, tmp_path / "c")
    (c / "edgeseg_checkpoint.json").unlink()
    _write(c / "preprocessor_config.json", [1, 2])
    refused(cli("export", c, "-o", out / "b", "--data", EMBEDDED, "--split", "val"), "preprocessor_config.json",
            "object")


# =========================================================================== bench --baseline
def _baseline(tmp_path, bundle, out, content):
    base = _write(tmp_path / "base.json", content)
    return cli("bench", bundle, "--data", EMBEDDED, "--split", "val", "--runs", 2, "--warmup", 0, "--baseline", base,
               "--json", out / "b.json", "-q")


@pytest.mark.parametrize("content, words", [
    ([{"schema": "edgeseg.bench/1"}], ("base.json", "object")),
    ('"edgeseg.bench/1"', ("base.json", "object")),
    ("", ("base.json", "not valid JSON")),
    (NESTED, ("base.json", "nested")),
    ('{"schema": "edgeseg.bench/1", "rows": [], "x": Infinity}', ("base.json", "Infinity")),
    ({"schema": "edgeseg.bench/1", "rows": [1, 2]}, ("base.json", "rows")),
    ({"schema": "edgeseg.bench/1", "rows": [{"name": ["x"], "backend": 1}]}, ("base.json", "rows")),
], ids=["list", "string", "empty", "nested", "infinity", "rows-ints", "row-types"])
def test_baseline_wrong_shape_bench(bundle, tmp_path, out, content, words):
    refused(_baseline(tmp_path, bundle, out, content), *words)


def test_baseline_utf16_bench(bundle, tmp_path, out):
    text = json.dumps({"schema": "edgeseg.bench/1", "rows": []})
    refused(_baseline(tmp_path, bundle, out, text.encode("utf-16")), "base.json", "UTF-16")


def _saved_bench(bundle, tmp_path) -> dict:
    """A real saved bench result of the bundle (valid), for edits."""
    worked(cli("bench", bundle, "--data", EMBEDDED, "--split", "val", "--runs", 2, "--warmup", 0, "--json",
               tmp_path / "saved.json", "-q"))
    return json.loads((tmp_path / "saved.json").read_text())


def test_baseline_row_values_of_wrong_types_bench(bundle, tmp_path, out):
    d = _saved_bench(bundle, tmp_path)
    row = d["rows"][0]
    row["dice"] = "0.8"
    for lat in row["latency"].values():
        lat["model"]["p50_ms"] = "fast"
    refused(_baseline(tmp_path, bundle, out, d), "base.json")


def test_baseline_latency_not_an_object_bench(bundle, tmp_path, out):
    d = _saved_bench(bundle, tmp_path)
    d["rows"][0]["latency"] = [1, 2, 3]
    refused(_baseline(tmp_path, bundle, out, d), "base.json", "latency")


# =========================================================================== compress --recipe
def _recipe(ckpt, tmp_path, out, content):
    rec = _write(tmp_path / "recipe.json", content)
    return cli("compress", ckpt, "-o", out / "c", "--recipe", rec, "--calib", EMBEDDED, "--val", EMBEDDED,
               "--val-split", "val", "-q")


@pytest.mark.parametrize("content, words", [
    ([{"prune_ratio": 0.5}], ("recipe.json", "object")),
    ('"fast"', ("recipe.json", "object")),
    ("", ("recipe.json", "not valid JSON")),
    (NESTED, ("recipe.json", "nested")),
    ('{"prune_ratio": NaN}', ("recipe.json", "NaN")),
    ({"prune_ratio": "half"}, ("recipe.json", "prune_ratio")),
    ({"depths": "1,1,1,1"}, ("recipe.json", "depths")),
    ({"int8": "yes"}, ("recipe.json", "int8")),
    ({"distill_epochs": 2.5}, ("recipe.json", "distill_epochs")),
    ({"frobnicate": 1}, ("recipe.json", "frobnicate")),
    ({"target": ["cpu"]}, ("recipe.json", "target")),
], ids=["list", "string", "empty", "nested", "nan", "ratio-str", "depths-str", "int8-str", "epochs-float",
        "unknown-key", "target-list"])
def test_recipe_wrong_shape_or_type_compress(ckpt, tmp_path, out, content, words):
    refused(_recipe(ckpt, tmp_path, out, content), *words)


@pytest.mark.parametrize("encoding, words", [("latin-1", ("recipe.json", "UTF-8")),
                                             ("utf-16", ("recipe.json", "UTF-16"))])
def test_recipe_in_another_encoding_compress(ckpt, tmp_path, out, encoding, words):
    text = json.dumps({"prune_ratio": 0.5, "calib_split": "é"}, ensure_ascii=False)
    refused(_recipe(ckpt, tmp_path, out, text.encode(encoding)), *words)


# =========================================================================== manifests
@pytest.mark.parametrize("content, words", [
    ([1, 2], ("edgeseg.json", "object")),
    (NESTED, ("edgeseg.json", "nested")),
    ("", ("edgeseg.json", "not valid JSON")),
    (b"\xff\xfe{\x00}\x00", ("edgeseg.json", "UTF-16")),
])
def test_manifest_malformed_runtime(bundle, content, words):
    from edgeseg.runtime import Segmenter

    _write(bundle / MANIFEST, content)
    with pytest.raises(BundleError) as e:
        Segmenter(bundle)
    assert "\n" not in str(e.value)
    for w in words:
        assert w.lower() in str(e.value).lower()


@pytest.mark.parametrize("edit, words", [
    (lambda m: m.update(classes="ab"), ("classes",)),
    (lambda m: m.update(outputs={"name": "logits"}), ("outputs",)),
    (lambda m: m.update(colors="red"), ("colors",)),
    (lambda m: m.update(metrics=[1]), ("metrics",)),
    (lambda m: m.update(input_stats="none"), ("input_stats",)),
    (lambda m: m.update(onnxruntime={"session_config": [1]}), ("session_config",)),
    (lambda m: m.update(precision=32), ("precision",)),
    (lambda m: m.update(model=["model.onnx"]), ("model",)),
], ids=["classes", "outputs", "colors", "metrics", "input_stats", "session_config", "precision", "model"])
def test_manifest_wrong_types_evaluate(bundle, out, edit, words):
    rehash(bundle, edit)
    refused(cli("evaluate", bundle, EMBEDDED, "--split", "val", "--json", out / "s.json"), *words)


# =========================================================================== split files: encodings
NAMES = ["s0", "s1", "s2"]


def _split(tmp_path, data: bytes) -> Path:
    d = labelled(tmp_path / "d", n=3)
    _write(d / "splits/val.txt", data)
    return d


@pytest.mark.parametrize("data", [
    "\r\n".join(NAMES).encode() + b"\r\n",                 # Windows line endings
    b"\xef\xbb\xbf" + "\n".join(NAMES).encode(),            # UTF-8 with BOM
    "\n".join(NAMES).encode("utf-16"),                      # UTF-16 with its BOM: unambiguous
    b"\xef\xbb\xbf" + "\r\n".join(NAMES).encode() + b"\r\n",
    "\r".join(NAMES).encode(),                              # old Mac line endings
    "\n".join(NAMES).encode() + b"\n\n   \n",               # trailing blank lines
    "\n".join(NAMES).encode("utf-32"),                      # UTF-32 with its BOM
    b"\xfe\xff" + "\r\n".join(NAMES).encode("utf-16-be"),
], ids=["crlf", "utf8-bom", "utf16-bom", "bom-crlf", "cr", "blank-lines", "utf32-bom", "utf16be-bom"])
def test_split_file_variants_are_read_correctly(tmp_path, data):
    from edgeseg.data import folders as D

    d = _split(tmp_path, data)
    assert [s.name for s in D.discover(d, "val")] == NAMES


@pytest.mark.parametrize("data, words", [
    ("s0\ns1\nsé\n".encode("latin-1"), ("val.txt", "UTF-8")),
    ("\n".join(NAMES).encode("utf-16-le"), ("val.txt", "UTF-8")),  # UTF-16 without a BOM: NUL bytes
    (b"s0\ns1\x00\ns2\n", ("val.txt", "NUL")),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ("val.txt",)),
    ("s0\ns1\n".encode("cp1252") + b"\x93s2\x94\n", ("val.txt", "UTF-8", "0x93")),
], ids=["latin-1", "utf16-no-bom", "nul", "binary", "cp1252-quotes"])
def test_split_file_in_another_encoding_evaluate(bundle, tmp_path, out, data, words):
    d = _split(tmp_path, data)
    refused(cli("evaluate", bundle, d, "--split", "val", "--json", out / "s.json", "-q"), *words)


def test_split_file_latin1_train(tmp_path, out):
    d = _split(tmp_path, "s0\ns1\nsé\n".encode("latin-1"))
    refused(cli("train", d, "-o", out / "ckpt", "--variant", "tiny", "--size", 64, "--epochs", 1,
                "--train-split", "val", "-q"), "val.txt", "UTF-8")


def test_split_file_is_a_folder_evaluate(bundle, tmp_path, out):
    d = labelled(tmp_path / "d", n=3)
    (d / "splits/val.txt").mkdir(parents=True)
    refused(cli("evaluate", bundle, d, "--split", "val", "--json", out / "s.json", "-q"), "val")


def test_split_file_utf16_bom_works_evaluate(bundle, tmp_path):
    d = _split(tmp_path, "\n".join(NAMES[:2]).encode("utf-16"))
    worked(cli("evaluate", bundle, d, "--split", "val", "--json", tmp_path / "s.json", "-q"))
    assert json.loads((tmp_path / "s.json").read_text())["summary"]["n_images"] == 2


def test_bad_json_leaves_existing_output_unchanged(bundle, tmp_path):
    """A refusal that comes after the output exists must not touch it."""
    (tmp_path / "prev").mkdir()
    (tmp_path / "prev/s.json").write_text("{}")
    _write(tmp_path / "base.json", NESTED)
    with Unchanged(tmp_path / "prev"):
        refused(cli("bench", bundle, "--data", EMBEDDED, "--split", "val", "--baseline", tmp_path / "base.json",
                    "--json", tmp_path / "prev/s.json", "--overwrite", "-q"), "nested")
