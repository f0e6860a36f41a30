"""``edgeseg compress``: teacher -> fold -> candidates (prune, distill, export, quantize) -> bundle.

The stages are one table (``edgeseg.compress.stages``): each is a function from the previous
stage's files to its own folder under ``OUT/stages/`` (written atomically), and returns a
:class:`StageResult`: the stage scored on the user's labelled validation images (Dice/IoU at
original size, and its fidelity to the teacher: mean and per-image Dice drop, agreement with
the teacher's masks, lost lesions; ``edgeseg.measure.budgets``) and timed on this machine. A
finished stage is recorded in ``OUT/state.json`` (its path relative to OUT); an interrupted
run resumes at the first unfinished stage and says which finished stages it reuses, repeating
any warning they carried (e.g. INT8 slower than FP32). A resumed run with another recipe is
refused with the options that changed (the budgets and the time budget may change: they only
choose among measured stages).

The teacher and its folded copy are measured once. Then, by default, a search
(``edgeseg.compress.search``) runs candidates from gentle to aggressive, each a chain of
prune, distill, export and quantize stages under ``OUT/candidates/<candidate>/``; with
``search=False`` the one recipe's chain runs under ``OUT/stages/``. Every exported model (FP32
and INT8) of the search is a *point* (without search, the recipe's last stage is the one
point): the answer is the fastest point that meets every budget.

The budgets decide what OUT holds. ``OUT/bundle`` is written only for a point that meets every
budget, or, with ``accept_over_budget``, for the closest point, its manifest's ``budgets``
section saying ``"over_budget": true``. Otherwise no bundle is written and any earlier
``OUT/bundle`` is removed, so a missed budget never leaves a bundle that looks like a good
one; the report (``report.md``/``.json``) says what was missed, the stage folders and
``state.json`` stay so a rerun (other budgets, ``--accept-over-budget``) reuses every stage,
and the caller (the CLI) exits non-zero with one line per missed budget.

OUT follows the one output-folder policy (``edgeseg.outputs``), checked before any work: a new
folder, or one an earlier ``compress`` wrote (its ``.edgeseg-output.json`` marker), which is
resumed, or with ``overwrite`` replaced whole: the new run then works in a temporary folder
beside OUT that replaces it only at the end, so a failed run leaves the previous result. A
folder holding anything else, or one that is, lies inside or contains an input (the teacher,
the calibration, validation or training data) is refused. Leftovers of killed runs
(``.OUT.tmp-*``) are removed when the next run starts; a killed run never leaves ``bundle/``.

While it runs it says what it does (``edgeseg.compress.progress``): a plan line with the
estimated duration on this machine, one line as each stage starts and ends, and progress bars.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edgeseg.compress.final import final_bundle
from edgeseg.compress.progress import Estimate, Narrator, fmt_seconds, per_image_seconds
from edgeseg.compress.recipe import Recipe, default_job
from edgeseg.compress.report import markdown_report, plot_stages
from edgeseg.compress.stages import STAGES, Stage, StageResult, distill_checkpoint, prune_checkpoint
from edgeseg.data import folders as D
from edgeseg.errors import ConfigError
from edgeseg.model.checkpoint import CheckpointMeta, checkpoint_sha256, load_checkpoint
from edgeseg.outputs import MARKER, check_output, mark
from edgeseg.runners import open_model, torch_segmenter
from edgeseg.runtime.files import atomic_dir, atomic_write_json, atomic_write_text, clean_leftovers, read_json, size_mb

log = logging.getLogger(__name__)

__all__ = ["Compressor", "Recipe", "StageResult", "STAGES", "default_job", "prune_checkpoint",
           "distill_checkpoint"]

SHARED = ("teacher", "fold")  # measured once, before any candidate
POINTS = ("export", "quantize")  # the stages whose model can be shipped


class Compressor:
    """One compression run into ``out``; see the module doc for the output policy and what it
    says while it runs. ``overwrite`` replaces an earlier compress output whole (at the end)."""

    def __init__(self, checkpoint: str | Path, out: str | Path, recipe: Recipe, progress: bool = True,
                 overwrite: bool = False, accept_over_budget: bool = False, log: tuple[str, ...] = ()) -> None:
        self.checkpoint = Path(checkpoint)
        self.log = log  # [tracking] --log backends of the distillation's training run (edgeseg.track)
        self.out = Path(out)
        self.work = self.out  # where this run writes: OUT, or a temporary folder replacing it at the end
        self.recipe = recipe  # the run's recipe; the search sets it to each candidate's in turn
        self.base_recipe = recipe
        self.budgets = recipe.budgets()
        self.accept_over_budget = accept_over_budget
        self.distill_minutes: float | None = None  # the search's time allowance for one distillation
        self.progress = progress
        self.talk = Narrator(progress)
        _check_runtime(recipe.runtime)
        self.teacher, self.meta = load_checkpoint(self.checkpoint)
        self.mode = check_output(self.out, "compress", inputs=self._inputs(), overwrite=overwrite, resumable=True)
        self.pp = self.meta.preprocess
        self.val = D.discover(recipe.val or self._need("val"), recipe.val_split)
        self.calib_root = recipe.calib or self._need("calib")
        self.results: dict[str, StageResult] = {}
        self._val_pairs = None
        self._teacher_masks = None
        self.table: dict = {}  # the stage records being filled (state["stages"] or a candidate's)
        self.stages_dir = self.work / "stages"
        self.state = self._load_state()

    # ------------------------------------------------------------------ plumbing
    def _need(self, what: str):
        raise ConfigError(f"--{what} DIR is required (a folder of real, labelled images for {what})")

    def _inputs(self) -> list:
        r = self.recipe
        data = self.meta.provenance.get("data") if r.train is None and r.distill_epochs > 0 else None
        return [self.checkpoint, r.calib, r.val, r.train, data if isinstance(data, str) else None, r.distill_images]

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
            st["recipe"] = self.recipe.to_dict()  # the budgets may have changed
            st.setdefault("candidates", {})
            return st
        return {"checkpoint": self.checkpoint.name, "checkpoint_sha256": sha, "recipe": self.recipe.to_dict(),
                "stages": {}, "candidates": {}}

    def _path(self, recorded: str) -> Path:
        """A stage's recorded path: relative to OUT (the stages), or the teacher's own path."""
        p = Path(recorded)
        return p if p.is_absolute() else self.work / p

    def _done(self, name: str) -> StageResult | None:
        d = self.table.get(name)
        if d and self._path(d["path"]).exists():
            guarded = (d.get("notes") or {}).get("budgets_guarded")
            if guarded is not None and guarded != self.budgets.to_dict():
                self.talk.say(f"  {name}: the budgets changed since its INT8 guard ran: redoing it")
                return None
            return StageResult(**d)
        return None

    def _record(self, res: StageResult, seconds: float) -> StageResult:
        self.table[res.name] = asdict(res)
        atomic_write_json(self.state_file, self.state)
        drop = "" if res.dice_drop is None else f" ({-res.dice_drop:+.4f} vs the teacher)"
        fid = res.fidelity or {}
        agree = "" if "agreement" not in fid else (f", agreement {fid['agreement']:.4f}, "
                                                   f"{fid['lost_lesions']}/{fid['lesions']} lesions lost")
        self.talk.say(f"  {res.name} done in {fmt_seconds(seconds)}: Dice {_num(res.dice, '.4f')}{drop}{agree}, "
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

        from edgeseg.runtime.confidence import ReliabilityBins

        acc = MetricAccumulator(num_classes=len(self.meta.classes))
        bins = ReliabilityBins() if _has_probabilities(seg) else None  # [calibration] ECE from the same pass
        per, masks = {}, []
        for n, img, gt in self.talk.bar(self.val_pairs(), desc=f"{name}: scoring"):
            if bins is not None:
                mask, prob = seg.predict(img, probabilities=True)
                bins.add(prob, gt)
            else:
                mask = seg.predict(img)
            mask = np.asarray(mask)
            masks.append(mask)
            row = acc.add(mask, gt, name=n)
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
        if bins is not None:  # [calibration] compression changes calibration: the report shows it per stage
            res.notes["calibration"] = {"ece": bins.ece(), "temperature": getattr(seg, "temperature", None)}
        if name == "teacher":  # the reference: no drop against itself
            self.state["teacher_per_image"] = per
            self._teacher_masks = masks
            return res
        ref = self.state.get("teacher_per_image")
        if ref:
            res.dice_drop = self.results["teacher"].dice - res.dice
            drops = {k: ref[k] - per[k] for k in per if k in ref and not np.isnan(ref[k] - per[k])}
            if drops:
                worst = max(drops, key=drops.get)
                res.worst_image, res.worst_drop = worst, drops[worst]
                res.notes["per_image_drop"] = _distribution(list(drops.values()))
        res.fidelity = self.fidelity(masks, res.dice_drop)
        return res

    def teacher_masks(self) -> list:
        """The teacher's masks of the validation images (predicted again when the teacher stage
        was reused from an earlier run)."""
        if self._teacher_masks is None:
            seg = torch_segmenter(self.teacher.eval(), self.meta)
            self._teacher_masks = [np.asarray(seg.predict(img))
                                   for _, img, _ in self.talk.bar(self.val_pairs(), desc="teacher masks")]
        return self._teacher_masks

    def fidelity(self, masks: list, mean_drop: float | None) -> dict:
        """A stage's four budget figures against the teacher (``edgeseg.measure.budgets``)."""
        from edgeseg.measure.budgets import fidelity

        pairs = self.val_pairs()
        return fidelity(masks, self.teacher_masks(), [p[2] for p in pairs], [p[0] for p in pairs],
                        num_classes=len(self.meta.classes), quantile=self.budgets.image_quantile,
                        mean_drop=mean_drop, min_lesion_px=self.budgets.min_lesion_px,
                        grid=(self.pp.height, self.pp.width))

    def torch_stage(self, name, model, path, t0, notes=None) -> StageResult:
        import torch

        from edgeseg.prune import count_macs_params

        if self.recipe.threads:
            torch.set_num_threads(self.recipe.threads)
        macs, params = count_macs_params(model, self.pp.height, self.pp.width)
        return self.measure(name, torch_segmenter(model, self.meta), path, params, macs, "fp32", t0, notes)

    def onnx_stage(self, name, bundle_dir: Path, precision: str, t0, notes=None) -> StageResult:
        rt = self.recipe.runtime
        if rt == "auto":  # both runtimes timed side by side on this machine; the winner times the stage
            from edgeseg.measure.runtimes import time_runtimes

            timing = time_runtimes(bundle_dir, threads=self.recipe.threads, warmup=self.recipe.warmup,
                                   runs=self.recipe.runs)
            rt = timing.winner
            notes = {**(notes or {}), "runtimes": timing.to_dict()}
        seg = open_model(bundle_dir, threads=self.recipe.threads, **({} if rt == "onnxruntime" else {"runtime": rt}))
        return self.measure(name, seg, bundle_dir, _onnx_params(seg.bundle.model_file), None, precision, t0, notes)

    def dice_and_fidelity(self, seg) -> tuple[float, dict]:
        """A model's budget figures against the teacher on the validation images, and its mean
        Dice as the teacher's minus the figures' mean drop (per-image Dice only: none of the
        costlier metrics of a stage's scoring, so the INT8 guard can afford one per candidate)."""
        masks = [np.asarray(seg.predict(img)) for _, img, _ in self.talk.bar(self.val_pairs(), desc="scoring")]
        fig = self.fidelity(masks, None)
        return self.results["teacher"].dice - fig["mean_drop"], fig

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
        train_images = len(D.discover(*self.train_data()[:2])) if r.distill_epochs > 0 else 0
        if self.mode != "replace":
            clean_leftovers(self.out)
            return self._run(self.out, train_images)
        self.talk.say(f"--overwrite: the new result replaces {self.out} when it is complete")
        with atomic_dir(self.out) as tmp:
            report = self._run(tmp, train_images)
        self.work = self.out
        return report

    def _run(self, work: Path, train_images: int) -> dict:
        from edgeseg.compress.search import Search

        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        if not (work / MARKER).is_file():
            mark(work, "compress", teacher=self.checkpoint.name)
        atomic_write_json(self.state_file, self.state)
        self.estimate = Estimate(per_image_s=per_image_seconds(torch_segmenter(self.teacher, self.meta),
                                                               self.val_pairs()[0][1]),
                                 val_images=len(self.val), train_images=train_images,
                                 calib_images=int(self.calib.shape[0]), recipe=self.recipe)
        search = Search(self)
        search.plan()
        shared = [s for s in STAGES if s.name in SHARED]
        fold = self.run_chain(shared, self.checkpoint, self.state["stages"], work / "stages", search.stage_count)
        search.run(fold)
        t0 = time.perf_counter()
        self.talk.say("finishing: " + _WHAT_BUNDLE)
        report = self._finish(search)
        self.talk.say(f"  done in {fmt_seconds(time.perf_counter() - t0)}")
        return report

    def run_chain(self, stages: list[Stage], src: Path, table: dict, stages_dir: Path, count: int,
                  first: int = 1, label: str = "") -> Path:
        """Run (or reuse) ``stages`` in order from ``src``, recording each in ``table`` (a part of
        the state) and writing each into ``stages_dir/<stage>``; fills ``self.results``. Returns
        the last stage's path."""
        self.table, self.stages_dir = table, stages_dir
        for i, stage in enumerate(stages, first):
            out = self.checkpoint if stage.name == "teacher" else stages_dir / stage.name
            res = self._done(stage.name)
            if res is not None:
                self.talk.say(f"stage {i}/{count} {label}{stage.name}: reusing stage {stage.name} from a previous "
                              f"identical run ({res.path})")
            else:
                with self.talk.stage(i, count, stage.name, self.estimate.stage(stage.name), label):
                    res = stage.run(self, src, out)
                res = self._record(res, self.talk.last_elapsed)
            for key in ("warning", "kept_start"):  # said again when a finished stage is reused
                if res.notes.get(key):
                    log.warning("%s%s: %s", label, stage.name, res.notes[key])
            self.results[stage.name] = res
            src = self._path(res.path)
        return src

    def _finish(self, search) -> dict:
        """Choose the answer among the measured points and write what the budgets allow (see the
        module doc): the bundle, the report, the plots."""
        from edgeseg.compress.search import choose

        decision = choose(search.points, self.budgets)
        decision["accepted_over_budget"] = bool(not decision["met"] and self.accept_over_budget
                                                and decision["point"] is not None)
        decision["split"] = self.recipe.val_split
        decision["search"] = search.summary()
        bundle = self.work / "bundle"
        point = decision["point"]
        if point is not None:
            self.results = dict(search.chains[point["point"]])
        if point is not None and (decision["met"] or decision["accepted_over_budget"]):
            shutil.rmtree(bundle, ignore_errors=True)
            final_bundle(self, self._path(point["path"]), bundle, budgets=_manifest_budgets(decision))
        elif bundle.exists():  # an earlier run's bundle must not pass for this run's answer
            shutil.rmtree(bundle)
        return self._report(decision, search.points, bundle if bundle.exists() else None)

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

    def _report(self, decision: dict, points: list[dict], bundle: Path | None) -> dict:
        from edgeseg.compress.report import plot_points
        from edgeseg.measure.machine import machine_info

        report = {"checkpoint": str(self.checkpoint), "bundle": None if bundle is None else str(self.out / "bundle"),
                  "recipe": self.base_recipe.to_dict(), "calibration": self.calib_info,
                  "validation": {"data": self.recipe.val, "split": self.recipe.val_split, "images": len(self.val)},
                  "threads": self.recipe.threads, "machine": machine_info(),
                  "budgets": decision, "points": points,
                  "stages": [asdict(v) for v in self.results.values()]}
        atomic_write_json(self.work / "report.json", report)
        atomic_write_text(self.work / "report.md", markdown_report(report))
        for plot, path in ((plot_stages, "dice_vs_latency.png"), (plot_points, "agreement_vs_latency.png")):
            try:
                plot(report, self.work / path)
            except Exception as exc:  # noqa: BLE001 - a missing matplotlib must not lose the compression
                log.warning("no plot %s: %s", path, exc)
        return report


