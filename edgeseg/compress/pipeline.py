"""``edgeseg compress``: fold -> prune -> distill -> export -> quantize -> bundle, from one recipe.

Every stage writes plain files under ``OUT/stages/`` (atomically) and is recorded in
``OUT/state.json`` when it finishes, so an interrupted run resumes at the first unfinished stage.
Each stage is scored on the user's labelled validation images (Dice/IoU at original size) and
timed on this machine; the report (Markdown + JSON + PNG) lists what every stage cost in Dice
and gained in latency and size. INT8 is guarded: when its Dice drop exceeds the budget, the
blocks that hurt most are returned to float until the budget holds.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from edgeseg.data import folders as D
from edgeseg.errors import ConfigError
from edgeseg.export.onnx import ExportConfig
from edgeseg.runtime.files import atomic_dir
from edgeseg.model.checkpoint import CheckpointMeta, checkpoint_sha256, load_checkpoint, save_checkpoint
from edgeseg.runners import open_model, torch_segmenter
from edgeseg.runtime.bundle import sha256_file, write_bundle

log = logging.getLogger(__name__)

# INT8 targets: cpu (static QDQ for ONNX Runtime CPU), tensorrt (symmetric QDQ for explicit
# quantization), cpu-weights (INT8 weight storage, float compute: for CPUs where INT8 is not faster)
TARGETS = ("cpu", "tensorrt", "cpu-weights")
STAGES = ("teacher", "fold", "prune", "distill", "export", "quantize", "bundle")


@dataclass(frozen=True)
class Recipe:
    # data
    calib: str | None = None
    calib_split: str | None = None
    calib_count: int = 64
    val: str | None = None
    val_split: str | None = None
    train: str | None = None  # labelled images for distillation (default: the teacher's training data)
    train_split: str | None = None
    # prune
    prune_ratio: float = 0.5
    decoder_ratio: float | None = 0.75
    stage_ratios: tuple[float, ...] | None = None
    target_macs: float | None = None
    importance: str = "magnitude"
    depths: tuple[int, ...] | None = None  # blocks kept per stage (depth pruning)
    # distill
    distill_epochs: int = 10
    distill_lr: float = 3e-4
    batch_size: int = 8
    temperature: float = 2.0
    alpha: float = 0.5
    feature_weight: float = 0.0
    device: str = "auto"
    # quantize
    int8: bool = True
    target: str = "cpu"  # cpu | tensorrt
    calib_method: str = "percentile"
    max_dice_drop: float | None = 0.01
    # timing
    threads: int | None = 2
    runs: int = 30
    warmup: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.distill_epochs < 0 or self.calib_count < 1:
            raise ConfigError("distill epochs must be >= 0 and the calibration count >= 1")
        if self.target not in TARGETS:
            raise ConfigError(f"unknown --target {self.target!r}; choose {', '.join(TARGETS)}")
        if self.max_dice_drop is not None and not 0 <= self.max_dice_drop < 1:
            raise ConfigError("--max-dice-drop must be in [0, 1)")

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> "Recipe":
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipe file not found: {p}")
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"recipe {p} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"recipe {p} has unknown key(s): {', '.join(unknown)}")
        d.update({k: v for k, v in overrides.items() if v is not None})
        for k in ("stage_ratios", "depths"):
            if isinstance(d.get(k), list):
                d[k] = tuple(d[k])
        return cls(**d)


@dataclass
class StageResult:
    name: str
    path: str
    params: int | None = None
    gflops: float | None = None
    size_mb: float | None = None
    runner: str = ""
    precision: str = "fp32"
    p50_ms: float | None = None
    p90_ms: float | None = None
    spread_ms: float | None = None
    dice: float | None = None
    iou: float | None = None
    median_dice: float | None = None
    dice_drop: float | None = None
    worst_image: str | None = None
    worst_drop: float | None = None
    seconds: float | None = None
    notes: dict = field(default_factory=dict)


class Compressor:
    def __init__(self, checkpoint: str | Path, out: str | Path, recipe: Recipe, progress: bool = True) -> None:
        self.checkpoint = Path(checkpoint)
        self.out = Path(out)
        self.recipe = recipe
        self.progress = progress
        self.stages_dir = self.out / "stages"
        self.state_file = self.out / "state.json"
        self.teacher, self.meta = load_checkpoint(self.checkpoint)
        self.pp = self.meta.preprocess
        self.val = D.discover(recipe.val or self._need("val"), recipe.val_split)
        self.calib_root = recipe.calib or self._need("calib")
        self._val_pairs = None
        self._teacher_per_image: dict[str, float] | None = None
        self.state = self._load_state()

    # ------------------------------------------------------------------ plumbing
    def _need(self, what: str):
        raise ConfigError(f"--{what} DIR is required (a folder of real, labelled images for {what})")

    def _load_state(self) -> dict:
        if self.state_file.is_file():
            st = json.loads(self.state_file.read_text())
            if st.get("checkpoint_sha256") != checkpoint_sha256(self.checkpoint):
                raise ConfigError(f"{self.out} holds a compression of another checkpoint; choose another -o")
            if st.get("recipe") != _jsonable_recipe(self.recipe):
                raise ConfigError(f"{self.out} was started with a different recipe; use the same options to "
                                  "resume, or another -o")
            return st
        return {"checkpoint": str(self.checkpoint), "checkpoint_sha256": checkpoint_sha256(self.checkpoint),
                "recipe": _jsonable_recipe(self.recipe), "stages": {}}

    def _save_state(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2, default=str))
        os.replace(tmp, self.state_file)

    def _done(self, name: str) -> StageResult | None:
        d = self.state["stages"].get(name)
        if d and Path(d["path"]).exists():
            return StageResult(**d)
        return None

    def _record(self, res: StageResult) -> StageResult:
        self.state["stages"][res.name] = asdict(res)
        self._save_state()
        log.info("stage %s: Dice %.4f  p50 %.1f ms", res.name, res.dice or float("nan"), res.p50_ms or float("nan"))
        return res

    def val_pairs(self):
        if self._val_pairs is None:
            self._val_pairs = [(s.name, *D.load_pair(s, len(self.meta.classes))) for s in self.val]
        return self._val_pairs

    # ------------------------------------------------------------------ measuring
    def measure(self, name: str, seg, path: Path, params=None, macs=None, precision="fp32", t0=None,
                notes=None) -> StageResult:
        from edgeseg.measure.timing import time_model
        from edgeseg.runtime.metrics import MetricAccumulator

        acc = MetricAccumulator(num_classes=len(self.meta.classes))
        per = {}
        for n, img, gt in self.val_pairs():
            row = acc.add(seg.predict(img), gt, name=n)
            per[n] = row["dice"] if "dice" in row else float("nan")
        s = acc.summary()
        timing = time_model(seg, [p[1] for p in self.val_pairs()[:8]], warmup=self.recipe.warmup,
                            runs=self.recipe.runs, keep_times=False, threads=self.recipe.threads).first.model
        res = StageResult(name=name, path=str(path), params=params, gflops=None if macs is None else 2 * macs / 1e9,
                          size_mb=_size_mb(path), runner=seg.runner.name, precision=precision,
                          p50_ms=timing.p50_ms, p90_ms=timing.p90_ms, spread_ms=timing.spread_ms,
                          dice=s["mean_dice"], iou=s["mean_iou"], median_dice=s["median_dice"],
                          seconds=None if t0 is None else round(time.time() - t0, 1), notes=notes or {})
        if name == "teacher":
            self._teacher_per_image = per
            self.state["teacher_per_image"] = per
        ref = self._teacher_per_image or self.state.get("teacher_per_image")
        if ref:
            t_dice = self.state["stages"]["teacher"]["dice"] if "teacher" in self.state["stages"] else res.dice
            res.dice_drop = t_dice - res.dice
            drops = {k: ref[k] - per[k] for k in per if k in ref}
            worst = max(drops, key=drops.get)
            res.worst_image, res.worst_drop = worst, drops[worst]
            res.notes["per_image_drop"] = _distribution(list(drops.values()))
        return res

    def _torch_stage(self, name, model, path, t0, notes=None) -> StageResult:
        import torch

        from edgeseg.prune import count_macs_params

        if self.recipe.threads:
            torch.set_num_threads(self.recipe.threads)
        macs, params = count_macs_params(model, self.pp.height, self.pp.width)
        seg = torch_segmenter(model, self.meta)
        return self.measure(name, seg, path, params, macs, "fp32", t0, notes)

    # ------------------------------------------------------------------ stages
    def run(self) -> dict:
        r = self.recipe
        results: dict[str, StageResult] = {}
        # read and check the calibration images first: a bad calibration folder is refused
        # before any stage writes anything
        calib, calib_info = self._calibration()
        t0 = time.time()
        results["teacher"] = self._done("teacher") or self._record(
            self._torch_stage("teacher", self.teacher, self.checkpoint, t0))

        # fold (exact; verified by the parity of its Dice and by tests)
        fold_dir = self.stages_dir / "fold"
        if not (res := self._done("fold")):
            from edgeseg.fold import fold_decode_head

            t0 = time.time()
            folded = fold_decode_head(copy.deepcopy(self.teacher).eval())
            save_checkpoint(folded, self._meta_with({"stage": "fold"}), fold_dir)
            res = self._record(self._torch_stage("fold", folded, fold_dir, t0))
        results["fold"] = res

        # prune
        prune_dir = self.stages_dir / "prune"
        if not (res := self._done("prune")):
            import torch

            from edgeseg.prune import PruneConfig, prune

            t0 = time.time()
            model, _ = load_checkpoint(fold_dir)
            pcfg = PruneConfig(ratio=r.prune_ratio, decoder_ratio=r.decoder_ratio, stage_ratios=r.stage_ratios,
                               target_macs=r.target_macs, importance=r.importance, depths=r.depths)
            guard = None
            if r.target_macs is not None and r.max_dice_drop is not None:
                # the same budget picks the strongest pruning step (before distillation, so conservative)
                t_dice = results["teacher"].dice

                def guard(m):
                    return t_dice - self._dice(torch_segmenter(m, self.meta)) <= r.max_dice_drop
            model, rep = prune(model, pcfg, calib=torch.from_numpy(calib[:16]), guard=guard)
            save_checkpoint(model, self._meta_with({"stage": "prune", "prune": rep}), prune_dir)
            res = self._record(self._torch_stage("prune", model, prune_dir, t0, notes={"prune": rep}))
        results["prune"] = res

        # distill
        student_dir = prune_dir
        if r.distill_epochs > 0:
            dist_dir = self.stages_dir / "distill"
            if not (res := self._done("distill")):
                from edgeseg.distill import DistillConfig, distill
                from edgeseg.train.loop import TrainConfig

                t0 = time.time()
                train_root, train_split, val_split = self._train_data()
                student, _ = load_checkpoint(prune_dir)
                tcfg = TrainConfig(data=train_root, out=str(dist_dir), train_split=train_split, val_split=val_split,
                                   classes=tuple(self.meta.classes), size=max(32, self.pp.height // 32 * 32),
                                   epochs=r.distill_epochs, batch_size=r.batch_size, lr=r.distill_lr,
                                   warmup_steps=20, device=r.device, seed=r.seed, progress=self.progress,
                                   threads=r.threads)
                dcfg = DistillConfig(temperature=r.temperature, alpha=r.alpha, feature_weight=r.feature_weight)
                distill(student.train(), copy.deepcopy(self.teacher), self.meta, tcfg, dcfg, self.checkpoint,
                        student_note="pruned teacher")
                model, _ = load_checkpoint(dist_dir)
                res = self._record(self._torch_stage("distill", model, dist_dir, t0,
                                                     notes={"distill": asdict(dcfg), "epochs": r.distill_epochs,
                                                            "train": train_root, "train_split": train_split}))
            results["distill"] = res
            student_dir = dist_dir

        # export (FP32 ONNX bundle, parity-checked on the validation images)
        export_dir = self.stages_dir / "export"
        if not (res := self._done("export")):
            from edgeseg.export.pipeline import export_bundle

            t0 = time.time()
            _, rep = export_bundle(student_dir, export_dir, ExportConfig(fold=True), data=self.recipe.val,
                                   split=self.recipe.val_split, limit=16)
            res = self._record(self._onnx_stage("export", export_dir, "fp32", t0, notes={"parity": rep}))
        results["export"] = res

        final_dir = export_dir
        if r.int8:
            q_dir = self.stages_dir / "quantize"
            if not (res := self._done("quantize")):
                t0 = time.time()
                res = self._quantize(export_dir, q_dir, calib, calib_info, results["teacher"].dice, t0)
                res = self._record(res)
            results["quantize"] = res
            final_dir = q_dir
            if res.p50_ms and results["export"].p50_ms and res.p50_ms > results["export"].p50_ms:
                res.notes["warning"] = (f"INT8 is slower than FP32 here ({res.p50_ms:.1f} vs "
                                        f"{results['export'].p50_ms:.1f} ms p50); it is kept for its size")
        # the final bundle: the last stage's files + the whole story in its manifest
        bundle_dir = self.out / "bundle"
        self._final_bundle(final_dir, bundle_dir, results, calib_info)
        report = self._report(results, calib_info)
        return report

    # ------------------------------------------------------------------ helpers
    def _meta_with(self, extra: dict) -> CheckpointMeta:
        m = copy.deepcopy(self.meta)
        m.provenance = {**m.provenance, "compressed_from": {"path": str(self.checkpoint),
                                                            "sha256": self.state["checkpoint_sha256"]}, **extra}
        return m

    def _calibration(self):
        from edgeseg.quantize import load_calibration

        return load_calibration(self.calib_root, self.pp, count=self.recipe.calib_count, split=self.recipe.calib_split,
                                seed=self.recipe.seed)

    def _train_data(self):
        r = self.recipe
        if r.train:
            return r.train, r.train_split, r.val_split if r.val and Path(r.val) == Path(r.train) else None
        prov = self.meta.provenance
        if prov.get("data") and Path(prov["data"]).is_dir():
            return prov["data"], prov.get("train_split"), prov.get("val_split")
        raise ConfigError("distillation needs labelled training images: pass --train DIR "
                          "(the teacher's checkpoint does not say where its training data is)")

    def _onnx_stage(self, name, bundle_dir: Path, precision: str, t0, notes=None) -> StageResult:
        seg = open_model(bundle_dir, threads=self.recipe.threads)
        params = _onnx_params(seg.bundle.model_file)
        return self.measure(name, seg, bundle_dir, params, None, precision, t0, notes)

    def _quantize(self, export_dir: Path, q_dir: Path, calib, calib_info, teacher_dice: float, t0) -> StageResult:
        import tempfile

        from edgeseg.quantize import Int8Quantizer
        from edgeseg.runtime.bundle import read_bundle

        r = self.recipe
        src = read_bundle(export_dir)
        if r.target == "cpu-weights":
            return self._quantize_weights(src, q_dir, calib_info, t0)
        qz = Int8Quantizer(src.model_file, calib, recipe=r.target, method=r.calib_method)
        groups = qz.node_groups()
        notes: dict = {"recipe": r.target, "method": r.calib_method, "calibration": calib_info}
        budget = r.max_dice_drop

        with tempfile.TemporaryDirectory(prefix=".edgeseg-q-", dir=self.out) as td:
            def build(exclude_groups: list[str], tag: str) -> tuple[Path, float]:
                onnx_path = Path(td) / f"{tag}.onnx"
                qz.quantize(onnx_path, exclude=[n for g in exclude_groups for n in groups[g]])
                bdir = Path(td) / f"{tag}.bundle"
                manifest = src.manifest.derive(precision="int8", quantization={
                    "target": r.target, "method": r.calib_method, "float_blocks": exclude_groups})
                write_bundle(bdir, {"model.onnx": onnx_path}, manifest)
                seg = open_model(bdir, threads=r.threads)
                return bdir, self._dice(seg)

            built: dict[tuple, Path] = {}

            def dice_of(exclude: list[str]) -> float:
                bdir, d = build(list(exclude), f"q{len(built)}")
                built[tuple(exclude)] = bdir
                return d

            fp32_dice = self.state["stages"]["export"]["dice"]
            excluded, dice, guard = guard_fallback(list(groups), dice_of, teacher_dice, fp32_dice, budget)
            notes.update(guard)
            bdir = built[tuple(excluded)]
            with atomic_dir(q_dir) as tmp:
                for f in Path(bdir).iterdir():
                    os.replace(f, tmp / f.name)
        return self._onnx_stage("quantize", q_dir, "int8", t0, notes=notes)

    def _quantize_weights(self, src, q_dir: Path, calib_info, t0) -> StageResult:
        """Weight-only INT8: no calibration and no activation quantization, so no guard search;
        its Dice is measured like every stage's."""
        import tempfile

        from edgeseg.quantize import WEIGHT_ONLY_SESSION_CONFIG, weight_only_int8

        with tempfile.TemporaryDirectory(prefix=".edgeseg-q-", dir=self.out) as td:
            onnx_path = weight_only_int8(src.model_file, Path(td) / "model.onnx")
            manifest = src.manifest.derive(precision="int8", quantization={"target": "cpu-weights",
                                                                           "weight_only": True},
                                           onnxruntime={"session_config": dict(WEIGHT_ONLY_SESSION_CONFIG)})
            write_bundle(q_dir, {"model.onnx": onnx_path}, manifest)
        notes = {"recipe": "cpu-weights", "method": "none (weight-only)", "calibration": calib_info,
                 "float_blocks": [], "dice_fp32": self.state["stages"]["export"]["dice"]}
        return self._onnx_stage("quantize", q_dir, "int8", t0, notes=notes)

    def _dice(self, seg) -> float:
        from edgeseg.runtime.metrics import MetricAccumulator

        acc = MetricAccumulator(num_classes=len(self.meta.classes))
        for n, img, gt in self.val_pairs():
            acc.add(seg.predict(img), gt, name=n)
        return acc.summary()["mean_dice"]

    def _final_bundle(self, src_dir: Path, out: Path, results: dict, calib_info: dict) -> Path:
        from edgeseg.runtime.bundle import read_bundle

        src = read_bundle(src_dir)
        m = src.manifest
        changes: dict = {"recipe": _jsonable_recipe(self.recipe), "calibration": calib_info,
                         "stages": [_stage_summary(v) for v in results.values()]}
        if "quantize" in results:
            q = results["quantize"].notes
            changes["quantization"] = {**m.get("quantization", {}),
                                       **{k: q[k] for k in ("recipe", "method", "float_blocks", "dice_all_int8",
                                                            "dice_fp32", "budget_missed_by") if k in q}}
        changes["metrics"] = {**m.get("metrics", {}), "validation": {
            "data": self.recipe.val, "split": self.recipe.val_split, "images": len(self.val),
            "dice": results[list(results)[-1]].dice, "teacher_dice": results["teacher"].dice}}
        changes["provenance"] = {**m.get("provenance", {}), "teacher_checkpoint": str(self.checkpoint),
                                 "teacher_sha256": self.state["checkpoint_sha256"]}
        # [drift guard] the input statistics of the calibration images (not the export stage's parity
        # images); None removes the export's statistics when the calibration set is too small
        changes["input_stats"] = self._calibration_input_stats(calib_info)
        return write_bundle(out, {"model.onnx": src.model_file}, m.derive(**changes))

    def _calibration_input_stats(self, calib_info: dict) -> dict | None:
        """[drift guard] ``input_stats`` from the raw uint8 calibration images: the same images
        ``load_calibration`` chose (same seeded choice, checked against its fingerprint)."""
        from edgeseg.export.pipeline import input_stats_for

        samples = D.discover(self.calib_root, split=self.recipe.calib_split, require_masks=False)
        if len(samples) > self.recipe.calib_count:
            rng = np.random.default_rng(self.recipe.seed)
            keep = np.sort(rng.choice(len(samples), size=int(self.recipe.calib_count), replace=False))
            samples = [samples[i] for i in keep]
        if D.fingerprint(samples)["sha256"] != calib_info.get("sha256"):
            raise ConfigError(f"the calibration images in {self.calib_root} changed during the run; "
                              "rerun compress so the bundle's input statistics match its INT8 calibration")
        return input_stats_for(samples, what="calibration images")

    def _report(self, results: dict, calib_info: dict) -> dict:
        from edgeseg.measure.machine import machine_info
        from edgeseg.evaluate import write_json

        rows = [asdict(v) for v in results.values()]
        report = {"checkpoint": str(self.checkpoint), "bundle": str(self.out / "bundle"),
                  "recipe": _jsonable_recipe(self.recipe), "calibration": calib_info,
                  "validation": {"data": self.recipe.val, "split": self.recipe.val_split, "images": len(self.val)},
                  "threads": self.recipe.threads, "machine": machine_info(), "stages": rows}
        write_json(report, self.out / "report.json")
        (self.out / "report.md").write_text(markdown_report(report))
        try:
            plot_stages(rows, self.out / "dice_vs_latency.png")
        except Exception as exc:  # a missing matplotlib must not lose the compression
            log.warning("no plot: %s", exc)
        return report


