import json
from pathlib import Path

import pytest

from edgeseg.compress.pipeline import Compressor, Recipe
from edgeseg.errors import ConfigError
from edgeseg.runtime.bundle import read_bundle
from edgeseg.runtime.segmenter import Segmenter


def recipe(embedded, **kw):
    d = str(embedded)
    base = dict(calib=d, calib_split="calibration", calib_count=8, val=d, val_split="val", train=d,
                train_split="train", distill_epochs=1, batch_size=16, runs=3, warmup=1, max_dice_drop=0.5,
                prune_ratio=0.5, decoder_ratio=0.5, search=False, max_image_drop=1.0, min_agreement=0.0,
                max_lost_lesions=None)
    base.update(kw)
    return Recipe(**base)


@pytest.fixture(scope="module")
def compressed(tiny_ckpt, embedded, tmp_path_factory):
    out = tmp_path_factory.mktemp("compress") / "out"
    rep = Compressor(tiny_ckpt, out, recipe(embedded), progress=False).run()
    return out, rep


def test_compress_writes_bundle_report_and_every_stage(compressed):
    out, rep = compressed
    names = [s["name"] for s in rep["stages"]]
    assert names == ["teacher", "fold", "prune", "distill", "export", "quantize"]
    for s in rep["stages"]:
        assert s["dice"] is not None and s["p50_ms"] > 0 and s["size_mb"] > 0
    fold = rep["stages"][1]
    assert abs(fold["dice"] - rep["stages"][0]["dice"]) < 1e-6  # folding is exact
    assert fold["gflops"] < rep["stages"][0]["gflops"]
    prune = rep["stages"][2]
    assert prune["params"] < fold["params"]
    teacher = rep["stages"][0]  # the reference: no meaningless zero drop or "worst image" against itself
    assert teacher["dice_drop"] is None and teacher["worst_image"] is None
    assert all(s["dice_drop"] is not None and s["worst_image"] for s in rep["stages"][1:])
    md = (out / "report.md").read_text()
    assert "| teacher |" in md and "| reference | reference |" in md
    assert "vs the teacher:" in md and ("budget of 0.5 Dice MET" in md or "budget of 0.5 Dice MISSED" in md)
    assert "p90 ms" in md and "spread ms" in md
    b = read_bundle(out / "bundle")
    m = b.manifest
    assert m["precision"] == "int8"
    assert m["calibration"]["count"] == 8 and len(m["calibration"]["sha256"]) == 64
    assert m["recipe"]["prune_ratio"] == 0.5
    assert [s["name"] for s in m["stages"]] == names
    par = m["parity"]  # the INT8 model's own check against its FP32 source, not the export's block
    assert par["against"] == "fp32 source" and par["measured"] and par["images"] == 8
    assert 0 < par["worst_image_agreement"] <= par["mask_agreement"] <= 1
    assert (out / "report.md").is_file() and (out / "dice_vs_latency.png").stat().st_size > 1000
    assert json.loads((out / "report.json").read_text())["machine"]["cpu"]


def test_compress_measures_calibration_per_stage_and_refits_it_on_the_int8_graph(compressed):
    """Compression changes calibration: every stage's ECE is measured on validation and shown in
    the report; the shipped INT8 bundle's temperature and uncertainty profile are fitted on the
    INT8 graph itself (not inherited from its FP32 source)."""
    out, rep = compressed
    eces = {s["name"]: s["notes"]["calibration"]["ece"] for s in rep["stages"]}
    assert set(eces) == {s["name"] for s in rep["stages"]} and all(0 <= e <= 1 for e in eces.values())
    assert len(set(eces.values())) > 1  # the stages' models differ, so do their calibrations
    assert "Calibration per stage" in (out / "report.md").read_text()
    m = read_bundle(out / "bundle").manifest
    t = m["temperature"]
    assert t["value"] > 0 and t["fitted_on"] == {**t["fitted_on"], "what": "validation images",
                                                 "images": m["metrics"]["validation"]["images"]}
    assert m["uncertainty"] and m["precision"] == "int8"
    seg = Segmenter(out / "bundle")
    assert seg.temperature == t["value"]


