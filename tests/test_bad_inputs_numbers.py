"""Bad-input catalogue, class *numbers*: NaN, infinities and out-of-range values are refused by
name everywhere a number comes in (every numeric option of every command, recipe values,
manifest and config numbers), before any work; a NaN tolerance never switches a gate off; and
JSON that edgeseg writes never holds NaN or Infinity tokens.
"""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest

from badinput import cli, labelled, mask01, refused, rehash, rgb, worked
from conftest import EMBEDDED, write_img
from edgeseg.runtime.errors import BundleError

pytest_plugins = ["badinput"]  # the shared fixtures: models, ckpt, bundle, out, seg

# (command, the option, a bad value): each is refused naming the option, nothing is written
BAD_OPTIONS = [
    ("train", "--lr", "nan"), ("train", "--lr", "inf"), ("train", "--lr", "-1"), ("train", "--lr", "0"),
    ("train", "--size", "0"), ("train", "--size", "-64"), ("train", "--size", "65"), ("train", "--epochs", "-1"),
    ("train", "--epochs", "0"), ("train", "--batch-size", "0"), ("train", "--warmup-steps", "-1"),
    ("train", "--threads", "0"), ("train", "--time-budget", "nan"), ("train", "--time-budget", "-5"),
    ("train", "--time-budget", "inf"), ("train", "--seed", "-1"),
    ("evaluate", "--spacing", "nan,1"), ("evaluate", "--spacing", "1,inf"), ("evaluate", "--spacing", "0,1"),
    ("evaluate", "--spacing", "1,2,3"), ("evaluate", "--threads", "0"), ("evaluate", "--threads", "-2"),
    ("predict", "--threads", "0"),
    ("export", "--parity-images", "-1"), ("export", "--opset", "0"), ("export", "--opset", "99"),
    ("quantize", "--calib-count", "-5"), ("quantize", "--calib-count", "0"),
    ("bench", "--tol", "nan"), ("bench", "--tol", "-1"), ("bench", "--tol", "inf"), ("bench", "--tol-dice", "-1"),
    ("bench", "--tol-dice", "nan"), ("bench", "--tol-dice", "2"), ("bench", "--runs", "0"),
    ("bench", "--warmup", "-1"), ("bench", "--threads", "0"), ("bench", "--max-images", "0"),
    ("bench", "--batch-sizes", "0"), ("bench", "--batch-sizes", "1,-4"),
    ("compress", "--max-dice-drop", "nan"), ("compress", "--max-dice-drop", "1.5"),
    ("compress", "--min-lesion-px", "0"),
    ("compress", "--max-dice-drop", "-0.1"), ("compress", "--prune-ratio", "1.5"),
    ("compress", "--prune-ratio", "nan"), ("compress", "--prune-ratio", "-0.5"), ("compress", "--decoder-ratio", "1"),
    ("compress", "--decoder-ratio", "inf"), ("compress", "--target-macs", "0"), ("compress", "--target-macs", "nan"),
    ("compress", "--target-macs", "1.5"), ("compress", "--distill-epochs", "-1"), ("compress", "--calib-count", "-5"),
    ("compress", "--threads", "0"),
    ("prune", "--ratio", "1.5"), ("prune", "--ratio", "nan"), ("prune", "--decoder-ratio", "nan"),
    ("prune", "--calib-count", "0"),
    ("distill", "--epochs", "-1"), ("distill", "--batch-size", "0"), ("distill", "--lr", "nan"),
    ("distill", "--temperature", "nan"), ("distill", "--temperature", "inf"), ("distill", "--temperature", "0"),
    ("distill", "--alpha", "nan"), ("distill", "--alpha", "2"), ("distill", "--threads", "0"),
    # issue 13 (tracking): cross-validation, search, saliency
    ("train", "--folds", "1"), ("train", "--folds", "0"), ("train", "--augment-strength", "-1"),
    ("train", "--augment-strength", "nan"), ("train", "--dice-weight", "-1"),
    ("explain", "--stage", "0"), ("explain", "--stage", "5"), ("explain", "--threads", "0"),
    ("tune", "--trials", "0"), ("tune", "--time-budget", "0"), ("tune", "--time-budget", "nan"),
    ("tune", "--epochs", "0"), ("tune", "--size", "0"), ("tune", "--threads", "0"), ("tune", "--seed", "-1"),
]


