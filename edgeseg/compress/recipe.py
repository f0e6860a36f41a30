"""The compression recipe: every option of ``edgeseg compress``, as one frozen dataclass.

A :class:`Recipe` comes from command-line flags (``Recipe(**flags)``) or a JSON file
(:meth:`Recipe.from_file`, flags given on the command line override the file), is checked
when it is built (unknown keys, wrong types, NaN and out-of-range numbers, unknown INT8
targets: one ``ConfigError`` line each), and is recorded in ``OUT/state.json``. A resumed run
compares its recipe with the recorded one; :meth:`Recipe.diff` names every option that
changed, so the refusal can say which. :func:`default_job` is the demo's teacher and recipe.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from edgeseg.errors import ConfigError
from edgeseg.runtime.files import read_json

EMBEDDED = Path(__file__).resolve().parents[2] / "calibration_data"


def target_names() -> tuple[str, ...]:
    """The INT8 targets compress accepts: the quantize package's table."""
    from edgeseg.quantize import TARGETS

    return tuple(TARGETS)


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
    distill_lr: float = 1e-4  # benchmarks/results/distill_settings.md
    distill_patience: int | None = 3  # stop after this many epochs without better validation agreement (0: never)
    distill_scale_jitter: float = 0.2  # zoom augmentation (random crops of 80-100% of each side)
    batch_size: int = 8
    temperature: float = 2.0
    alpha: float = 1.0  # the teacher's soft targets only: compress distils towards agreement with the teacher
    feature_weight: float = 0.0
    device: str = "auto"
    # quantize
    int8: bool = True
    target: str = "cpu"  # a name of edgeseg.quantize.TARGETS
    calib_method: str = "percentile"
    max_dice_drop: float | None = 0.01
    # budgets (edgeseg.measure.budgets): they choose among measured candidates, so changing them
    # never invalidates a finished stage (see CHOOSING)
    max_image_drop: float | None = 0.05
    image_quantile: float = 0.95
    min_agreement: float | None = 0.95
    max_lost_lesions: int | None = 0
    min_lesion_px: int = 9  # what counts as a lesion for max_lost_lesions (pixels at the model's input)
    # search (edgeseg.compress.search): candidates from gentle to aggressive, the fastest that
    # meets every budget wins; off: the one recipe above
    search: bool = True
    time_budget: float | None = 60.0  # minutes for the whole search (None: no limit)
    distill_images: str | None = None  # extra images, masks not needed, for the KL term
    runtime: str = "onnxruntime"  # what ONNX stages are timed with: onnxruntime, openvino, auto
    # timing
    threads: int | None = 2
    runs: int = 30
    warmup: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"recipe option {f.name} must be a finite number, got {v}")
        self._check_ranges()
        if self.runs < 1 or self.warmup < 0 or self.batch_size < 1:
            raise ConfigError("runs and batch_size must be >= 1, warmup >= 0")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.target not in target_names():
            raise ConfigError(f"unknown --target {self.target!r}; choose {', '.join(target_names())}")
        if self.max_dice_drop is not None and not 0 <= self.max_dice_drop < 1:
            raise ConfigError("--max-dice-drop must be in [0, 1)")
        if self.temperature <= 0 or not 0 <= self.alpha <= 1 or self.feature_weight < 0:
            raise ConfigError("distillation needs temperature > 0, alpha in [0, 1] and feature_weight >= 0")
        self.budgets()  # checked here, before any work
        if self.time_budget is not None and self.time_budget <= 0:
            raise ConfigError(f"--time-budget must be > 0 minutes, got {self.time_budget}")
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"unknown --runtime {self.runtime!r}; choose {', '.join(RUNTIMES)}")

    def budgets(self):
        """The four budgets as an ``edgeseg.measure.budgets.Budgets``."""
        from edgeseg.measure.budgets import Budgets

        return Budgets(max_dice_drop=self.max_dice_drop, max_image_drop=self.max_image_drop,
                       image_quantile=self.image_quantile, min_agreement=self.min_agreement,
                       max_lost_lesions=self.max_lost_lesions, min_lesion_px=self.min_lesion_px)

    def _check_ranges(self) -> None:
        """Every pruning, distillation and data number in its range, named by its key, so a bad
        value is refused before the first stage writes anything (not when its stage starts)."""
        from edgeseg.checks import integer, number
        from edgeseg.prune import IMPORTANCE
        from edgeseg.quantize.static import CALIBRATION_METHODS

        for key in ("prune_ratio", "decoder_ratio"):
            if getattr(self, key) is not None:
                number(key, getattr(self, key), 0, 1, hi_open=True)
        for v in self.stage_ratios or ():
            number("stage_ratios", v, 0, 1, hi_open=True)
        if self.target_macs is not None:
            number("target_macs", self.target_macs, 0, 1, lo_open=True, hi_open=True)
        for d in self.depths or ():
            integer("depths (blocks kept per stage)", d, 1)
        number("distill_lr", self.distill_lr, 0, 1, lo_open=True, hi_open=True)
        integer("distill_epochs", self.distill_epochs, 0)
        if self.distill_patience is not None:
            integer("distill_patience", self.distill_patience, 0)  # 0: no early stopping
        number("distill_scale_jitter", self.distill_scale_jitter, 0, 1, hi_open=True)
        integer("calib_count", self.calib_count, 1)
        integer("seed", self.seed, 0)
        if self.importance not in IMPORTANCE:
            raise ConfigError(f"unknown importance {self.importance!r}; choose {', '.join(IMPORTANCE)}")
        if self.calib_method not in CALIBRATION_METHODS:
            raise ConfigError(f"unknown calib_method {self.calib_method!r}; choose {', '.join(CALIBRATION_METHODS)}")

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> Recipe:
        """A recipe JSON file; ``overrides`` that are not None win over the file's values."""
        p = Path(path)
        d = read_json(p, ConfigError, what=f"recipe {p}")
        return cls.from_dict(d, where=f"recipe {p}", **overrides)

    @classmethod
    def from_dict(cls, d: dict, where: str = "recipe", **overrides) -> Recipe:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"{where} has unknown key(s): {', '.join(unknown)}; known: {', '.join(known)}")
        d = {**d, **{k: v for k, v in overrides.items() if v is not None}}
        for k, v in d.items():
            d[k] = _typed(k, v, known[k].type, where)
        return cls(**d)

    def to_dict(self) -> dict:
        """The JSON form recorded in state.json, reports and bundles (tuples as lists)."""
        d = asdict(self)
        for k in ("stage_ratios", "depths"):
            if d.get(k) is not None:
                d[k] = list(d[k])
        return d

    def diff(self, recorded: dict) -> list[str]:
        """Each option whose value differs from ``recorded`` (a :meth:`to_dict`), as
        ``"name: recorded -> now"``; empty when they are the same recipe. The options that only
        choose among finished stages (:data:`CHOOSING`) are not compared, and an option a
        recipe recorded by an older edgeseg lacks counts as what that edgeseg did
        (:data:`EARLIER`), else as its default."""
        now = self.to_dict()
        defaults = Recipe().to_dict()
        keys = [k for k in list(now) + [k for k in recorded if k not in now] if k not in CHOOSING]
        missing = object()
        out = []
        for k in keys:
            a, b = recorded.get(k, EARLIER.get(k, defaults.get(k, missing))), now.get(k, missing)
            if a != b:
                out.append(f"{k}: {'(absent)' if a is missing else a!r} -> {'(absent)' if b is missing else b!r}")
        return out