def test_compress_resumes_without_redoing_stages(compressed, tiny_ckpt, embedded, caplog):
    out, rep = compressed
    before = json.loads((out / "state.json").read_text())
    with caplog.at_level("INFO", logger="edgeseg.compress.pipeline"):
        rep2 = Compressor(tiny_ckpt, out, recipe(embedded), progress=False).run()
    for name in ("teacher", "fold", "prune", "distill", "export", "quantize"):
        assert f"reusing stage {name} from a previous identical run" in caplog.text
    after = json.loads((out / "state.json").read_text())
    assert before["stages"] == after["stages"]
    assert [s["dice"] for s in rep2["stages"]] == [s["dice"] for s in rep["stages"]]


def test_compress_refuses_other_recipe_on_same_output(compressed, tiny_ckpt, embedded):
    out, _ = compressed
    with pytest.raises(ConfigError, match="different recipe") as e:
        Compressor(tiny_ckpt, out, recipe(embedded, prune_ratio=0.25, runs=4), progress=False)
    assert "prune_ratio: 0.5 -> 0.25" in str(e.value) and "runs: 3 -> 4" in str(e.value)
    assert "decoder_ratio" not in str(e.value)


@pytest.mark.slow
def test_interrupted_compress_leaves_no_bundle_and_resumes(tiny_ckpt, embedded, tmp_path, monkeypatch, caplog):
    import edgeseg.compress.guard as G
    import edgeseg.compress.pipeline as C

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(G, "quantize_guarded", boom)
    with pytest.raises(KeyboardInterrupt):
        Compressor(tiny_ckpt, tmp_path / "o", recipe(embedded, distill_epochs=0), progress=False).run()
    assert not (tmp_path / "o/bundle").exists()
    st = json.loads((tmp_path / "o/state.json").read_text())
    assert set(st["stages"]) == {"teacher", "fold", "prune", "export"}
    monkeypatch.undo()
    # resume, on a machine where INT8 runs slower than FP32 (made so: INT8 timings x 100)
    measure = C.Compressor.measure

    def slow_int8(self, name, *a, **k):
        res = measure(self, name, *a, **k)
        if name == "quantize":
            res.p50_ms *= 100
        return res

    monkeypatch.setattr(C.Compressor, "measure", slow_int8)
    with caplog.at_level("INFO", logger="edgeseg.compress.pipeline"):
        rep = Compressor(tiny_ckpt, tmp_path / "o", recipe(embedded, distill_epochs=0), progress=False).run()
    assert "reusing stage export from a previous identical run" in caplog.text
    assert "reusing stage quantize" not in caplog.text
    assert rep["stages"][-1]["name"] == "quantize" and read_bundle(tmp_path / "o/bundle").precision == "int8"
    st = json.loads((tmp_path / "o/state.json").read_text())
    assert "INT8 is slower than FP32" in st["stages"]["quantize"]["notes"]["warning"]  # recorded with the stage
    # a third run reuses every stage and still says INT8 is slower
    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level("INFO", logger="edgeseg.compress.pipeline"):
        rep = Compressor(tiny_ckpt, tmp_path / "o", recipe(embedded, distill_epochs=0), progress=False).run()
    assert "reusing stage quantize from a previous identical run" in caplog.text
    assert "INT8 is slower than FP32" in caplog.text
    assert "INT8 is slower than FP32" in (tmp_path / "o/report.md").read_text()
    from edgeseg.compress.report import terminal_table

    assert "warning: quantize: INT8 is slower than FP32" in terminal_table(rep)


@pytest.mark.slow
def test_tensorrt_target_gives_symmetric_qdq(tiny_ckpt, embedded, tmp_path):
    from edgeseg.quantize.static import check_tensorrt_qdq

    Compressor(tiny_ckpt, tmp_path / "t", recipe(embedded, distill_epochs=0, target="tensorrt",
                                                 max_dice_drop=None), progress=False).run()
    b = read_bundle(tmp_path / "t/bundle")
    assert check_tensorrt_qdq(b.model_file) == []