EMBEDDED = Path(__file__).resolve().parents[2] / "calibration_data"


def default_job() -> tuple[Path, dict]:
    """The README's main job: the embedded demo teacher and the embedded synthetic image set."""
    teacher = EMBEDDED / "teacher"
    if not (teacher / "model.safetensors").is_file():
        raise ConfigError(f"the embedded demo teacher is missing ({teacher}); run edgeseg from its source tree")
    d = str(EMBEDDED)
    return teacher, dict(calib=d, calib_split="calibration", calib_count=16, val=d, val_split="val", train=d,
                         train_split="train", distill_epochs=15, runs=20)


def terminal_table(rep: dict) -> str:
    head = f"{'stage':<10}{'precision':>10}{'params':>11}{'GFLOPs':>8}{'MB':>8}{'p50 ms':>9}{'Dice':>8}{'drop':>8}"
    lines = [head]
    for s in rep["stages"]:
        def f(v, fmt, w):
            return f"{'-':>{w}}" if v is None else format(format(v, fmt), f">{w}")
        lines.append(f"{s['name']:<10}{s['precision']:>10}{f(s['params'], ',', 11)}{f(s['gflops'], '.2f', 8)}"
                     f"{f(s['size_mb'], '.2f', 8)}{f(s['p50_ms'], '.1f', 9)}{f(s['dice'], '.4f', 8)}"
                     f"{f(s['dice_drop'], '+.4f', 8)}")
    return "\n".join(lines)