def _args(command, models, tmp_path, out):
    ckpt, bundle = models
    data = labelled(tmp_path / "d")
    return {
        "train": ["train", data, "-o", out / "r", "--variant", "tiny", "--size", 64, "--epochs", 1, "-q"],
        "evaluate": ["evaluate", bundle, data, "--json", out / "s.json", "-q"],
        "predict": ["predict", bundle, data / "images", "-o", out / "p", "-q"],
        "export": ["export", ckpt, "-o", out / "b", "--data", EMBEDDED, "--split", "val"],
        "quantize": ["quantize", bundle, "-o", out / "q", "--target", "cpu", "--calib", EMBEDDED],
        "bench": ["bench", bundle, "--data", data, "--runs", 2, "--warmup", 0, "--json", out / "b.json", "-q"],
        "compress": ["compress", ckpt, "-o", out / "c", "--calib", EMBEDDED, "--val", EMBEDDED, "--val-split", "val",
                     "--distill-epochs", 0, "-q"],
        "prune": ["prune", ckpt, "-o", out / "p"],
        "distill": ["distill", ckpt, ckpt, "-o", out / "d", "--train", EMBEDDED, "-q"],
        "explain": ["explain", ckpt, data / "images", "-o", out / "x", "-q"],
        "tune": ["tune", data, "-o", out / "t", "--variant", "tiny", "--size", 64, "--epochs", 1, "--trials", 1, "-q"],
    }[command]


@pytest.mark.parametrize("command, flag, value", BAD_OPTIONS, ids=[" ".join(c) for c in BAD_OPTIONS])
def test_numeric_option_refused_by_name(models, tmp_path, out, command, flag, value):
    args = _args(command, models, tmp_path, out)
    args = [a for i, a in enumerate(args) if a != flag and (i == 0 or args[i - 1] != flag)]  # the bad value wins
    refused(cli(*args, flag, value), flag)


def test_every_numeric_option_is_in_the_catalogue():
    """A new numeric option must be added to BAD_OPTIONS (or to NOT_RANGED with a reason)."""
    import click
    import typer

    from edgeseg.cli import app

    not_ranged = {("export", "--dla-core")}  # tensorrt only: checked by the TensorRT builder (>= 0)
    cmd = typer.main.get_command(app)
    numeric = set()
    for name, sub in cmd.commands.items():
        for p in sub.params:
            if isinstance(p, click.Option) and isinstance(p.type, (click.types.IntParamType,
                                                                   click.types.FloatParamType)):
                numeric.add((name, max(p.opts, key=len)))
    covered = {(c, f) for c, f, _ in BAD_OPTIONS}
    assert numeric - covered - not_ranged == set()


# =========================================================================== recipe, manifest, config numbers
# compress/recipe.py range-checks every numeric Recipe field by name in Recipe.__post_init__,
# before the first stage writes anything.


@pytest.mark.parametrize("recipe, word", [
    ('{"prune_ratio": 1.5}', "prune_ratio"), ('{"prune_ratio": 1e999}', "1e999"),
    ('{"max_dice_drop": -1}', "max-dice-drop"), ('{"distill_lr": -1}', "distill_lr"),
    ('{"distill_lr": 0}', "distill_lr"), ('{"temperature": 0}', "temperature"),
    ('{"decoder_ratio": 1.0}', "decoder_ratio"),
    ('{"target_macs": 0}', "target_macs"),
    ('{"stage_ratios": [0.5, 0.5, 2.0, 0.5]}', "stage_ratios"),
    ('{"depths": [1, 0, 1, 1]}', "depths"),
    ('{"calib_count": -5}', "calib_count"), ('{"runs": 0}', "runs"),
    ('{"seed": -1}', "seed"),
    ('{"alpha": 1.5}', "alpha"), ('{"feature_weight": -1}', "feature_weight"),
])
def test_recipe_numbers_refused_before_any_stage(ckpt, tmp_path, out, recipe, word):
    (tmp_path / "r.json").write_text(recipe)
    refused(cli("compress", ckpt, "-o", out / "c", "--recipe", tmp_path / "r.json", "--calib", EMBEDDED, "--val",
                EMBEDDED, "--val-split", "val", "--train", EMBEDDED, "-q"), word)


@pytest.mark.parametrize("edit, word", [
    (lambda m: m["preprocess"].update(std=[0.0, 1.0, 1.0]), "std"),
    (lambda m: m["preprocess"].update(scale=-1.0), "scale"),
    (lambda m: m["preprocess"].update(height=64.5), "height"),
    (lambda m: m["preprocess"].update(height=0), "size"),
    (lambda m: m["input_stats"].update(threshold=0), "input statistics"),
    (lambda m: m["input_stats"].update(threshold="high"), "input statistics"),
])
def test_manifest_numbers_refused_at_load(bundle, edit, word):
    from edgeseg.runtime import Segmenter

    rehash(bundle, edit)
    with pytest.raises(BundleError, match=word):
        Segmenter(bundle)


@pytest.mark.parametrize("field", ["mean", "threshold"])
def test_manifest_infinity_refused_at_load(bundle, field):
    """1e999 in a manifest parses as infinity: refused when read, before any number is used."""
    from edgeseg.runtime import Segmenter
    from edgeseg.runtime.bundle import MANIFEST

    rehash(bundle)
    text = (bundle / MANIFEST).read_text()
    if field == "mean":
        text = re.sub(r'"mean": \[[^\]]*\]', '"mean": [1e999, 0.5, 0.5]', text, count=1)
    else:
        text = re.sub(r'"threshold": [0-9.]+', '"threshold": 1e999', text, count=1)
    assert "1e999" in text
    (bundle / MANIFEST).write_text(text)
    with pytest.raises(BundleError, match="1e999"):
        Segmenter(bundle)