def test_recipe_file(tmp_path, embedded):
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"prune_ratio": 0.3, "target": "tensorrt"}))
    r = Recipe.from_file(p, calib=str(embedded))
    assert r.prune_ratio == 0.3 and r.target == "tensorrt" and r.calib == str(embedded)
    p.write_text(json.dumps({"prune_ration": 0.3}))
    with pytest.raises(ConfigError, match="unknown key"):
        Recipe.from_file(p)
    with pytest.raises(ConfigError, match="--target") as e:
        Recipe(target="tpu")
    assert "cpu, tensorrt, cpu-weights" in str(e.value)  # the quantize package's table
    p.write_text(json.dumps({"prune_ratio": "half"}))
    with pytest.raises(ConfigError, match="prune_ratio must be float"):
        Recipe.from_file(p)
    p.write_text(json.dumps({"depths": [1, 1, 2, 1], "int8": False}))
    assert Recipe.from_file(p).depths == (1, 1, 2, 1)
    p.write_text("{bad")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Recipe.from_file(p)
    with pytest.raises(ConfigError, match="finite"):
        Recipe(max_dice_drop=float("nan"))
    r = Recipe(prune_ratio=0.3, alpha=0.5)
    assert r.diff(r.to_dict()) == [] and r.diff({**r.to_dict(), "alpha": 0.9}) == ["alpha: 0.9 -> 0.5"]
    # a recipe recorded before early stopping and zoom existed trained without them: not the same recipe
    old = {k: v for k, v in r.to_dict().items() if k not in ("distill_patience", "distill_scale_jitter")}
    assert r.diff(old) == ["distill_patience: None -> 3", "distill_scale_jitter: 0.0 -> 0.2"]
    assert Recipe(prune_ratio=0.3, alpha=0.5, distill_patience=None, distill_scale_jitter=0.0).diff(old) == []


def test_headline_says_gain_cost_and_budget():
    from edgeseg.compress.report import headline, terminal_table

    def stage(name, p50, mb, dice, drop):
        return {"name": name, "precision": "fp32", "params": 10, "gflops": 1.0, "size_mb": mb, "p50_ms": p50,
                "p90_ms": p50, "dice": dice, "dice_drop": drop, "notes": {}}

    rep = {"recipe": {"max_dice_drop": 0.01}, "stages": [stage("teacher", 40.0, 16.0, 0.80, None),
                                                         stage("export", 10.0, 4.0, 0.795, 0.005)]}
    h = headline(rep)
    assert "4.0x faster (40.0 -> 10.0 ms p50)" in h and "4.0x smaller" in h and "+0.0050 Dice" in h
    assert "budget of 0.01 Dice MET" in h
    rep["stages"][1]["dice"] = 0.75
    assert "MISSED by 0.0400" in headline(rep)
    rep["recipe"]["max_dice_drop"] = None
    assert "no Dice budget was set" in headline(rep)
    table = terminal_table(rep).splitlines()
    assert "reference" in next(ln for ln in table if ln.startswith("teacher"))


def test_guard_returns_sensitive_blocks_to_float_until_budget_holds():
    from edgeseg.compress.guard import guard_fallback

    # synthetic model: INT8 of block "b" costs 0.05 Dice, "c" 0.02, "a" nothing; FP32 Dice 0.90
    cost = {"a": 0.0, "b": 0.05, "c": 0.02}
    calls = []

    def dice_of(float_blocks):
        calls.append(tuple(float_blocks))
        return 0.90 - sum(v for k, v in cost.items() if k not in float_blocks)

    kept, dice, notes = guard_fallback(list(cost), dice_of, teacher_dice=0.91, fp32_dice=0.90, budget=0.031)
    assert kept == ["b"] and abs(dice - 0.88) < 1e-9
    assert notes["float_blocks"][0]["block"] == "b" and abs(notes["sensitivity"]["b"] - 0.05) < 1e-9
    assert "budget_missed_by" not in notes
    kept, dice, notes = guard_fallback(list(cost), dice_of, teacher_dice=0.91, fp32_dice=0.90, budget=0.001)
    assert kept == ["b", "c"] and abs(notes["budget_missed_by"] - 0.009) < 1e-9
    assert abs(notes["fp32_over_budget_by"] - 0.009) < 1e-9
    n = len(calls)
    kept, _, _ = guard_fallback(list(cost), dice_of, teacher_dice=0.91, fp32_dice=0.90, budget=None)
    assert kept == [] and len(calls) == n + 1  # no budget: one INT8 build, no search