def _check_runtime(name: str) -> None:
    """Before any work: OpenVINO (``openvino``, or ``auto``, which times both) needs its extra."""
    if name == "onnxruntime":
        return
    import importlib.util

    if importlib.util.find_spec("edgeseg.measure.runtimes") is None:
        raise ConfigError(f"--runtime {name} needs edgeseg.measure.runtimes (the OpenVINO runner), which this "
                          "edgeseg does not have; use --runtime onnxruntime")
    if importlib.util.find_spec("openvino") is None:
        from edgeseg.errors import DependencyError

        raise DependencyError(f"--runtime {name} needs OpenVINO: pip install \"edgeseg[openvino]\"")


def _manifest_budgets(decision: dict) -> dict:
    """The bundle manifest's ``budgets`` section: the limits, this model's figures, met or not."""
    p = decision["point"]
    fig = p.get("fidelity") or {}
    return {"limits": decision["limits"], "split": decision.get("split"), "chosen": p["point"],
            "measured": {k: fig.get(k) for k in ("images", "mean_drop", "image_quantile", "image_drop", "agreement",
                                                 "lesions", "lost_lesions")},
            "met": decision["met"], "over_budget": not decision["met"], "missed": decision["lines"],
            "candidates_measured": len(decision["search"]["candidates"])}


_WHAT_BUNDLE = "the final bundle (the chosen model, the whole story in its manifest) and the report"


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


def _has_probabilities(seg) -> bool:
    """[calibration] Whether a stage's model gives probabilities (logits or probs outputs)."""
    return any(o.get("kind") in ("logits", "probs") for o in getattr(seg, "outputs", []) or [])