QUANT_TOL = 0.002  # the most Dice INT8 alone may cost when the FP32 model already used the budget


def guard_fallback(groups: list[str], dice_of, teacher_dice: float, fp32_dice: float, budget: float | None):
    """The INT8 accuracy guard. ``dice_of(float_blocks)`` quantizes everything except those
    blocks and returns the validation Dice. Returns (blocks kept float, final Dice, notes).

    1. Quantize every block; if the drop vs the teacher is within budget (or no budget), done.
       (When the FP32 model is already over budget, the target becomes FP32 Dice - QUANT_TOL.)
    2. Sensitivity: for each block, the Dice recovered when it alone stays float.
    3. Return blocks to float, most sensitive first, until the budget holds (or no block that
       helps is left); the notes say which, why, and by how much a missed budget was missed.
    """
    notes: dict = {"float_blocks": [], "sensitivity": {}, "dice_fp32": fp32_dice}
    excluded: list[str] = []
    dice = dice_of(excluded)
    notes["dice_all_int8"] = dice
    if budget is None:
        return excluded, dice, notes
    target = teacher_dice - budget
    if fp32_dice < target:
        # the FP32 model already spent the budget (pruning/distillation): no INT8 fallback can win
        # it back, so only INT8's own cost is bounded, by QUANT_TOL, instead of keeping ever more
        # blocks in float for gains below the noise of the validation set
        notes["fp32_over_budget_by"] = target - fp32_dice
        target = fp32_dice - QUANT_TOL
    notes["target_dice"] = target
    if dice >= target:
        if teacher_dice - dice > budget:
            notes["budget_missed_by"] = teacher_dice - dice - budget
        return excluded, dice, notes
    gains = {g: dice_of([g]) - dice for g in groups}
    notes["sensitivity"] = gains
    for g in sorted(gains, key=gains.get, reverse=True):
        if gains[g] <= 0:
            break
        excluded.append(g)
        dice = dice_of(excluded)
        notes["float_blocks"].append({"block": g, "dice_gain_alone": gains[g], "dice_after": dice})
        if dice >= target:
            break
    if teacher_dice - dice > budget:
        notes["budget_missed_by"] = teacher_dice - dice - budget
    return excluded, dice, notes