def _fig(mean_drop, agreement, lost):
    return {"mean_drop": mean_drop, "image_drop": mean_drop, "agreement": agreement, "lost_lesions": lost,
            "lesions": 20}


def test_guard_keeps_every_budget_not_only_the_mean():
    """Synthetic model whose INT8 keeps the mean Dice but loses lesions: block "b" loses two
    lesions, "c" one and costs agreement, "a" nothing. The Dice-only guard would accept the all-INT8
    model; the every-budget guard returns "b" then "c" to float until no lesion is lost."""
    from edgeseg.compress.guard import guard_budgets
    from edgeseg.measure.budgets import Budgets

    lost = {"a": 0, "b": 2, "c": 1}
    calls = []

    def score_of(float_blocks):
        calls.append(tuple(float_blocks))
        q = [k for k in lost if k not in float_blocks]
        return 0.90, _fig(0.001, 0.99 - (0.05 if "c" in q else 0.0), sum(lost[k] for k in q))

    budgets = Budgets()
    kept, dice, notes = guard_budgets(list(lost), score_of, budgets, _fig(0.0, 1.0, 0), 0.901, 0.901)
    assert kept == ["b", "c"] and notes["rule"] == "every budget"
    assert set(notes["missed_all_int8"]) == {"min_agreement", "max_lost_lesions"}
    assert notes["sensitivity"]["b"] > notes["sensitivity"]["c"] > notes["sensitivity"]["a"] == 0
    assert notes["float_blocks"][-1]["shortfall_after"] == 0 and "budgets_missed" not in notes
    # all-INT8 within every budget: one build, nothing returned to float
    seen = []

    def fine(fb):
        seen.append(tuple(fb))
        return 0.9, _fig(0.0, 0.99, 0)

    kept, _, notes = guard_budgets(list(lost), fine, budgets, _fig(0.0, 1.0, 0), 0.9, 0.9)
    assert kept == [] and notes["missed_all_int8"] == [] and seen == [()]
    # a budget no block can win back: said, not hidden
    kept, _, notes = guard_budgets(list(lost), lambda fb: (0.9, _fig(0.0, 0.99, 3)), budgets, _fig(0.0, 1.0, 0),
                                   0.9, 0.9)
    assert kept == [] and notes["budgets_missed"] == ["max_lost_lesions"]


def test_guard_answers_the_closest_combination_it_tried():
    """Each of "a" and "b" alone wins back a lesion, both together lose more (a noisy validation
    set can do that): the guard keeps only "a", not the last combination it tried."""
    from edgeseg.compress.guard import guard_budgets
    from edgeseg.measure.budgets import Budgets

    lost = {(): 2, ("a",): 1, ("b",): 1, ("a", "b"): 3}
    kept, _, notes = guard_budgets(["a", "b"], lambda fb: (0.9, _fig(0.0, 0.99, lost[tuple(fb)])), Budgets(),
                                   _fig(0.0, 1.0, 0), 0.9, 0.9)
    assert kept == ["a"] and notes["dropped_blocks"] == ["b"] and notes["budgets_missed"] == ["max_lost_lesions"]
    assert [b["block"] for b in notes["float_blocks"]] == ["a"]


