"""One helper per file chore, shared by both halves (torch-free, numpy-free).

- :func:`atomic_dir`: write a folder under a temporary name beside its destination and rename
  it into place only when everything succeeded; a killed run leaves the old result or nothing.
- :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`atomic_write_json`: the same
  for one file (write, fsync, rename). A failed write (full disk, read-only, no permission) is a
  one-line :class:`WriteError` and leaves nothing behind.
- :func:`read_json`: a JSON file, or one clear error naming the file and what is wrong with it
  (malformed, nested too deeply, NaN/Infinity, not UTF-8); :func:`decode_text` the same for text.
- :func:`sha256_file`, :func:`size_mb`: checksums and sizes. Sizes are **MB = 10^6 bytes**
  everywhere in edgeseg (reports say "MB"); never MiB.
- :func:`json_clean`: replace NaN/inf by ``None`` so that JSON edgeseg writes is valid JSON.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from edgeseg.runtime.errors import EdgesegError

MB = 1_000_000
MAX_JSON_BYTES = 64 * MB
MAX_JSON_DEPTH = 64


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def size_mb(*paths: str | Path) -> float:
    """Total size of files (folders summed recursively) in MB (10^6 bytes)."""
    total = 0
    for p in map(Path, paths):
        if p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            total += p.stat().st_size
    return total / MB


def json_clean(o: Any) -> Any:
    """A copy of ``o`` that ``json.dumps(..., allow_nan=False)`` accepts: NaN/inf become None,
    tuples lists, numpy scalars and arrays Python numbers and lists, paths strings."""
    if isinstance(o, dict):
        return {str(k): json_clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_clean(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist") and not isinstance(o, (str, bytes)):  # numpy scalar or array
        return json_clean(o.tolist())
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def dumps(o: Any, indent: int | None = 2) -> str:
    """JSON text of ``o`` with NaN/inf written as null (never the invalid token NaN)."""
    return json.dumps(json_clean(o), indent=indent, allow_nan=False)


def _depth(o: Any, limit: int) -> None:
    stack = [(o, 1)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            raise ValueError(f"nested deeper than {limit} levels")
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)


def parse_json(text: str | bytes, what: str, error: Callable[[str], Exception] = ValueError,
               expect: type | None = dict) -> Any:
    """Parse JSON text; any problem becomes ``error("<what>: <reason>")``."""
    if isinstance(text, bytes):
        text = decode_text(text, what, error)
    try:
        obj = json.loads(text.removeprefix("\ufeff"), parse_constant=_refuse_constant, parse_float=_finite)
        _depth(obj, MAX_JSON_DEPTH)
    except RecursionError:
        raise error(f"{what} is not usable JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise error(f"{what} is not valid JSON: {exc}") from None
    if expect is not None and not isinstance(obj, expect):
        raise error(f"{what} must hold a JSON {'object' if expect is dict else expect.__name__}, "
                    f"got {type(obj).__name__}")
    return obj


_BOMS = ((b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe\x00\x00", "UTF-32"), (b"\xfe\xff", "UTF-16"),
         (b"\xff\xfe", "UTF-16"))


def decode_text(data: bytes, what: str, error: Callable[[str], Exception] = ValueError,
                other_encodings: bool = False) -> str:
    """UTF-8 text (a leading BOM dropped); any other encoding raises ``error`` with one line naming
    ``what`` and the encoding to use. ``other_encodings``: also read UTF-16/UTF-32 files that start
    with their byte-order mark (unambiguous) instead of refusing them."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            if other_encodings:
                try:
                    return data.decode(name.replace("-", "").lower())
                except UnicodeDecodeError:
                    break
            raise error(f"{what} is {name} text; save it as UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                    "save it as UTF-8") from None
    if "\x00" in text:
        hint = "; UTF-16 without a byte-order mark?" if text.count("\x00") * 3 > len(text) else ""
        raise error(f"{what} contains NUL bytes (a binary file{hint}); save it as UTF-8 text")
    return text.removeprefix("\ufeff")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise ValueError(f"{text} is out of the range of a number (it would read as infinity)")
    return value


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def read_json(path: str | Path, error: Callable[[str], Exception] = ValueError, expect: type | None = dict,
              what: str | None = None) -> Any:
    """Read a JSON file; a missing, unreadable, huge, non-UTF-8, malformed or wrongly shaped file
    raises ``error`` with one line naming the file."""
    path = Path(path)
    what = what or str(path)
    try:
        if path.is_dir():
            raise error(f"{what} is a folder, expected a JSON file")
        if path.stat().st_size > MAX_JSON_BYTES:
            raise error(f"{what} is larger than {MAX_JSON_BYTES // MB} MB; not a file edgeseg wrote")
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} not found") from None
    except OSError as exc:
        raise error(f"cannot read {what}: {exc.strerror or exc}") from None
    return parse_json(data, what, error, expect)


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class WriteError(EdgesegError, OSError):
    """An output that could not be written (full disk, read-only file system, no permission):
    one line for the user; still an ``OSError`` for code that catches those."""

    def __str__(self) -> str:
        return str(self.strerror)


# errors that can only come from writing: an OSError with one of these inside an atomic_dir
# block is reported as a failed write of the output (nothing of it is left behind)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _write_error(path: Path, exc: OSError) -> WriteError:
    return WriteError(exc.errno, f"cannot write {path}: {exc.strerror or exc}; nothing was written there")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename. Any
    failure leaves ``path`` as it was; an OSError becomes a one-line :class:`WriteError`."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    os.close(fd)
    try:
        _fsync_write(Path(tmp), data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise _write_error(path, exc) from None
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, dumps(obj) + "\n")


def clean_leftovers(out: Path) -> None:
    """Remove temporary folders/files that a killed run left beside ``out``."""
    parent = out.parent
    if not parent.is_dir():
        return
    for prefix in (f".{out.name}.tmp-", f".{out.name}.old-"):
        for p in parent.glob(prefix + "*"):
            if p.is_symlink() or p.is_file():
                p.unlink(missing_ok=True)
            else:
                shutil.rmtree(p, ignore_errors=True)


class atomic_dir:  # noqa: N801 - used as a context manager, like open()
    """``with atomic_dir(out) as tmp:`` write into ``tmp``; on success ``tmp`` replaces ``out``
    in one rename (an older ``out`` is moved aside first and removed after). On any error the
    temporary folder is removed and ``out`` is untouched. Leftovers of killed runs are cleaned
    when the next one starts.

    Whether ``out`` may be replaced at all is the caller's decision (see
    ``edgeseg.outputs``); this only makes the replacement all-or-nothing.
    """

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(self.out)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        self.tmp.chmod(0o755)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, OSError) and not isinstance(exc, WriteError) and exc.errno in WRITE_ERRNOS:
                raise _write_error(self.out, exc) from None
            return False
        old = None
        try:
            if self.out.exists() or self.out.is_symlink():
                old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
                os.replace(self.out, old)
            os.replace(self.tmp, self.out)
        except BaseException:
            if old is not None and not self.out.exists():
                os.replace(old, self.out)
                old = None
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        return False
