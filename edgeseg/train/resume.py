"""Resuming training, and refusing to resume something else.

A training output folder holds the best checkpoint and, while the run is unfinished, its full
state in ``OUT/.resume/`` (weights, optimizer and scheduler, epoch, and the settings the run was
started with). A run that stopped early (killed, or its ``--time-budget`` spent) continues when
started again with the same settings; one with other settings is refused with one line naming
what differs. A finished run has no ``.resume`` and is never silently reused: training into it
again needs ``--overwrite``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeseg.errors import ConfigError
from edgeseg.outputs import check_output
from edgeseg.runtime.files import atomic_dir, atomic_write_json, read_json

RESUME_DIR = ".resume"
# options that change how fast or where a run goes, not what it learns: they may differ on resume
NOT_SETTINGS = ("out", "progress", "threads", "time_budget_min", "device", "log", "patience")
# settings added later, with the value runs recorded before them behaved as
EARLIER = {"scale_jitter": 0.0}


@dataclass
class TrainState:
    epoch: int = 0
    step: int = 0
    best_dice: float = -1.0
    best_epoch: int = -1
    history: list = field(default_factory=list)
    elapsed_s: float = 0.0
    settings: dict = field(default_factory=dict)
    stopped_early: str | None = None  # why the run stopped before its last epoch (--patience); None: it did not


def settings_of(cfg) -> dict:
    """The options that define what a run learns, as JSON (data as an absolute path)."""
    d = {k: v for k, v in asdict(cfg).items() if k not in NOT_SETTINGS}
    d["data"] = str(Path(cfg.data).resolve())
    for k in ("init", "config_file"):
        if d.get(k):
            d[k] = str(Path(d[k]).resolve())
    return json.loads(json.dumps(d))  # tuples -> lists, as stored


def differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k.replace('_', '-')} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def plan(cfg, overwrite: bool = False) -> tuple[str, TrainState | None]:
    """Before any work: 'new', 'replace' (--overwrite) or 'resume' with the state to resume."""
    out = Path(cfg.out)
    mode = check_output(out, "checkpoint", [cfg.data, cfg.init, cfg.config_file], overwrite=overwrite,
                        resumable=True)
    if mode != "resume":
        return mode, None
    state_file = out / RESUME_DIR / "state.json"
    if not state_file.is_file():
        meta = read_json(out / "edgeseg_checkpoint.json", error=ConfigError)
        t = meta.get("training") or {}
        raise ConfigError(f"-o {out} already holds a finished training run ({t.get('epochs', '?')} epochs, best val "
                          f"Dice {(meta.get('metrics') or {}).get('val', {}).get('mean_dice', '?')}); pass "
                          f"--overwrite to train again, or --init {out} -o NEW to fine-tune from it")
    raw = read_json(state_file, error=ConfigError)
    try:
        state = TrainState(**raw)
    except TypeError:
        raise ConfigError(f"{state_file} is not a resume state this edgeseg wrote; pass --overwrite to start "
                          "again") from None
    diff = differences({**EARLIER, **state.settings}, settings_of(cfg))
    if diff:
        raise ConfigError(f"-o {out} is an unfinished run with other settings ({'; '.join(diff)}); run again with "
                          "its settings to resume it, --overwrite to start again, or choose a new -o")
    return "resume", state


def save(out: Path, model, opt, sched, state: TrainState) -> None:
    import torch
    from safetensors.torch import save_file

    with atomic_dir(Path(out) / RESUME_DIR) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp / "optim.pt")
        atomic_write_json(tmp / "state.json", asdict(state))


def restore(out: Path, model, opt, sched, device) -> None:
    import torch
    from safetensors.torch import load_file

    d = Path(out) / RESUME_DIR
    model.load_state_dict(load_file(str(d / "model.safetensors"), device=str(device)))
    o = torch.load(d / "optim.pt", map_location=device, weights_only=True)
    opt.load_state_dict(o["optimizer"])
    sched.load_state_dict(o["scheduler"])