def test_guard_holds_int8_to_its_fp32_model_on_budgets_fp32_already_misses():
    """The FP32 model agrees 0.93 with the teacher and loses 4 lesions (both over budget): INT8
    may not make either worse (agreement >= 0.925, <= 4 lost), while the mean-drop budget it
    meets still holds; block "a" is what loses the fifth lesion."""
    from edgeseg.compress.guard import guard_budgets, int8_bounds
    from edgeseg.measure.budgets import Budgets

    fp32 = _fig(0.0, 0.93, 4)
    bounds, relaxed = int8_bounds(Budgets(), fp32)
    assert relaxed == {"min_agreement": 0.925, "max_lost_lesions": 4} and bounds.max_dice_drop == 0.01

    def score_of(fb):
        return 0.899, _fig(0.002, 0.928, 4 if "a" in fb else 5)

    kept, dice, notes = guard_budgets(["a", "b"], score_of, Budgets(), fp32, 0.90, 0.90)
    assert kept == ["a"] and "no worse than FP32" in notes["rule"] and notes["relaxed"] == relaxed
    assert "budgets_missed" not in notes


@pytest.mark.slow
def test_guard_in_pipeline_records_its_decisions(tiny_ckpt, embedded, tmp_path, caplog):
    r = recipe(embedded, distill_epochs=0, max_dice_drop=0.0)
    rep = Compressor(tiny_ckpt, tmp_path / "g", r, progress=False).run()
    q = rep["stages"][-1]["notes"]
    assert {"dice_all_int8", "dice_fp32", "float_blocks", "missed_all_int8"} <= set(q)
    assert q["rule"].startswith("every budget") and q["budgets_guarded"] == r.budgets().to_dict()
    m = read_bundle(tmp_path / "g/bundle").manifest
    assert m["quantization"]["float_blocks"] == q["float_blocks"]
    # other budgets on a rerun: every other stage is reused, the INT8 guard runs again under them
    with caplog.at_level("INFO", logger="edgeseg.compress.pipeline"):
        rep2 = Compressor(tiny_ckpt, tmp_path / "g", recipe(embedded, distill_epochs=0, max_dice_drop=0.0,
                                                            min_agreement=0.5), progress=False).run()
    assert "reusing stage export" in caplog.text and "quantize: the budgets changed" in caplog.text
    assert rep2["stages"][-1]["notes"]["budgets_guarded"]["min_agreement"] == 0.5


def test_guard_does_not_chase_noise_when_fp32_already_missed_the_budget():
    from edgeseg.compress.guard import QUANT_TOL, guard_fallback

    def dice_of(float_blocks):  # INT8 costs 0.001 in total, below QUANT_TOL
        return 0.80 - (0.0 if "a" in float_blocks else 0.001)

    kept, dice, notes = guard_fallback(["a", "b"], dice_of, teacher_dice=0.85, fp32_dice=0.80, budget=0.01)
    assert QUANT_TOL > 0.001 and kept == [] and abs(dice - 0.799) < 1e-9
    assert abs(notes["fp32_over_budget_by"] - 0.04) < 1e-9 and abs(notes["budget_missed_by"] - 0.041) < 1e-9


@pytest.mark.slow
def test_weight_only_int8_target(tiny_ckpt, embedded, tmp_path):
    """cpu-weights: INT8 weights in a ~4x smaller file, float compute, ORT told to fold the DQs."""
    import numpy as np

    from edgeseg.runtime import Segmenter

    rep = Compressor(tiny_ckpt, tmp_path / "w", recipe(embedded, distill_epochs=0, target="cpu-weights"),
                     progress=False).run()
    exp, q = rep["stages"][-2], rep["stages"][-1]
    assert q["precision"] == "int8" and q["size_mb"] < 0.8 * exp["size_mb"]  # tiny model: many small layers stay float
    b = read_bundle(tmp_path / "w/bundle")
    assert b.manifest["onnxruntime"]["session_config"] == {"session.disable_quant_qdq": "1"}
    seg, ref = Segmenter(tmp_path / "w/bundle"), Segmenter(tmp_path / "w/stages/export")
    assert seg.runner.session_config == {"session.disable_quant_qdq": "1"}
    x = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32)
    a, r = seg.infer(x)["logits"], ref.infer(x)["logits"]
    assert np.abs(a - r).max() < 0.05 * np.abs(r).max()
    # the bare ONNX file carries the same request in its metadata
    bare = Segmenter(b.model_file)
    assert bare.runner.session_config == {"session.disable_quant_qdq": "1"}
    assert "weight-only" in (tmp_path / "w/report.md").read_text()