def _jsonable_recipe(r: Recipe) -> dict:
    d = asdict(r)
    for k in ("stage_ratios", "depths"):
        if d.get(k) is not None:
            d[k] = list(d[k])
    return d


def _stage_summary(s: StageResult) -> dict:
    keys = ("name", "params", "gflops", "size_mb", "precision", "p50_ms", "dice", "iou", "dice_drop")
    return {k: getattr(s, k) for k in keys}


def _distribution(drops: list[float]) -> dict:
    a = np.asarray(drops, dtype=np.float64)
    if a.size == 0:
        return {}
    return {"mean": float(a.mean()), "median": float(np.median(a)), "p90": float(np.percentile(a, 90)),
            "max": float(a.max()), "share_over_0.05": float((a > 0.05).mean())}


def _size_mb(path: Path) -> float:
    p = Path(path)
    if p.is_file():
        return p.stat().st_size / 2**20
    files = [f for f in p.iterdir() if f.suffix in (".onnx", ".safetensors", ".engine")]
    return sum(f.stat().st_size for f in files) / 2**20


def _onnx_params(path: Path) -> int:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    skip = ("_scale", "_zero_point")
    return int(sum(int(np.prod(t.dims)) for t in m.graph.initializer
                   if t.dims and not t.name.endswith(skip) and int(np.prod(t.dims)) > 1))


