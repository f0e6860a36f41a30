"""``edgeseg compress``: teacher -> fold -> prune -> distill -> export -> quantize -> bundle.

The stages are one table, :data:`STAGES`: each entry is a function from the previous stage's
files to its own folder under ``OUT/stages/`` (written atomically), and returns a
:class:`StageResult` (the stage scored on the user's labelled validation images, Dice/IoU at
original size, and timed on this machine). A finished stage is recorded in
``OUT/state.json`` (its path relative to OUT); an interrupted run resumes at the first
unfinished stage and says which finished stages it reuses, repeating any warning they carried
(e.g. INT8 slower than FP32). A resumed run with another recipe is refused with the options
that changed.

OUT follows the one output-folder policy (``edgeseg.outputs``), checked before any work: a new
folder, or one an earlier ``compress`` wrote (its ``.edgeseg-output.json`` marker), which is
resumed, or with ``overwrite`` replaced whole: the new run then works in a temporary folder
beside OUT that replaces it only at the end, so a failed run leaves the previous result. A
folder holding anything else, or one that is, lies inside or contains an input (the teacher,
the calibration, validation or training data) is refused. Leftovers of killed runs
(``.OUT.tmp-*``) are removed when the next run starts; a killed run never leaves ``bundle/``.

While it runs it says what it does (``edgeseg.compress.progress``): a plan line with the whole
run's estimated duration on this machine, one line as each stage starts (what it does, about
how long) and ends (how long it took, its Dice and latency), and progress bars for the loops.

The recipe is ``edgeseg.compress.recipe``; the INT8 guard ``edgeseg.compress.guard``; the
headline, tables and plot ``edgeseg.compress.report``. ``edgeseg prune`` and ``edgeseg
distill`` run the prune and distill steps alone, file to file (:func:`prune_checkpoint`,
:func:`distill_checkpoint`).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgeseg.compress.progress import Estimate, Narrator, fmt_seconds, per_image_seconds
from edgeseg.compress.final import final_bundle
from edgeseg.compress.recipe import Recipe, default_job
from edgeseg.compress.report import markdown_report, plot_stages
from edgeseg.data import folders as D
from edgeseg.errors import ConfigError
from edgeseg.model.checkpoint import CheckpointMeta, checkpoint_sha256, load_checkpoint, save_checkpoint
from edgeseg.runners import open_model, torch_segmenter
from edgeseg.outputs import MARKER, check_output, mark
from edgeseg.runtime.files import atomic_dir, atomic_write_json, atomic_write_text, clean_leftovers, read_json, size_mb

log = logging.getLogger(__name__)

__all__ = ["Compressor", "Recipe", "StageResult", "STAGES", "default_job", "prune_checkpoint",
           "distill_checkpoint"]


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
    noisy_reason: str | None = None  # set when the stage was timed on a busy machine
    dice: float | None = None
    iou: float | None = None
    median_dice: float | None = None
    dice_drop: float | None = None  # vs the teacher (None for the teacher itself)
    worst_image: str | None = None
    worst_drop: float | None = None
    seconds: float | None = None
    notes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """One row of the table: ``run(compressor, src, out)`` turns the previous stage's path
    into this stage's files at ``out`` and returns their measurement."""

    name: str
    run: Callable[["Compressor", Path, Path], StageResult]
    enabled: Callable[[Recipe], bool] = lambda r: True


# --------------------------------------------------------------------------- file-to-file steps
def prune_checkpoint(src: str | Path, out: str | Path, cfg, calib: np.ndarray | None = None, guard=None,
                     meta: CheckpointMeta | None = None, progress: bool = False) -> tuple[Path, dict]:
    """Prune the checkpoint ``src`` (folded first, as pruning needs) into the checkpoint ``out``.
    ``cfg`` is a ``PruneConfig``; ``calib`` (N, 3, H, W) float32 images for data-driven steps.
    Returns (out, the pruning report)."""
    import torch

    from edgeseg.prune import prune

    model, src_meta = load_checkpoint(src)
    meta = copy.deepcopy(meta or src_meta)
    model, rep = prune(model.eval(), cfg, calib=None if calib is None else torch.from_numpy(calib), guard=guard,
                       progress=progress)
    meta.provenance = {**meta.provenance, "stage": "prune", "prune": rep}
    save_checkpoint(model, meta, out)
    return Path(out), rep