# --------------------------------------------------------------------------- the output folder
def quick(embedded, **kw):
    """The smallest honest run: no distillation, no INT8 (stages teacher, fold, prune, export)."""
    return recipe(embedded, distill_epochs=0, int8=False, max_dice_drop=None, runs=2, warmup=0, **kw)


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_compress_refuses_foreign_folders_and_inputs_before_any_work(tiny_ckpt, embedded, tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("not edgeseg's")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="files edgeseg did not write"):
            Compressor(tiny_ckpt, foreign, quick(embedded), progress=False, overwrite=overwrite)
        assert _tree(foreign) == {"mine.txt": b"not edgeseg's"}
    # an earlier output of another command is not a compress output either
    other = tmp_path / "pred"
    other.mkdir()
    (other / ".edgeseg-output.json").write_text(json.dumps({"kind": "predict"}))
    with pytest.raises(ConfigError, match="an edgeseg predict output"):
        Compressor(tiny_ckpt, other, quick(embedded), progress=False, overwrite=True)
    # an output that is, lies inside or contains an input (teacher, data)
    for out, how in ((tiny_ckpt, "is the input"), (tiny_ckpt / "c", "lies inside"),
                     (embedded / "images" / "c", "lies inside"), (tiny_ckpt.parent, "contains")):
        before = _tree(out.parent)
        with pytest.raises(ConfigError, match=how):
            Compressor(tiny_ckpt, out, quick(embedded), progress=False, overwrite=True)
        assert _tree(out.parent) == before
    train_copy = tmp_path / "train"
    with pytest.raises(ConfigError, match="the input"):
        Compressor(tiny_ckpt, train_copy / "out", quick(embedded, train=str(train_copy)), progress=False)


@pytest.mark.slow
def test_killed_compress_leaves_no_bundle_and_the_next_run_resumes(tiny_ckpt, embedded, tmp_path, monkeypatch,
                                                                    caplog):
    import edgeseg.export.pipeline as E

    out = tmp_path / "o"

    def killed(*a, **k):
        raise RuntimeError("killed in the middle of the export stage")

    monkeypatch.setattr(E, "export_bundle", killed)
    with pytest.raises(RuntimeError, match="killed"):
        Compressor(tiny_ckpt, out, quick(embedded), progress=False).run()
    monkeypatch.undo()
    assert not (out / "bundle").exists() and not (out / "stages/export").exists()
    assert set(json.loads((out / "state.json").read_text())["stages"]) == {"teacher", "fold", "prune"}
    leftover = tmp_path / ".o.tmp-killed"  # what a killed --overwrite run leaves beside OUT
    (leftover / "stages").mkdir(parents=True)
    with caplog.at_level("INFO", logger="edgeseg.compress.pipeline"):
        rep = Compressor(tiny_ckpt, out, quick(embedded), progress=False).run()
    for name in ("teacher", "fold", "prune"):
        assert f"reusing stage {name} from a previous identical run" in caplog.text
    assert "reusing stage export" not in caplog.text
    assert [s["name"] for s in rep["stages"]] == ["teacher", "fold", "prune", "export"]
    assert read_bundle(out / "bundle").precision == "fp32" and not leftover.exists()
    # stage paths are recorded relative to OUT: the folder can be moved and still resumed
    st = json.loads((out / "state.json").read_text())
    assert st["stages"]["prune"]["path"] == "stages/prune" and not Path(st["stages"]["teacher"]["path"]).is_relative_to(out)


