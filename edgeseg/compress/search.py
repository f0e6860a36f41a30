"""The search of ``edgeseg compress``: candidates from gentle to aggressive, the fastest that keeps every budget.

After the teacher and its folded copy are measured (once), each candidate is a chain of the
stage table (``edgeseg.compress.stages``) starting from the folded teacher:

``fold``        export (and INT8) of the folded teacher: lossless apart from INT8
``prune25``     25% of the Mix-FFN channels and 50% of the decode-head width removed, distilled
``prune50``     50% / 75%, distilled
``prune75``     75% / 75%, distilled
``prune50-depth<d>``  50% / 75% and half the blocks of every encoder stage dropped, distilled

Each chain's exported models, FP32 and INT8, are the *points* (without search, the recipe's
last stage is its only point): scored on the validation
images with every budget (``edgeseg.measure.budgets``) and timed on this machine with the
recipe's runtime. :func:`choose` picks the fastest point that meets every budget; when none
does, the closest (smallest scaled shortfall, ``budgets.shortfall``) is named.

Cached and resumable: each candidate's stages are recorded in ``state.json`` under
``candidates.<name>`` and written under ``OUT/candidates/<name>/``, so a rerun reuses every finished
stage (and the number of distillation epochs it chose), whatever time budget it is given.

Bounded by ``time_budget`` (minutes, for this invocation): before each candidate the time left
is shared among the distillations still to run (the other stages' estimates set aside); a
candidate's distillation gets that many epochs by the estimate of an epoch of *its own*
student (after pruning, a few training steps of the pruned student against the teacher are
timed on real images: :meth:`Search.measure_step`) and stops after the epoch that passes its
share, or earlier when validation agreement stops improving (``distill_patience``);
a candidate that does not fit at all (its stages' estimates with one epoch) is skipped and the
report says so. The ``fold`` candidate always runs. With ``search=False`` the one chain of the
recipe runs instead, straight under ``OUT/stages/`` (the layout and state of earlier versions),
with the recipe's own epochs and no time limit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgeseg.compress.progress import fmt_seconds
from edgeseg.compress.stages import STAGES
from edgeseg.measure.budgets import FIGURES, Budgets, check, miss_line, shortfall
from edgeseg.runtime.files import atomic_write_json

SHARED = ("teacher", "fold")
POINTS = ("export", "quantize")
_BY_NAME = {s.name: s for s in STAGES}
_WIDTHS = (("prune25", 0.25, 0.5), ("prune50", 0.5, 0.75), ("prune75", 0.75, 0.75))


@dataclass(frozen=True)
class Candidate:
    name: str
    overrides: dict = field(default_factory=dict)  # recipe fields this candidate sets
    stages: tuple[str, ...] = ()  # stage names after the shared teacher and fold
    flat: bool = False  # the one-recipe run (no search): stages straight under OUT/stages

    @property
    def distils(self) -> bool:
        return "distill" in self.stages


def candidates(recipe, teacher_depths) -> list[Candidate]:
    """The candidates for ``recipe`` (an ``edgeseg.compress.recipe.Recipe``) of a teacher whose
    encoder stages hold ``teacher_depths`` blocks."""
    if not recipe.search:
        names = tuple(s.name for s in STAGES if s.name not in SHARED and s.enabled(recipe))
        return [Candidate("recipe", {}, names, flat=True)]
    post = ("export", "quantize") if recipe.int8 else ("export",)
    dist = ("distill",) if recipe.distill_epochs > 0 else ()
    out = [Candidate("fold", {}, post)]
    free = {"stage_ratios": None, "target_macs": None, "depths": None}
    for name, ratio, dec in _WIDTHS:
        out.append(Candidate(name, {**free, "prune_ratio": ratio, "decoder_ratio": dec}, ("prune",) + dist + post))
    half = tuple(max(1, int(d) // 2) for d in teacher_depths)
    if half != tuple(int(d) for d in teacher_depths):
        out.append(Candidate(f"prune50-depth{''.join(map(str, half))}",
                             {**free, "prune_ratio": 0.5, "decoder_ratio": 0.75, "depths": half},
                             ("prune",) + dist + post))
    return out


class Search:
    """Runs the candidates of the compressor ``c`` (a ``Compressor`` whose teacher and fold
    stages are measured first) and collects their points."""

    def __init__(self, c) -> None:
        self.c = c
        self.base = c.recipe
        self.cands = candidates(self.base, list(getattr(c.teacher.config, "depths", []) or []))
        self.stage_count = len(SHARED) + sum(len(cd.stages) for cd in self.cands)
        self.points: list[dict] = []
        self.chains: dict[str, dict] = {}
        self.log: list[dict] = []
        self.t0 = time.monotonic()
        self.budget_s = None if self.base.time_budget is None or self._flat else self.base.time_budget * 60

    @property
    def _flat(self) -> bool:
        return self.cands[0].flat

    # ------------------------------------------------------------------ estimates
    def _epoch_s(self) -> float:
        e = self.c.estimate
        step = e.train_step_s if e.train_step_s is not None else 4 * self.base.batch_size * e.per_image_s
        return math.ceil(max(e.train_images, 1) / self.base.batch_size) * step + e.val_images * e.per_image_s

    def _fixed_s(self, cand: Candidate) -> float:
        """Estimated seconds of a candidate's stages other than distillation that are still to run."""
        done = self._holder(cand)["stages"]
        return sum(self.c.estimate.stage(s) for s in cand.stages if s != "distill" and not done.get(s))

    def _cost_s(self, cand: Candidate, epochs: int) -> float:
        return self._fixed_s(cand) + (epochs * self._epoch_s() if cand.distils else 0.0)

    def _left_s(self) -> float:
        return math.inf if self.budget_s is None else self.budget_s - (time.monotonic() - self.t0)

    def _share_s(self, cands: list[Candidate]) -> float:
        """Seconds of distillation for the next candidate: the time left, less the other stages'
        estimates, shared among the distillations still to run."""
        todo = [cd for cd in cands if cd.distils]
        return (self._left_s() - sum(self._fixed_s(cd) for cd in cands)) / max(len(todo), 1)

    def _epochs(self, cands: list[Candidate]) -> int:
        """Distillation epochs for the next candidate: as many as its share holds (at least one)."""
        if self.budget_s is None:
            return self.base.distill_epochs
        return int(min(self.base.distill_epochs, max(1, self._share_s(cands) // max(self._epoch_s(), 1e-9))))

    def plan(self) -> None:
        c, r = self.c, self.base
        shared = sum(c.estimate.stage(s) for s in SHARED if c.state["stages"].get(s) is None)
        todo = [cd for cd in self.cands if not self._finished(cd)]
        if not todo and not shared:
            c.talk.say(f"compress {c.checkpoint.name} -> {c.out}: every stage is reused from a previous identical run; "
                       f"budgets: {c.budgets.describe()}")
        elif self._flat:
            names = ", ".join(self.cands[0].stages)
            total = shared + self._cost_s(self.cands[0], r.distill_epochs) if todo else shared
            c.talk.say(f"compress {c.checkpoint.name} -> {c.out}: teacher, fold, {names} (the one recipe, no search; "
                       f"{r.distill_epochs} distillation epochs), then the bundle; every stage scored on "
                       f"{len(c.val)} validation images and timed ({r.warmup} + {r.runs} runs, "
                       f"{r.threads or 'all'} threads); about {fmt_seconds(total)} on this machine")
        else:
            full = shared + sum(self._cost_s(cd, r.distill_epochs) for cd in todo)
            epochs = self._epochs(todo)
            bounded = shared + sum(self._cost_s(cd, epochs) for cd in todo)
            limit = "no time budget" if self.budget_s is None else f"time budget {fmt_seconds(self.budget_s)}"
            c.talk.say(f"compress {c.checkpoint.name} -> {c.out}: search over {len(self.cands)} candidates "
                       f"({', '.join(cd.name for cd in self.cands)}; {len(self.cands) - len(todo)} already measured), "
                       f"each scored on {len(c.val)} validation images and timed ({r.runtime}, {r.threads or 'all'} "
                       f"threads); budgets: {c.budgets.describe()}; {limit}: about {fmt_seconds(bounded)} on this "
                       f"machine with about {epochs} distillation epoch(s) per candidate (all "
                       f"{r.distill_epochs} epochs: about {fmt_seconds(full)}; the teacher takes "
                       f"{c.estimate.per_image_s * 1000:.0f} ms per image here)")

    # ------------------------------------------------------------------ running
    def _holder(self, cand: Candidate) -> dict:
        st = self.c.state
        if cand.flat:
            return st
        return st.setdefault("candidates", {}).setdefault(cand.name, {"overrides": _jsonable(cand.overrides),
                                                                      "stages": {}})

    def _finished(self, cand: Candidate) -> bool:
        table = self._holder(cand)["stages"]
        return all(table.get(s) and self.c._path(table[s]["path"]).exists() for s in cand.stages)

    def run(self, fold_path: Path) -> None:
        c = self.c
        shared = dict(c.results)
        first = len(SHARED) + 1
        for k, cand in enumerate(self.cands):
            holder = self._holder(cand)
            entry = {"candidate": cand.name, "overrides": _jsonable(cand.overrides)}
            finished = self._finished(cand)
            epochs = holder.get("epochs") or self._epochs(self.cands[k:])
            if not finished and k > 0 and self._left_s() < self._cost_s(cand, 1):
                entry.update(status="skipped", reason=f"time budget: {fmt_seconds(max(self._left_s(), 0))} left, "
                                                      f"the candidate needs about {fmt_seconds(self._cost_s(cand, 1))}")
                c.talk.say(f"candidate {cand.name}: skipped ({entry['reason']})")
                self.log.append(entry)
                first += len(cand.stages)
                continue
            recipe = replace(self.base, **cand.overrides)
            c.recipe, c.results, c.estimate.recipe = recipe, dict(shared), recipe
            t0 = time.monotonic()
            try:
                stages = [_BY_NAME[s] for s in cand.stages]
                out_dir = c.work / "stages" if cand.flat else c.work / "candidates" / cand.name
                label = "" if cand.flat else f"{cand.name}: "
                src, at = fold_path, first
                if cand.distils and not cand.flat:
                    if not holder.get("epochs"):  # decided once, by this candidate's own student
                        cut = cand.stages.index("distill")
                        src = c.run_chain(stages[:cut], src, holder["stages"], out_dir, self.stage_count, first=at,
                                          label=label)
                        stages, at = stages[cut:], at + cut
                        self.measure_step(src, cand)
                        epochs = self._epochs(self.cands[k:])
                    holder["epochs"] = int(epochs)
                    atomic_write_json(c.state_file, c.state)  # a rerun resumes this distillation with these epochs
                    recipe = replace(recipe, distill_epochs=int(epochs))
                    # a safety net: stop after the epoch that passes its share (with a margin for the estimate)
                    share = self._share_s(self.cands[k:])
                    c.distill_minutes = None if math.isinf(share) else max(1.25 * share, 60) / 60
                    c.recipe = c.estimate.recipe = recipe
                c.run_chain(stages, src, holder["stages"], out_dir, self.stage_count, first=at, label=label)
            finally:
                c.recipe, c.distill_minutes, c.estimate.recipe = self.base, None, self.base
            first += len(cand.stages)
            entry.update(status="reused" if finished else "measured", seconds=round(time.monotonic() - t0, 1),
                         epochs=recipe.distill_epochs if cand.distils else 0)
            self.log.append(entry)
            self._collect(cand, dict(c.results))
        c.results = dict(shared)

    def measure_step(self, student_path: Path, cand: Candidate) -> float:
        """Time a few distillation steps of the student at ``student_path`` (the pruned model)
        against the teacher, on a batch of the calibration images; the estimate of an epoch uses
        it from now on. Returns seconds per step."""
        import copy

        import torch

        from edgeseg.compress.progress import time_train_steps
        from edgeseg.distill import DistillConfig, make_loss
        from edgeseg.model.checkpoint import load_checkpoint
        from edgeseg.train.loop import pick_device

        c, r = self.c, self.c.recipe
        device = pick_device(r.device)  # where the distillation will train
        student, _ = load_checkpoint(student_path)
        student.to(device)
        calib = c.calib
        idx = [i % len(calib) for i in range(r.batch_size)]
        x = torch.from_numpy(calib[idx]).to(device)
        y = torch.zeros((len(idx), x.shape[2], x.shape[3]), dtype=torch.uint8, device=device)
        teacher = copy.deepcopy(c.teacher).to(device)
        loss = make_loss(teacher, DistillConfig(temperature=r.temperature, alpha=r.alpha,
                                                feature_weight=r.feature_weight), None, 1.0, student)
        step = time_train_steps(student, loss, x, y)
        del teacher, student
        c.estimate.train_step_s = step
        c.talk.say(f"  {cand.name}: a distillation step of this student takes {step:.2f} s here (measured): an "
                   f"epoch about {fmt_seconds(self._epoch_s())}")
        return step

    def _collect(self, cand: Candidate, chain: dict) -> None:
        names = list(chain)
        # the one recipe's answer is its last stage (what the user asked for); a search's are
        # every exported model
        for stage in (names[-1:] if cand.flat else POINTS):
            if stage not in chain or stage not in POINTS:
                continue
            res = chain[stage]
            name = f"{cand.name}/{res.precision}"
            self.chains[name] = {k: chain[k] for k in names[:names.index(stage) + 1]}
            self.points.append({"point": name, "candidate": cand.name, "stage": stage, "path": res.path,
                                "precision": res.precision, "runner": res.runner, "p50_ms": res.p50_ms,
                                "p90_ms": res.p90_ms, "noisy": bool(res.noisy_reason), "size_mb": res.size_mb,
                                "params": res.params, "dice": res.dice, "dice_drop": res.dice_drop,
                                "fidelity": res.fidelity or {}})

    def summary(self) -> dict:
        return {"mode": "recipe" if self._flat else "search", "runtime": self.base.runtime,
                "time_budget_min": None if self.budget_s is None else self.budget_s / 60,
                "elapsed_s": round(time.monotonic() - self.t0, 1), "candidates": self.log}


def _jsonable(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def pareto(points: list[dict]) -> None:
    """Mark each point ``pareto``: no other point is at least as fast and agrees at least as well
    with the teacher, and strictly better in one of the two."""
    def key(p):
        return (p.get("p50_ms") or math.inf, -((p.get("fidelity") or {}).get("agreement") or 0.0))

    for p in points:
        a = key(p)
        p["pareto"] = not any(key(q) != a and key(q)[0] <= a[0] and key(q)[1] <= a[1] for q in points if q is not p)


def choose(points: list[dict], budgets: Budgets) -> dict:
    """The decision: the fastest point meeting every budget (ties: the smaller), else the closest
    one; each point gets ``missed`` and ``met``. Returns ``{"point", "met", "lines", "limits"}``
    where ``lines`` name each missed budget (empty when met)."""
    for p in points:
        p["missed"] = check(p.get("fidelity") or {}, budgets)
        p["met"] = not p["missed"]
    pareto(points)
    limits = budgets.to_dict()
    met = [p for p in points if p["met"]]
    if met:
        best = min(met, key=lambda p: (p.get("p50_ms") or math.inf, p.get("size_mb") or math.inf))
        return {"point": best, "met": True, "lines": [], "limits": limits}
    if not points:
        return {"point": None, "met": False, "limits": limits,
                "lines": ["over budget: no candidate was measured (time budget too small?)"]}
    best = min(points, key=lambda p: shortfall(p.get("fidelity") or {}, budgets))
    lines = []
    for m in best["missed"]:
        key = next(f[0] for f in FIGURES if f[2] == m["budget"])
        vals = [(p["fidelity"].get(key), p["point"]) for p in points if p.get("fidelity", {}).get(key) is not None]
        line = miss_line(m, closest=best["point"])
        if vals and len(points) > 1:
            v, who = (min if m["kind"] == "max" else max)(vals, key=lambda t: t[0])
            line += f"; best of {len(points)} points: {v:.4f} ({who})" if isinstance(v, float) else \
                f"; best of {len(points)} points: {v} ({who})"
        lines.append(line)
    return {"point": best, "met": False, "lines": lines, "limits": limits}