def distill_checkpoint(teacher: str | Path, student: str | Path, train_cfg, dcfg, student_note: str = "",
                       overwrite: bool = False, announce=None) -> Path:
    """Distil the checkpoint ``student`` towards the checkpoint ``teacher`` into the checkpoint
    ``train_cfg.out`` (see ``edgeseg.distill.distill``: best epoch by agreement with the teacher,
    never worse than the starting student without saying so)."""
    from edgeseg.distill import distill

    t_model, meta = load_checkpoint(teacher)
    s_model, _ = load_checkpoint(student)
    return distill(s_model.train(), t_model, meta, train_cfg, dcfg, teacher, student_note=student_note,
                   overwrite=overwrite, announce=announce)


# --------------------------------------------------------------------------- the stages
def _teacher(c: "Compressor", src: Path, out: Path) -> StageResult:
    return c.torch_stage("teacher", c.teacher, src, time.time())


def _fold(c: "Compressor", src: Path, out: Path) -> StageResult:
    from edgeseg.fold import fold_decode_head

    t0 = time.time()
    folded = fold_decode_head(copy.deepcopy(c.teacher).eval())
    save_checkpoint(folded, c.meta_with({"stage": "fold"}), out)
    return c.torch_stage("fold", folded, out, t0)


def _prune(c: "Compressor", src: Path, out: Path) -> StageResult:
    from edgeseg.prune import PruneConfig

    r, t0 = c.recipe, time.time()
    pcfg = PruneConfig(ratio=r.prune_ratio, decoder_ratio=r.decoder_ratio, stage_ratios=r.stage_ratios,
                       target_macs=r.target_macs, importance=r.importance, depths=r.depths)
    guard = None
    if r.target_macs is not None and r.max_dice_drop is not None:
        # the same budget picks the strongest pruning step (before distillation, so conservative)
        t_dice = c.results["teacher"].dice

        def guard(m):
            return t_dice - c.dice(torch_segmenter(m, c.meta)) <= r.max_dice_drop
    _, rep = prune_checkpoint(src, out, pcfg, calib=c.calib[:16], guard=guard, meta=c.meta_with({}),
                              progress=c.progress)
    model, _ = load_checkpoint(out)
    return c.torch_stage("prune", model, out, t0, notes={"prune": rep})