@pytest.mark.slow
def test_overwrite_replaces_an_earlier_compress_whole_and_only_at_the_end(tiny_ckpt, embedded, tmp_path,
                                                                          monkeypatch):
    import edgeseg.export.pipeline as E

    out = tmp_path / "o"
    Compressor(tiny_ckpt, out, quick(embedded), progress=False).run()
    (out / "stages/old-only.txt").write_text("from the first run")
    before = _tree(out)
    with pytest.raises(ConfigError, match="prune_ratio: 0.5 -> 0.25") as e:  # changed recipe, no --overwrite
        Compressor(tiny_ckpt, out, quick(embedded, prune_ratio=0.25), progress=False)
    assert "--overwrite" in str(e.value)

    def killed(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(E, "export_bundle", killed)
    with pytest.raises(RuntimeError):
        Compressor(tiny_ckpt, out, quick(embedded, prune_ratio=0.25), progress=False, overwrite=True).run()
    monkeypatch.undo()
    assert _tree(out) == before  # the previous result survives a failed --overwrite
    assert [p.name for p in tmp_path.iterdir()] == ["o"]  # and no temporary folder is left
    rep = Compressor(tiny_ckpt, out, quick(embedded, prune_ratio=0.25), progress=False, overwrite=True).run()
    assert not (out / "stages/old-only.txt").exists()  # replaced whole, not merged
    assert json.loads((out / "state.json").read_text())["recipe"]["prune_ratio"] == 0.25
    assert rep["bundle"] == str(out / "bundle") and read_bundle(out / "bundle").manifest["recipe"]["prune_ratio"] == 0.25
    assert json.loads((out / ".edgeseg-output.json").read_text())["kind"] == "compress"
    assert [p.name for p in tmp_path.iterdir()] == ["o"]


@pytest.mark.slow
def test_compress_says_what_it_does_and_how_long_it_will_take(tiny_ckpt, embedded, tmp_path, capsys):
    Compressor(tiny_ckpt, tmp_path / "o", quick(embedded), progress=True).run()
    err = capsys.readouterr().err
    lines = [ln.strip() for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    plan = next(ln for ln in lines if ln.startswith("compress "))
    assert "teacher, fold, prune, export" in plan and "about" in plan and "on this machine" in plan
    for i, name in enumerate(("teacher", "fold", "prune", "export"), 1):
        start = next(ln for ln in lines if ln.startswith(f"stage {i}/4 {name}:"))
        assert "(about " in start
        assert any(ln.startswith(f"{name} done in ") and "Dice" in ln for ln in lines)
    assert any("scoring" in ln for ln in lines)  # a progress bar over the validation images
    assert not any(ln.startswith(("{", "[")) for ln in lines)  # no raw JSON in the terminal
    # a second, identical run says it reuses every stage; -q (progress=False) prints nothing
    Compressor(tiny_ckpt, tmp_path / "o", quick(embedded), progress=True).run()
    assert "every stage is reused" in capsys.readouterr().err
    Compressor(tiny_ckpt, tmp_path / "o", quick(embedded), progress=False).run()
    assert capsys.readouterr().err == ""


def test_estimates_follow_the_work():
    from edgeseg.compress.progress import Estimate, fmt_seconds

    r = Recipe(distill_epochs=10, batch_size=8, runs=30, warmup=5)
    e = Estimate(per_image_s=0.1, val_images=12, train_images=40, calib_images=16, recipe=r)
    assert e.scoring() == pytest.approx(0.1 * (12 + 5 + 30))
    assert e.distill_steps() == 50
    guessed = e.distill()
    e2 = Estimate(per_image_s=0.1, val_images=12, train_images=40, calib_images=16,
                  recipe=Recipe(distill_epochs=20, batch_size=8, runs=30, warmup=5))
    assert e2.distill() > 1.9 * guessed - 12 * 0.1 * 3  # twice the epochs, about twice the time
    e.train_step_s = 2.0  # measured on the first steps: replaces the guess
    assert e.distill() == pytest.approx(50 * 2.0 + 12 * 12 * 0.1)
    assert all(e.stage(s) > 0 for s in ("teacher", "fold", "prune", "distill", "export", "quantize", "bundle"))
    assert fmt_seconds(42) == "42 s" and fmt_seconds(150) == "2.5 min" and fmt_seconds(None) == "?"


def test_the_demo_job_runs_every_stage():
    from edgeseg.compress.pipeline import STAGES, default_job

    teacher, job = default_job()
    demo = Recipe(**job)
    assert all(stage.enabled(demo) for stage in STAGES)  # honest: every stage runs
    assert demo.int8 and demo.distill_epochs > 0 and demo.max_dice_drop is not None
    assert demo.search and demo.time_budget and demo.min_agreement == 0.95  # the search under the default budgets
