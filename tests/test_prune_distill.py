import copy
import json

import pytest
import torch

from edgeseg.distill import DistillConfig, distill, init_from_teacher, make_loss
from edgeseg.errors import ConfigError, ModelError
from edgeseg.model.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from edgeseg.model.variants import build_model
from edgeseg.prune import PruneConfig, count_macs_params, prune, widths
from edgeseg.runtime.preprocess import Preprocess
from edgeseg.train.loop import TrainConfig


@pytest.fixture
def calib():
    return torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_prune_removes_channels_and_reloads_without_pruning_code(tmp_path, calib, importance):
    m = build_model("b0").eval()
    before = widths(m)
    p, rep = prune(copy.deepcopy(m), PruneConfig(ratio=0.5, decoder_ratio=0.75, importance=importance), calib=calib)
    w = rep["widths"]
    assert w["folded"] and w["decoder"] == 64
    assert all(a == b // 2 for sa, sb in zip(w["mlp"], before["mlp"]) for a, b in zip(sa, sb))
    assert all(x % 8 == 0 for s in w["mlp"] for x in s)
    assert rep["params_after"] < rep["params_before"] and rep["macs_after"] < rep["macs_before"]
    save_checkpoint(p, CheckpointMeta(preprocess=Preprocess(height=64, width=64)), tmp_path / "pruned")
    cfg = json.loads((tmp_path / "pruned/config.json").read_text())
    assert cfg["edgeseg_widths"]["decoder"] == 64
    q, _ = load_checkpoint(tmp_path / "pruned")  # rebuilt from config + safetensors only
    with torch.no_grad():
        assert torch.equal(q(pixel_values=calib).logits, p(pixel_values=calib).logits)


@pytest.mark.slow  # an end-to-end run: in the full suite, not the fast subset
def test_prune_target_macs_and_per_stage(calib):
    m = build_model("b0").eval()
    _, rep = prune(copy.deepcopy(m), PruneConfig(ratio=0.9, target_macs=0.8, steps=6), calib=calib)
    assert rep["macs_after"] <= 0.8 * rep["macs_before"]
    _, rep2 = prune(copy.deepcopy(m), PruneConfig(stage_ratios=(0.0, 0.0, 0.5, 0.5), decoder_ratio=0.0), calib=calib)
    assert rep2["widths"]["mlp"][0] == [128, 128] and rep2["widths"]["mlp"][3] == [512, 512]
    with pytest.raises(ConfigError, match="needs 4 values"):
        prune(copy.deepcopy(m), PruneConfig(stage_ratios=(0.5,)), calib=calib)


def test_prune_config_validation():
    with pytest.raises(ConfigError):
        PruneConfig(ratio=1.5)
    with pytest.raises(ConfigError, match="importance"):
        PruneConfig(importance="random")


def test_widths_mismatch_is_a_clear_error(tmp_path, calib):
    p, _ = prune(build_model("tiny").eval(), PruneConfig(ratio=0.5), calib=calib)
    save_checkpoint(p, CheckpointMeta(preprocess=Preprocess(height=64, width=64)), tmp_path / "x")
    cfg = json.loads((tmp_path / "x/config.json").read_text())
    cfg["edgeseg_widths"]["decoder"] = 8
    (tmp_path / "x/config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="do not match the recorded widths"):
        load_checkpoint(tmp_path / "x")


def test_distillation_loss_prefers_the_teacher():
    teacher = build_model("tiny", seed=1).eval()
    x = torch.randn(2, 3, 64, 64)
    y = torch.zeros(2, 64, 64, dtype=torch.long)
    loss = make_loss(teacher, DistillConfig(alpha=1.0), None)
    with torch.no_grad():
        t_logits = teacher(pixel_values=x).logits
    assert loss(t_logits, x, y) < loss(-t_logits, x, y)
    assert loss(t_logits, x, y).abs() < 1e-5  # pure KL to itself


def test_init_from_teacher_copies_matching_tensors():
    t = build_model("b0", seed=1)
    s = build_model("b0", seed=2, depths=[1, 1, 1, 1])
    n = init_from_teacher(s, t)
    assert n > 50
    assert torch.equal(s.segformer.stages[0].patch_embeddings.proj.weight, t.segformer.stages[0].patch_embeddings.proj.weight)


@pytest.mark.slow  # an end-to-end run: in the full suite, not the fast subset
def test_distill_pruned_student_end_to_end(tiny_ckpt, embedded, tmp_path):
    teacher, meta = load_checkpoint(tiny_ckpt)
    calib = torch.randn(2, 3, 64, 64)
    student, _ = prune(copy.deepcopy(teacher), PruneConfig(ratio=0.5, decoder_ratio=0.5), calib=calib)
    cfg = TrainConfig(data=str(embedded), out=str(tmp_path / "s"), size=64, epochs=2, batch_size=16,
                      warmup_steps=1, progress=False, classes=tuple(meta.classes))
    announced = []
    out = distill(student.train(), teacher, meta, cfg, DistillConfig(feature_weight=0.1), tiny_ckpt,
                  announce=lambda step_s, steps: announced.append((step_s, steps)))
    # before training, the measured time of a step and the number of steps (40 training images, batches of 16)
    from edgeseg.data.folders import discover

    n_train = len(discover(embedded, "train"))
    assert len(announced) == 1 and announced[0][0] > 0 and announced[0][1] == -(-n_train // 16) * 2
    s, smeta = load_checkpoint(out)
    assert smeta.provenance["distilled_from"]["sha256"]
    assert smeta.training["distill"]["temperature"] == 2.0
    assert widths(s)["decoder"] == widths(student)["decoder"]
    sel = smeta.training["selection"]
    assert sel["kept"] in ("best epoch", "starting point") and sel["best_agreement"] >= 0
    kept_agreement = sel["best_agreement"] if sel["kept"] == "best epoch" else sel["start_agreement"]
    assert kept_agreement >= sel["start_agreement"]  # never ends below where it started
    assert smeta.metrics["agreement"]["mean_dice"] == kept_agreement
    assert 0 <= smeta.metrics["val"]["mean_dice"] <= 1  # Dice against the ground truth
    # a finished distillation is never silently redone or reused
    with pytest.raises(ConfigError, match="overwrite"):
        distill(s.train(), teacher, meta, cfg, DistillConfig(), tiny_ckpt)


def test_distillation_that_hurts_keeps_its_starting_point(tiny_ckpt, embedded, tmp_path, caplog):
    """The student starts as an exact copy of the teacher (agreement 1); a wild learning rate
    makes it agree less (seeded: with some seeds the tiny model collapses to the teacher's own
    all-background masks on every image, a tie, and the epoch is kept), so the starting point must
    be kept, and said so."""
    torch.manual_seed(0)  # dropout draws from the global generator: fixed, not whatever ran before
    teacher, meta = load_checkpoint(tiny_ckpt)
    student = copy.deepcopy(teacher)
    start = {k: v.clone() for k, v in student.state_dict().items()}
    cfg = TrainConfig(data=str(embedded), out=str(tmp_path / "s"), size=64, epochs=1, batch_size=16, lr=0.5,
                      warmup_steps=0, progress=False, classes=tuple(meta.classes))
    with caplog.at_level("WARNING", logger="edgeseg.distill"):
        out = distill(student.train(), teacher, meta, cfg, DistillConfig(alpha=0.0), tiny_ckpt)
    kept, kmeta = load_checkpoint(out)
    sel = kmeta.training["selection"]
    assert sel["start_agreement"] == 1.0 and sel["best_agreement"] < 1.0 and sel["kept"] == "starting point"
    assert all(torch.equal(v, start[k]) for k, v in kept.state_dict().items())
    assert "keeping the starting student" in caplog.text


def _pruned_widths(path):
    m, _ = load_checkpoint(path)
    return widths(m)


@pytest.mark.slow
def test_prune_and_distill_commands(tiny_ckpt, embedded, tmp_path):
    from conftest import run_cli

    for cmd in ("prune", "distill"):
        h = run_cli(cmd, "--help")
        assert h.returncode == 0 and "Example: edgeseg " + cmd in h.stdout and "Default" in h.stdout
    r = run_cli("prune", tiny_ckpt, "-o", tmp_path / "p", "--ratio", "0.5", "--decoder-ratio", "0.5",
                "--calib", embedded, "--calib-split", "calibration", "--calib-count", "4")
    assert r.returncode == 0, r.stderr
    assert "params" in r.stdout and "checkpoint:" in r.stdout
    before, after = _pruned_widths(tiny_ckpt), _pruned_widths(tmp_path / "p")
    assert after["decoder"] < before["decoder"] and after["folded"]
    r = run_cli("prune", tiny_ckpt, "-o", tmp_path / "p")  # an earlier output: refused without --overwrite
    assert r.returncode != 0 and "--overwrite" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("prune", tiny_ckpt, "-o", tiny_ckpt / "inside")
    assert r.returncode != 0 and "input" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("distill", tiny_ckpt, tmp_path / "p", "-o", tmp_path / "d", "--train", embedded,
                "--train-split", "train", "--val-split", "val", "--epochs", "1", "--batch-size", "16", "-q")
    assert r.returncode == 0, r.stderr
    assert "kept the " in r.stdout and "agreement with the teacher" in r.stdout
    _, dmeta = load_checkpoint(tmp_path / "d")
    assert dmeta.training["selection"]["kept"] in ("best epoch", "starting point")
    assert _pruned_widths(tmp_path / "d") == after


def test_depth_pruning_keeps_most_useful_blocks_and_reloads(tmp_path, calib):
    m = build_model("b0").eval()
    p, rep = prune(copy.deepcopy(m), PruneConfig(ratio=0.0, decoder_ratio=0.0, depths=(1, 2, 1, 1)), calib=calib)
    assert [len(s.blocks) for s in p.segformer.stages] == [1, 2, 1, 1] and p.config.depths == [1, 2, 1, 1]
    st0 = rep["dropped_blocks"]["stage0"]
    assert st0["kept"] == [max(range(2), key=lambda b: st0["scores"][b])]
    assert rep["params_after"] < rep["params_before"]
    save_checkpoint(p, CheckpointMeta(preprocess=Preprocess(height=64, width=64)), tmp_path / "d")
    q, _ = load_checkpoint(tmp_path / "d")
    with torch.no_grad():
        assert torch.equal(q(pixel_values=calib).logits, p(pixel_values=calib).logits)
    with pytest.raises(ConfigError, match="at least one block"):
        PruneConfig(depths=(0, 1, 1, 1))


@pytest.mark.slow
def test_accuracy_guard_picks_the_strongest_pruning_step_it_accepts(calib):
    m = build_model("b0").eval()
    calls = []

    def guard(model):  # accept the first two steps only
        calls.append(1)
        return len(calls) <= 2

    p, rep = prune(copy.deepcopy(m), PruneConfig(ratio=0.9, target_macs=0.2, steps=5), calib=calib, guard=guard)
    log = rep["guard"]
    assert [g["accepted"] for g in log] == [True, True, False]
    assert rep["macs_after"] == log[1]["macs"] > log[2]["macs"]
    _, free = prune(copy.deepcopy(m), PruneConfig(ratio=0.9, target_macs=0.2, steps=5), calib=calib)
    assert free["macs_after"] < rep["macs_after"]


def test_timing_training_steps_leaves_the_student_and_the_rng_alone():
    from edgeseg.compress.progress import time_train_steps

    m = build_model("tiny").train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 2, (2, 64, 64))
    torch.manual_seed(3)
    expected = torch.rand(1)
    torch.manual_seed(3)
    seconds = time_train_steps(m, lambda logits, x, y: torch.nn.functional.cross_entropy(
        torch.nn.functional.interpolate(logits, size=y.shape[-2:]), y), x, y)
    assert seconds > 0 and torch.equal(torch.rand(1), expected)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(p.grad is None for p in m.parameters())


def test_iterative_pruning_shows_a_progress_bar(calib, capsys):
    m = build_model("tiny").eval()
    prune(copy.deepcopy(m), PruneConfig(ratio=0.9, target_macs=0.5, steps=3), calib=calib, progress=True)
    assert "prune: steps" in capsys.readouterr().err
    prune(copy.deepcopy(m), PruneConfig(ratio=0.9, target_macs=0.5, steps=3), calib=calib)
    assert "prune: steps" not in capsys.readouterr().err