def markdown_report(rep: dict) -> str:
    lines = [f"# edgeseg compress report", "",
             f"- teacher: `{rep['checkpoint']}`", f"- bundle: `{rep['bundle']}`",
             f"- validation: `{rep['validation']['data']}` split `{rep['validation']['split']}` "
             f"({rep['validation']['images']} images)",
             f"- calibration: {rep['calibration'].get('count')} images, sha256 `{rep['calibration'].get('sha256')}`",
             f"- machine: {rep['machine'].get('cpu', {}).get('model', '?')}, threads {rep['threads']}", "",
             "| stage | runner | precision | params | GFLOPs | size MB | p50 ms | Dice | IoU | Dice drop | worst image (drop) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in rep["stages"]:
        def f(v, fmt):
            return "" if v is None else format(v, fmt)
        worst = "" if s["worst_image"] is None else f"{s['worst_image']} ({s['worst_drop']:+.3f})"
        lines.append(f"| {s['name']} | {s['runner']} | {s['precision']} | {f(s['params'], ',')} | "
                     f"{f(s['gflops'], '.2f')} | {f(s['size_mb'], '.2f')} | {f(s['p50_ms'], '.1f')} | "
                     f"{f(s['dice'], '.4f')} | {f(s['iou'], '.4f')} | {f(s['dice_drop'], '+.4f')} | {worst} |")
    q = next((s for s in rep["stages"] if s["name"] == "quantize"), None)
    if q:
        n = q["notes"]
        lines += ["", "## INT8", "", f"- recipe `{n.get('recipe')}`, calibration `{n.get('method')}`"]
        if n.get("recipe") == "cpu-weights":
            lines.append("- weight-only INT8: Conv/MatMul weights stored as INT8 (per channel), dequantized once "
                         "when ONNX Runtime loads the bundle; activations stay float, so no block needs a fallback")
        else:
            lines.append(f"- Dice with every block in INT8: {n.get('dice_all_int8', float('nan')):.4f}")
        lines.append(f"- Dice of the FP32 model it was made from: {n.get('dice_fp32', float('nan')):.4f}")
        if n.get("fp32_over_budget_by"):
            lines.append(f"- the FP32 model already missed the Dice budget by {n['fp32_over_budget_by']:.4f} "
                         "before quantization (pruning/distillation cost); INT8 fallback cannot recover that, "
                         f"so INT8 itself was held to at most {QUANT_TOL} Dice below FP32")
        if n.get("float_blocks"):
            lines.append("- blocks kept in float (most sensitive first):")
            for b in n["float_blocks"]:
                lines.append(f"  - `{b['block']}`: alone recovers {b['dice_gain_alone']:+.4f} Dice; "
                             f"after keeping it, Dice {b['dice_after']:.4f}")
        elif n.get("recipe") == "cpu-weights":
            pass
        elif n.get("dice_all_int8", 0) >= n.get("dice_fp32", 1):
            lines.append("- INT8 cost no validation Dice here (all-INT8 >= FP32), so every block stays INT8")
        else:
            lines.append(f"- the all-INT8 model meets the guard's target (Dice >= {n.get('target_dice', float('nan')):.4f}): "
                         "every block stays INT8")
        if n.get("budget_missed_by"):
            lines.append(f"- budget missed by {n['budget_missed_by']:.4f} Dice even after fallback")
        if n.get("warning"):
            lines.append(f"- warning: {n['warning']}")
    lines += ["", "Per-image Dice drop against the teacher (validation):", ""]
    for s in rep["stages"]:
        d = s["notes"].get("per_image_drop")
        if d:
            lines.append(f"- {s['name']}: mean {d['mean']:+.4f}, median {d['median']:+.4f}, p90 {d['p90']:+.4f}, "
                         f"max {d['max']:+.4f}, share > 0.05: {d['share_over_0.05']:.1%}")
    return "\n".join(lines) + "\n"


def plot_stages(rows: list[dict], path: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from edgeseg.errors import DependencyError

        raise DependencyError("plots need matplotlib: pip install edgeseg[plot]") from None
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["p50_ms"] for r in rows]
    ys = [r["dice"] for r in rows]
    ax.plot(xs, ys, "o-", color="#3366aa")
    for r in rows:
        ax.annotate(r["name"], (r["p50_ms"], r["dice"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("p50 latency, ms (this machine)")
    ax.set_ylabel("validation Dice")
    ax.set_title("edgeseg compress: Dice vs latency per stage")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path