def test_nan_tolerance_never_switches_the_gate_off():
    from edgeseg.errors import ConfigError
    from edgeseg.measure.baseline import compare_baseline

    row = {"name": "m", "backend": "cpu", "dice": 0.5, "latency": {"1": {"model": {"p50_ms": 10.0, "spread_ms": 0.1},
                                                                           "e2e": {"p50_ms": 12.0, "spread_ms": 0.1}}}}
    base = {"rows": [{**row, "dice": 0.9}]}
    assert compare_baseline({"rows": [row]}, base)  # a real regression is found
    for tol in (float("nan"), float("inf"), -0.1):
        with pytest.raises(ConfigError, match="--tol"):
            compare_baseline({"rows": [row]}, base, tol_rel=tol)
        with pytest.raises(ConfigError, match="--tol-dice"):
            compare_baseline({"rows": [row]}, base, tol_dice=tol)


def test_checks_helper():
    from edgeseg.checks import integer, number
    from edgeseg.errors import ConfigError

    assert number("x", 0.5, 0, 1) == 0.5 and integer("n", np.int64(3), 1) == 3
    for bad in (float("nan"), float("inf"), "0.5", None, True, 1.5):
        with pytest.raises(ConfigError, match="^x "):
            number("x", bad, 0, 1, hi_open=True)
    for bad in (2.0, "2", True, 0, np.float64(2)):
        with pytest.raises(ConfigError, match="^n "):
            integer("n", bad, 1)


# =========================================================================== JSON output never holds NaN
TOKENS = re.compile(r"\b(NaN|-?Infinity)\b")


def _no_nan_tokens(text: str, where: str) -> dict:
    assert not TOKENS.search(text), f"{where} holds {TOKENS.search(text).group(0)}"
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{where}: {c}"))


@pytest.fixture(scope="module")
def empty_mask_data(tmp_path_factory):
    """A labelled folder where one mask is empty and one image all foreground: HD95 is infinite,
    some scores undefined (NaN) on these images."""
    root = tmp_path_factory.mktemp("emptymask")
    for i in range(3):
        write_img(root / f"images/e{i}.png", rgb(seed=i))
    write_img(root / "masks/e0.png", np.zeros((40, 56), np.uint8))
    write_img(root / "masks/e1.png", np.full((40, 56), 255, np.uint8))
    write_img(root / "masks/e2.png", mask01())
    return root


def test_evaluate_json_and_stdout_have_no_nan(bundle, empty_mask_data, tmp_path):
    r = cli("evaluate", bundle, empty_mask_data, "--json", tmp_path / "s.json", "--csv", tmp_path / "rows.csv", "-q")
    worked(r)
    d = _no_nan_tokens((tmp_path / "s.json").read_text(), "evaluate --json")
    summary = d["summary"]
    assert summary["hd95_inf"] >= 1  # the case this test is about did happen
    assert all(v is None or not isinstance(v, float) or math.isfinite(v) for v in summary.values())


def test_bench_json_has_no_nan(bundle, empty_mask_data, tmp_path):
    worked(cli("bench", bundle, "--data", empty_mask_data, "--runs", 2, "--warmup", 0, "--json", tmp_path / "b.json",
               "-q"))
    _no_nan_tokens((tmp_path / "b.json").read_text(), "bench --json")


@pytest.mark.slow
def test_export_stdout_json_has_no_nan(ckpt, empty_mask_data, tmp_path):
    r = cli("export", ckpt, "-o", tmp_path / "b", "--data", empty_mask_data)
    worked(r)
    _no_nan_tokens(r.stdout, "export stdout")
    from edgeseg.runtime.bundle import MANIFEST

    _no_nan_tokens((tmp_path / "b" / MANIFEST).read_text(), "manifest")


@pytest.mark.slow
def test_compress_outputs_have_no_nan(ckpt, empty_mask_data, tmp_path):
    out = tmp_path / "c"
    worked(cli("compress", ckpt, "-o", out, "--calib", EMBEDDED, "--val", empty_mask_data, "--distill-epochs", 0,
               "--no-int8", "-q"))
    files = [p for p in out.rglob("*.json")]
    assert (out / "report.json") in files
    for p in files:
        _no_nan_tokens(p.read_text(), str(p.relative_to(out)))


@pytest.mark.slow
def test_train_json_stdout_has_no_nan(empty_mask_data, tmp_path):
    d = shutil.copytree(empty_mask_data, tmp_path / "d")
    r = cli("train", d, "-o", tmp_path / "r", "--variant", "tiny", "--size", 64, "--epochs", 1, "--batch-size", 2,
            "--json", "-q")
    worked(r)
    _no_nan_tokens(r.stdout, "train --json")
    for p in (tmp_path / "r").rglob("*.json"):
        _no_nan_tokens(p.read_text(), p.name)