_NUMBER = (int, float)
RUNTIMES = ("onnxruntime", "openvino", "auto")
# options that choose among measured candidates (or bound the time spent measuring them): a
# resumed run may change them without redoing any stage
CHOOSING = frozenset({"max_image_drop", "image_quantile", "min_agreement", "max_lost_lesions", "time_budget"})
# options added later, with the value recipes recorded before them behaved as (no early stopping,
# no zoom augmentation): an older finished distillation is not taken for one with the new defaults
EARLIER = {"distill_patience": None, "distill_scale_jitter": 0.0}
# (distill_lr and alpha changed default too, 3e-4 -> 1e-4 and 0.5 -> 1.0: recipes record them, so an
# older state compares against its recorded values)


def _typed(name: str, value: Any, annotation: str, where: str) -> Any:
    """``value`` checked against the field's annotation (a string, as with postponed
    annotations); lists become tuples for tuple fields. Wrong types give one ConfigError line."""
    optional = "None" in annotation
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: {name} may not be null")
    base = annotation.replace(" | None", "")

    def bad() -> ConfigError:
        return ConfigError(f"{where}: {name} must be {base}, got {type(value).__name__} {value!r}")

    if base.startswith("tuple"):
        if not isinstance(value, (list, tuple)) or not value:
            raise bad()
        elem = int if "int" in base else float
        if any(isinstance(v, bool) or not isinstance(v, _NUMBER) or (elem is int and not isinstance(v, int))
               for v in value):
            raise bad()
        return tuple(elem(v) for v in value)
    if base == "bool":
        if not isinstance(value, bool):
            raise bad()
    elif base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
    elif base == "float":
        if isinstance(value, bool) or not isinstance(value, _NUMBER):
            raise bad()
        value = float(value)
    elif base == "str" and not isinstance(value, str):
        raise bad()
    return value


def default_job() -> tuple[Path, dict]:
    """The README's main job (``edgeseg compress`` with no arguments): the embedded demo teacher
    and the embedded synthetic image set, with settings sized for a demo of about two minutes on
    two CPU cores (``benchmarks/demo_compress.py`` measures it). Only the demo uses them; it is
    the search with the default budgets (every stage runs: up to 12 distillation epochs, 10
    timed runs per stage, the full INT8 guard) bounded by a 5-minute time budget, so the
    candidates that do not fit are skipped and said so. The one fixed recipe it ran before
    (prune 50%, 12 epochs) missed the lost-lesions budget on the embedded images (3 of 25
    lesions lost): the search's lossless tier (fold) always meets the budgets."""
    teacher = EMBEDDED / "teacher"
    if not (teacher / "model.safetensors").is_file():
        raise ConfigError(f"the embedded demo teacher is missing ({teacher}); run edgeseg from its source tree")
    d = str(EMBEDDED)
    return teacher, {"calib": d, "calib_split": "calibration", "calib_count": 16, "val": d, "val_split": "val",
                     "train": d, "train_split": "train", "distill_epochs": 12, "runs": 10, "warmup": 3,
                     "time_budget": 5.0}
