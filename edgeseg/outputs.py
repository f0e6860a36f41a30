"""One output-folder policy for every command, checked before any work is done.

An output folder is either new (absent or empty), or one that the same kind of edgeseg command
wrote earlier, recognised by its own signature (a checkpoint's ``edgeseg_checkpoint.json``, a
bundle's ``edgeseg.json``, or the ``.edgeseg-output.json`` marker that other commands write; a
``compress`` folder made before it wrote a marker is known by its ``state.json``).
Such a folder is replaced, atomically and only at the end, when the user says ``--overwrite``;
otherwise it is refused with one line. A folder holding anything else is never touched, with
or without ``--overwrite``. An output that is one of the command's inputs, lies inside one, or
contains one is refused (predictions never land on the ground-truth masks); so is one under a
file or in a folder that cannot be written. :func:`check_output_file` applies the same rules to a
single output file (``--json``, ``--csv``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable

from edgeseg.errors import ConfigError
from edgeseg.runtime.files import atomic_write_json, read_json

MARKER = ".edgeseg-output.json"
META_FILE = "edgeseg_checkpoint.json"  # the checkpoint's own record (edgeseg.model.checkpoint)
BUNDLE_FILE = "edgeseg.json"
COMPRESS_STATE = "state.json"  # edgeseg compress's record of its stages (edgeseg.compress.pipeline)


def signature(path: Path) -> str | None:
    """Which kind of edgeseg output a folder is: 'checkpoint', 'bundle', a marked kind, or None."""
    if (path / META_FILE).is_file():
        return "checkpoint"
    if (path / BUNDLE_FILE).is_file():
        return "bundle"
    if (path / MARKER).is_file():
        try:
            kind = read_json(path / MARKER, error=ConfigError).get("kind")
        except ConfigError:
            return None
        return kind if isinstance(kind, str) else None
    if (path / COMPRESS_STATE).is_file():  # a compress run from before the marker existed
        try:
            st = read_json(path / COMPRESS_STATE, error=ConfigError)
        except ConfigError:
            return None
        return "compress" if {"checkpoint_sha256", "recipe", "stages"} <= set(st) else None
    return None


def _related(out: Path, inp: Path) -> str | None:
    if out == inp:
        return "is"
    if inp in out.parents:
        return "lies inside"
    if out in inp.parents:
        return "contains"
    return None


def _refuse_inputs(out: Path, flag: str, inputs: Iterable[str | Path | None], refused: tuple[str, ...],
                   advice: str) -> None:
    real = out.resolve()
    for inp in inputs:
        if inp is None:
            continue
        rel = _related(real, Path(inp).resolve())
        if rel in refused:
            raise ConfigError(f"{flag} {out} {rel} the input {inp}: {advice} (edgeseg never writes into what it reads)")


def check_output(out: str | Path, kind: str, inputs: Iterable[str | Path | None] = (), overwrite: bool = False,
                 resumable: bool = False, flag: str = "-o") -> str:
    """Decide, before any work, what may happen at ``out``: 'new', 'replace' (--overwrite of an
    earlier output of this kind) or 'resume' (an earlier output of this kind, when the command
    can resume). Raises ConfigError with one line otherwise."""
    out = Path(out)
    real = out.resolve()
    _refuse_inputs(out, flag, inputs, ("is", "lies inside", "contains"), "choose an output folder outside the inputs")
    for parent in real.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"{flag} {out}: {parent} is a file, not a folder")
    if out.is_symlink():
        raise ConfigError(f"{flag} {out} is a link; give a real folder")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {out} is a file; give a folder")
    existing = next((p for p in [real, *real.parents] if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {out}: {existing} is not writable")
    if not out.exists() or not any(out.iterdir()):
        return "new"
    found = signature(out)
    if found != kind:
        what = f"an edgeseg {found} output" if found else "files edgeseg did not write"
        raise ConfigError(f"{flag} {out} already holds {what}; edgeseg writes a {kind} only into a new folder "
                          f"or one it wrote itself: choose another folder")
    if overwrite:
        return "replace"
    if resumable:
        return "resume"
    raise ConfigError(f"{flag} {out} holds an earlier edgeseg {kind} output; pass --overwrite to replace it, "
                      "or choose a new folder")


def check_output_file(path: str | Path | None, flag: str, inputs: Iterable[str | Path | None] = (),
                      overwrite: bool = False) -> Path | None:
    """The same policy for a single output file (``--json FILE``, ``--csv FILE``), checked before
    any work: not a folder, not under a file, in a folder that exists or can be created and is
    writable, and neither one of the inputs nor inside one. The file itself is then written
    atomically (``edgeseg.runtime.files.atomic_write_*``). None passes through."""
    if path is None:
        return None
    path = Path(path)
    real = path.resolve()
    _refuse_inputs(path, flag, inputs, ("is", "lies inside"), "write results outside the inputs")
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file name")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise ConfigError(f"{flag} {path} already exists; pass --overwrite to replace it, or give a new file name "
                          "(edgeseg never overwrites a file silently)")
    for parent in real.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder")
    existing = next((p for p in real.parents if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: {existing} is not writable")
    return path


def check_output_files(files: dict[str, str | Path | None], inputs: Iterable[str | Path | None] = (),
                       overwrite: bool = False) -> None:
    """:func:`check_output_file` for each ``{flag: path}`` given, and no two of them the same file."""
    seen: dict[Path, str] = {}
    inputs = list(inputs)
    for flag, path in files.items():
        if path is None:
            continue
        check_output_file(path, flag, inputs, overwrite)
        real = Path(path).resolve()
        if real in seen:
            raise ConfigError(f"{flag} and {seen[real]} name the same file {path}; give each its own")
        seen[real] = flag


def mark(folder: Path, kind: str, **info) -> Path:
    """Write the marker that lets a later run recognise ``folder`` as its own output."""
    from edgeseg import __version__

    return atomic_write_json(Path(folder) / MARKER, {"kind": kind, "edgeseg": __version__,
                                                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                                     **info})
