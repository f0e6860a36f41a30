"""The search of edgeseg compress: candidates, time budget, caching, Pareto report."""

import json

import pytest

from edgeseg.compress.pipeline import Compressor
from edgeseg.compress.recipe import Recipe
from edgeseg.compress.search import candidates


def recipe(embedded, **kw):
    d = str(embedded)
    base = dict(calib=d, calib_split="calibration", calib_count=8, val=d, val_split="val", train=d,
                train_split="train", distill_epochs=0, int8=False, runs=3, warmup=1, threads=2)
    base.update(kw)
    return Recipe(**base)


def test_candidates_go_from_gentle_to_aggressive(embedded):
    r = recipe(embedded, distill_epochs=2, int8=True)
    cands = candidates(r, [2, 2, 2, 2])
    assert [c.name for c in cands] == ["fold", "prune25", "prune50", "prune75", "prune50-depth1111"]
    assert cands[0].stages == ("export", "quantize")
    assert all(c.stages == ("prune", "distill", "export", "quantize") for c in cands[1:])
    ratios = [c.overrides["prune_ratio"] for c in cands[1:4]]
    assert ratios == sorted(ratios)
    assert cands[-1].overrides["depths"] == (1, 1, 1, 1)
    # a teacher with one block per stage has no depth candidate; no distillation, no int8: fewer stages
    cands = candidates(recipe(embedded), [1, 1])
    assert [c.name for c in cands][-1] == "prune75" and cands[1].stages == ("prune", "export")
    # the one recipe (no search): its own chain, flat
    one = candidates(recipe(embedded, search=False, distill_epochs=1), [2, 2])
    assert len(one) == 1 and one[0].flat and one[0].stages == ("prune", "distill", "export")


@pytest.mark.slow
def test_search_picks_fastest_point_meeting_budgets_and_resumes(embedded, tmp_path, caplog):
    out = tmp_path / "s"
    rep = Compressor(embedded / "teacher", out, recipe(embedded), progress=False).run()
    pts = rep["points"]
    assert {p["candidate"] for p in pts} == {"fold", "prune25", "prune50", "prune75", "prune50-depth1111"}
    assert all(p["fidelity"]["images"] > 0 and p["p50_ms"] > 0 for p in pts)
    fold = next(p for p in pts if p["candidate"] == "fold")
    assert fold["met"] and fold["fidelity"]["agreement"] > 0.999 and fold["fidelity"]["lost_lesions"] == 0
    d = rep["budgets"]
    assert d["met"] and d["point"]["met"]
    assert d["point"]["p50_ms"] == min(p["p50_ms"] for p in pts if p["met"])  # the fastest within budget
    from edgeseg.runtime.bundle import read_bundle

    b = read_bundle(out / "bundle").manifest["budgets"]
    assert b["met"] and b["chosen"] == d["point"]["point"] and b["over_budget"] is False
    assert b["measured"]["agreement"] == d["point"]["fidelity"]["agreement"]
    md = (out / "report.md").read_text()
    assert "## Budgets and every candidate" in md and "| point | runner | p50 ms |" in md
    assert md.count("/fp32 |") + md.count("/fp32** (chosen) |") == len(pts)
    assert "(chosen)" in md and "## Search" in md
    assert (out / "agreement_vs_latency.png").stat().st_size > 1000
    st = json.loads((out / "state.json").read_text())
    assert set(st["candidates"]) == {"fold", "prune25", "prune50", "prune75", "prune50-depth1111"}
    assert (out / "candidates/prune25/prune").is_dir() and (out / "candidates/fold/export").is_dir()
    # cached per candidate: a second run (tighter budgets, which never redo a stage) measures nothing again
    with caplog.at_level("INFO", logger="edgeseg.compress.pipeline"):
        rep2 = Compressor(embedded / "teacher", out, recipe(embedded, min_agreement=0.999), progress=False).run()
    assert "reusing stage prune from a previous identical run" in caplog.text
    assert "score and time" not in caplog.text  # no stage started
    assert [p["p50_ms"] for p in rep2["points"]] == [p["p50_ms"] for p in pts]
    assert rep2["budgets"]["point"]["fidelity"]["agreement"] >= 0.999


@pytest.mark.slow
def test_time_budget_skips_candidates_that_do_not_fit(embedded, tmp_path):
    out = tmp_path / "t"
    rep = Compressor(embedded / "teacher", out, recipe(embedded, time_budget=0.001), progress=False).run()
    log = rep["budgets"]["search"]["candidates"]
    assert log[0]["candidate"] == "fold" and log[0]["status"] == "measured"  # the lossless tier always runs
    assert all(c["status"] == "skipped" and "time budget" in c["reason"] for c in log[1:])
    assert {p["candidate"] for p in rep["points"]} == {"fold"}
    assert "skipped; time budget" in (out / "report.md").read_text()


@pytest.mark.slow
def test_each_distilled_candidate_is_planned_from_its_own_measured_step(embedded, tmp_path, caplog, monkeypatch):
    """The epochs a candidate's distillation gets come from a step of *its* pruned student timed
    after pruning (not a guess from the teacher), and are kept in the state for a rerun."""
    from edgeseg.compress import search as S

    measured = []
    real = S.Search.measure_step

    def spy(self, path, cand):
        assert (path / "model.safetensors").is_file() and path.parent.name == cand.name  # the pruned student
        step = real(self, path, cand)
        measured.append((cand.name, step, self.c.estimate.train_step_s))
        return step

    monkeypatch.setattr(S.Search, "measure_step", spy)
    out = tmp_path / "d"
    with caplog.at_level("INFO", logger="edgeseg.compress.pipeline"):
        rep = Compressor(embedded / "teacher", out, recipe(embedded, distill_epochs=2, time_budget=30),
                         progress=False).run()
    assert [m[0] for m in measured] == ["prune25", "prune50", "prune75", "prune50-depth1111"]
    assert all(step > 0 and step == used for _, step, used in measured)
    assert caplog.text.count("a distillation step of this student takes") == 4
    st = json.loads((out / "state.json").read_text())
    for name in ("prune25", "prune50", "prune75", "prune50-depth1111"):
        h = st["candidates"][name]
        assert 1 <= h["epochs"] <= 2 and set(h["stages"]) == {"prune", "distill", "export"}
    log = {c["candidate"]: c for c in rep["budgets"]["search"]["candidates"]}
    assert all(log[n]["status"] == "measured" for n in log)
    # a rerun reuses every stage and measures no step again
    measured.clear()
    Compressor(embedded / "teacher", out, recipe(embedded, distill_epochs=2, time_budget=30), progress=False).run()
    assert measured == []