def _distill(c: "Compressor", src: Path, out: Path) -> StageResult:
    from edgeseg.distill import DistillConfig
    from edgeseg.train.loop import TrainConfig

    r, t0 = c.recipe, time.time()
    train_root, train_split, val_split = c.train_data()
    tcfg = TrainConfig(data=train_root, out=str(out), train_split=train_split, val_split=val_split,
                       classes=tuple(c.meta.classes), size=max(32, c.pp.height // 32 * 32),
                       epochs=r.distill_epochs, batch_size=r.batch_size, lr=r.distill_lr, warmup_steps=20,
                       device=r.device, seed=r.seed, progress=c.progress, threads=r.threads)
    dcfg = DistillConfig(temperature=r.temperature, alpha=r.alpha, feature_weight=r.feature_weight)
    # an unrecorded earlier attempt: resume it when it stopped early, else start it again
    redo = out.exists() and not (out / ".resume").is_dir()
    def announce(step_s: float, steps: int) -> None:
        c.estimate.train_step_s = step_s
        c.talk.say(f"  distill: {steps} training steps at {step_s:.2f} s each (measured on the first steps): "
                   f"about {fmt_seconds(c.estimate.distill())} in all")

    distill_checkpoint(c.checkpoint, src, tcfg, dcfg, student_note="pruned teacher", overwrite=redo,
                       announce=announce)
    model, meta = load_checkpoint(out)
    sel = (meta.training or {}).get("selection") or {}
    notes = {"distill": asdict(dcfg), "epochs": r.distill_epochs, "train_split": train_split, "selection": sel}
    if sel.get("kept") == "starting point":
        notes["kept_start"] = ("distillation did not beat the pruned model it started from on the validation set "
                               f"(agreement {sel.get('best_agreement'):.4f} vs {sel.get('start_agreement'):.4f}); "
                               "the pruned model is kept")
    return c.torch_stage("distill", model, out, t0, notes=notes)


def _export(c: "Compressor", src: Path, out: Path) -> StageResult:
    from edgeseg.export.onnx import ExportConfig
    from edgeseg.export.pipeline import export_bundle

    t0 = time.time()
    # a bundle left by an earlier attempt that stopped before recording the stage is ours to replace
    _, rep = export_bundle(src, out, ExportConfig(fold=True), data=c.recipe.val, split=c.recipe.val_split, limit=16,
                           overwrite=out.exists())
    return c.onnx_stage("export", out, "fp32", t0, notes={"parity": rep})


def _quantize(c: "Compressor", src: Path, out: Path) -> StageResult:
    from edgeseg.compress.guard import quantize_guarded

    r, t0 = c.recipe, time.time()
    notes = quantize_guarded(src, out, target=r.target, method=r.calib_method, calib=c.calib,
                             calib_info=c.calib_info, dice_of_bundle=lambda b: c.dice(open_model(b, threads=r.threads)),
                             teacher_dice=c.results["teacher"].dice, fp32_dice=c.results["export"].dice,
                             budget=r.max_dice_drop, work=c.work, talk=c.talk)
    res = c.onnx_stage("quantize", out, "int8", t0, notes=notes)
    fp32 = c.results["export"].p50_ms
    if res.p50_ms and fp32 and res.p50_ms > fp32:  # recorded in the state: repeated when the stage is reused
        res.notes["warning"] = (f"INT8 is slower than FP32 here ({res.p50_ms:.1f} vs {fp32:.1f} ms p50); "
                                "it is kept for its size")
    return res


STAGES: tuple[Stage, ...] = (
    Stage("teacher", _teacher),
    Stage("fold", _fold),
    Stage("prune", _prune),
    Stage("distill", _distill, lambda r: r.distill_epochs > 0),
    Stage("export", _export),
    Stage("quantize", _quantize, lambda r: r.int8),
)
# the last step, "bundle", is not a stage of the table: it always runs (cheap) and writes
# OUT/bundle from the last stage's files plus the whole story in its manifest.


class Compressor:
    """One compression run into ``out``; see the module doc for the output policy and what it
    says while it runs. ``overwrite`` replaces an earlier compress output whole (at the end)."""

    def __init__(self, checkpoint: str | Path, out: str | Path, recipe: Recipe, progress: bool = True,
                 overwrite: bool = False) -> None:
        self.checkpoint = Path(checkpoint)
        self.out = Path(out)
        self.work = self.out  # where this run writes: OUT, or a temporary folder replacing it at the end
        self.recipe = recipe
        self.progress = progress
        self.talk = Narrator(progress)
        self.teacher, self.meta = load_checkpoint(self.checkpoint)
        self.mode = check_output(self.out, "compress", inputs=self._inputs(), overwrite=overwrite, resumable=True)
        self.pp = self.meta.preprocess
        self.val = D.discover(recipe.val or self._need("val"), recipe.val_split)
        self.calib_root = recipe.calib or self._need("calib")
        self.results: dict[str, StageResult] = {}
        self._val_pairs = None
        self.state = self._load_state()

    # ------------------------------------------------------------------ plumbing
    def _need(self, what: str):
        raise ConfigError(f"--{what} DIR is required (a folder of real, labelled images for {what})")

    def _inputs(self) -> list:
        r = self.recipe
        data = self.meta.provenance.get("data") if r.train is None and r.distill_epochs > 0 else None
        return [self.checkpoint, r.calib, r.val, r.train, data if isinstance(data, str) else None]

    @property
    def stages_dir(self) -> Path:
        return self.work / "stages"

    @property
    def state_file(self) -> Path:
        return self.work / "state.json"

    def _load_state(self) -> dict:
        sha = checkpoint_sha256(self.checkpoint)
        if self.mode == "resume" and self.state_file.is_file():
            st = read_json(self.state_file, ConfigError)
            if st.get("checkpoint_sha256") != sha:
                raise ConfigError(f"{self.out} holds a compression of another checkpoint; choose another -o, or "
                                  "pass --overwrite to replace it")
            changed = self.recipe.diff(st.get("recipe") or {})
            if changed:
                raise ConfigError(f"{self.out} was started with a different recipe ({'; '.join(changed)}); use the "
                                  "same options to resume, another -o, or --overwrite to replace it")
            return st
        return {"checkpoint": self.checkpoint.name, "checkpoint_sha256": sha, "recipe": self.recipe.to_dict(),
                "stages": {}}

    def _path(self, recorded: str) -> Path:
        """A stage's recorded path: relative to OUT (the stages), or the teacher's own path."""
        p = Path(recorded)
        return p if p.is_absolute() else self.work / p

    def _done(self, name: str) -> StageResult | None:
        d = self.state["stages"].get(name)
        if d and self._path(d["path"]).exists():
            return StageResult(**d)
        return None

    def _record(self, res: StageResult, seconds: float) -> StageResult:
        self.state["stages"][res.name] = asdict(res)
        atomic_write_json(self.state_file, self.state)
        drop = "" if res.dice_drop is None else f" ({-res.dice_drop:+.4f} vs the teacher)"
        self.talk.say(f"  {res.name} done in {fmt_seconds(seconds)}: Dice {_num(res.dice, '.4f')}{drop}, "
                      f"p50 {_num(res.p50_ms, '.1f')} ms, {_num(res.size_mb, '.2f')} MB")
        return res

    def val_pairs(self):
        if self._val_pairs is None:
            self._val_pairs = [(s.name, *D.load_pair(s, len(self.meta.classes), source=bool(self.meta.intensity)))
                               for s in self.val]  # [intensity] source pixels: every stage's model maps them
        return self._val_pairs

    # ------------------------------------------------------------------ measuring
    def measure(self, name: str, seg, path: Path, params=None, macs=None, precision="fp32", t0=None,
                notes=None) -> StageResult:
        from edgeseg.measure.timing import time_model
        from edgeseg.runtime.metrics import MetricAccumulator

        acc = MetricAccumulator(num_classes=len(self.meta.classes))
        per = {}
        for n, img, gt in self.talk.bar(self.val_pairs(), desc=f"{name}: scoring"):
            row = acc.add(seg.predict(img), gt, name=n)
            per[n] = row["dice"] if "dice" in row else float("nan")
        s = acc.summary()
        timing = time_model(seg, [p[1] for p in self.val_pairs()[:8]], warmup=self.recipe.warmup,
                            runs=self.recipe.runs, keep_times=False, threads=self.recipe.threads)
        lat = timing.first.model
        path = Path(path)
        rel = str(path.relative_to(self.work)) if self.work in path.parents else str(path.resolve())
        res = StageResult(name=name, path=rel, params=params, gflops=None if macs is None else 2 * macs / 1e9,
                          size_mb=_model_mb(path), runner=seg.runner.name, precision=precision,
                          p50_ms=lat.p50_ms, p90_ms=lat.p90_ms, spread_ms=lat.spread_ms,
                          noisy_reason=timing.noisy_reason, dice=s["mean_dice"], iou=s["mean_iou"],
                          median_dice=s["median_dice"], seconds=None if t0 is None else round(time.time() - t0, 1),
                          notes=notes or {})
        if name == "teacher":  # the reference: no drop against itself
            self.state["teacher_per_image"] = per
            return res
        ref = self.state.get("teacher_per_image")
        if ref:
            res.dice_drop = self.results["teacher"].dice - res.dice
            drops = {k: ref[k] - per[k] for k in per if k in ref}
            worst = max(drops, key=drops.get)
            res.worst_image, res.worst_drop = worst, drops[worst]
            res.notes["per_image_drop"] = _distribution(list(drops.values()))
        return res

    def torch_stage(self, name, model, path, t0, notes=None) -> StageResult:
        import torch

        from edgeseg.prune import count_macs_params

        if self.recipe.threads:
            torch.set_num_threads(self.recipe.threads)
        macs, params = count_macs_params(model, self.pp.height, self.pp.width)
        return self.measure(name, torch_segmenter(model, self.meta), path, params, macs, "fp32", t0, notes)

    def onnx_stage(self, name, bundle_dir: Path, precision: str, t0, notes=None) -> StageResult:
        seg = open_model(bundle_dir, threads=self.recipe.threads)
        return self.measure(name, seg, bundle_dir, _onnx_params(seg.bundle.model_file), None, precision, t0, notes)

    def dice(self, seg) -> float:
        from edgeseg.runtime.metrics import MetricAccumulator

        acc = MetricAccumulator(num_classes=len(self.meta.classes))
        for n, img, gt in self.talk.bar(self.val_pairs(), desc="scoring"):
            acc.add(seg.predict(img), gt, name=n)
        return acc.summary()["mean_dice"]

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        # read and check the calibration images (and where distillation's data is) first: bad
        # options are refused before any stage writes anything
        from edgeseg.quantize import load_calibration

        r = self.recipe
        if r.threads:
            import torch

            torch.set_num_threads(r.threads)  # before the teacher is timed for the estimates
        self.calib, self.calib_info = load_calibration(self.calib_root, self.pp, count=r.calib_count,
                                                       split=r.calib_split, seed=r.seed,
                                                       intensity=self.meta.intensity or None)  # [intensity]
        stages = [s for s in STAGES if s.enabled(r)]
        train_images = len(D.discover(*self.train_data()[:2])) if r.distill_epochs > 0 else 0
        if self.mode != "replace":
            clean_leftovers(self.out)
            return self._run(self.out, stages, train_images)
        self.talk.say(f"--overwrite: the new result replaces {self.out} when it is complete")
        with atomic_dir(self.out) as tmp:
            report = self._run(tmp, stages, train_images)
        self.work = self.out
        return report

    def _run(self, work: Path, stages: list[Stage], train_images: int) -> dict:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        if not (work / MARKER).is_file():
            mark(work, "compress", teacher=self.checkpoint.name)
        atomic_write_json(self.state_file, self.state)
        todo = [s for s in stages if self._done(s.name) is None]
        self.estimate = Estimate(per_image_s=per_image_seconds(torch_segmenter(self.teacher, self.meta),
                                                               self.val_pairs()[0][1]) if todo else 0.0,
                                 val_images=len(self.val), train_images=train_images,
                                 calib_images=int(self.calib.shape[0]), recipe=self.recipe)
        self._plan(stages, todo)
        src = self.checkpoint
        for i, stage in enumerate(stages, 1):
            out = self.checkpoint if stage.name == "teacher" else self.stages_dir / stage.name
            res = self._done(stage.name)
            if res is not None:
                self.talk.say(f"stage {i}/{len(stages)} {stage.name}: reusing stage {stage.name} from a previous "
                              f"identical run ({res.path})")
            else:
                with self.talk.stage(i, len(stages), stage.name, self.estimate.stage(stage.name)):
                    res = stage.run(self, src, out)
                res = self._record(res, self.talk.last_elapsed)
            for key in ("warning", "kept_start"):  # said again when a finished stage is reused
                if res.notes.get(key):
                    log.warning("%s: %s", stage.name, res.notes[key])
            self.results[stage.name] = res
            src = self._path(res.path)
        t0 = time.perf_counter()
        self.talk.say("finishing: " + _WHAT_BUNDLE)
        final_bundle(self, src, work / "bundle")
        report = self._report()
        self.talk.say(f"  done in {fmt_seconds(time.perf_counter() - t0)}")
        return report

    def _plan(self, stages: list[Stage], todo: list[Stage]) -> None:
        r = self.recipe
        names = []
        for s in stages:
            names.append({"distill": f"distill ({r.distill_epochs} epochs on {self.estimate.train_images} images)",
                          "quantize": f"quantize (INT8, target {r.target})"}.get(s.name, s.name))
        line = (f"compress {self.checkpoint.name} -> {self.out}: {', '.join(names)}, then the bundle; every stage "
                f"scored on {len(self.val)} validation images and timed ({r.warmup} + {r.runs} runs, "
                f"{r.threads or 'all'} threads)")
        reused = len(stages) - len(todo)
        if not todo:
            self.talk.say(f"{line}; every stage is reused from a previous identical run")
            return
        total = sum(self.estimate.stage(s.name) for s in todo) + self.estimate.stage("bundle")
        self.talk.say(f"{line}{f'; reusing {reused} finished stage(s)' if reused else ''}; about "
                      f"{fmt_seconds(total)} on this machine (the teacher takes "
                      f"{self.estimate.per_image_s * 1000:.0f} ms per image here)")

    # ------------------------------------------------------------------ helpers
    def meta_with(self, extra: dict) -> CheckpointMeta:
        m = copy.deepcopy(self.meta)
        m.provenance = {**m.provenance, "compressed_from": {"path": self.checkpoint.name,
                                                            "sha256": self.state["checkpoint_sha256"]}, **extra}
        return m

    def train_data(self):
        r = self.recipe
        if r.train:
            return r.train, r.train_split, r.val_split if r.val and Path(r.val) == Path(r.train) else None
        prov = self.meta.provenance
        if prov.get("data") and Path(prov["data"]).is_dir():
            return prov["data"], prov.get("train_split"), prov.get("val_split")
        raise ConfigError("distillation needs labelled training images: pass --train DIR "
                          "(the teacher's checkpoint does not say where its training data is)")

    def _report(self) -> dict:
        from edgeseg.measure.machine import machine_info

        report = {"checkpoint": str(self.checkpoint), "bundle": str(self.out / "bundle"),
                  "recipe": self.recipe.to_dict(), "calibration": self.calib_info,
                  "validation": {"data": self.recipe.val, "split": self.recipe.val_split, "images": len(self.val)},
                  "threads": self.recipe.threads, "machine": machine_info(),
                  "stages": [asdict(v) for v in self.results.values()]}
        atomic_write_json(self.work / "report.json", report)
        atomic_write_text(self.work / "report.md", markdown_report(report))
        try:
            plot_stages(report, self.work / "dice_vs_latency.png")
        except Exception as exc:  # noqa: BLE001 - a missing matplotlib must not lose the compression
            log.warning("no plot: %s", exc)
        return report


_WHAT_BUNDLE = "the final bundle (the last stage's model, the whole story in its manifest) and the report"


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _distribution(drops: list[float]) -> dict:
    a = np.asarray(drops, dtype=np.float64)
    if a.size == 0:
        return {}
    return {"mean": float(a.mean()), "median": float(np.median(a)), "p90": float(np.percentile(a, 90)),
            "max": float(a.max()), "share_over_0.05": float((a > 0.05).mean())}


def _model_mb(path: Path) -> float:
    """MB (10^6 bytes) of a stage's model files (.onnx, .safetensors, .engine)."""
    p = Path(path)
    if p.is_file():
        return size_mb(p)
    return size_mb(*[f for f in p.iterdir() if f.suffix in (".onnx", ".safetensors", ".engine")])


def _onnx_params(path: Path) -> int:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    skip = ("_scale", "_zero_point")
    return int(sum(int(np.prod(t.dims)) for t in m.graph.initializer
                   if t.dims and not t.name.endswith(skip) and int(np.prod(t.dims)) > 1))
