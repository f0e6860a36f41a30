"""The service's request log: one JSON line per request (and per feedback), rotated by size.

Each ``segment`` line holds the time, request id, model version and bundle sha256, latency,
image size, drift score and flag, predicted area per class and the mean confidence; each
``feedback`` line the request it scores and its Dice, false-positive and false-negative area.
No image data is written unless the service was started with ``keep_images`` (then the
request's body is saved beside the log as ``images/<request id>.<ext>``).

Files: ``requests.jsonl`` (newest), ``requests.jsonl.1`` ... ``requests.jsonl.<backups>``
(older); :func:`read_log` reads a file or a whole log folder back, oldest line first.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from edgeseg.runtime.errors import InputError
from edgeseg.runtime.files import dumps

LOG_NAME = "requests.jsonl"
EXT = {"PNG": "png", "JPEG": "jpg", "TIFF": "tif"}


class RequestLog:
    def __init__(self, folder: str | Path, max_bytes: int = 10_000_000, backups: int = 5,
                 keep_images: bool = False) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / LOG_NAME
        self.max_bytes, self.backups, self.keep_images = max_bytes, backups, keep_images
        self._lock = threading.Lock()

    def _rotate(self) -> None:
        for i in range(self.backups - 1, 0, -1):
            src = self.folder / f"{LOG_NAME}.{i}"
            if src.exists():
                os.replace(src, self.folder / f"{LOG_NAME}.{i + 1}")
        if self.backups > 0:
            os.replace(self.path, self.folder / f"{LOG_NAME}.1")
        else:
            self.path.unlink()

    def write(self, entry: dict) -> None:
        line = (dumps(entry, indent=None) + "\n").encode("utf-8")
        with self._lock:
            if self.path.exists() and self.path.stat().st_size + len(line) > self.max_bytes:
                self._rotate()
            with open(self.path, "ab") as f:
                f.write(line)

    def save_image(self, request_id: str, data: bytes, kind: str | None) -> str | None:
        if not self.keep_images:
            return None
        folder = self.folder / "images"
        folder.mkdir(exist_ok=True)
        name = f"{request_id}.{EXT.get(kind or '', 'bin')}"
        (folder / name).write_bytes(data)
        return f"images/{name}"


def log_files(path: str | Path) -> list[Path]:
    """The log files at ``path`` (a file, or a folder holding requests.jsonl*), oldest first."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"request log not found: {path}")
    files = [p for p in path.glob(f"{LOG_NAME}*") if p.is_file()]

    def age(p: Path) -> int:
        suffix = p.name[len(LOG_NAME):].lstrip(".")
        return int(suffix) if suffix.isdigit() else 0

    files.sort(key=age, reverse=True)
    if not files:
        raise InputError(f"{path} holds no {LOG_NAME}: point at the folder given to `edgeseg serve --log`")
    return files


def read_log(path: str | Path) -> list[dict]:
    """Every entry of a log (file or folder), oldest first; a malformed line is one clear error."""
    entries = []
    for f in log_files(path):
        for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
            except ValueError:
                raise InputError(f"{f}:{n} is not a JSON line (not a request log written by edgeseg serve?)") from None
            if not isinstance(e, dict):
                raise InputError(f"{f}:{n} is not a JSON object")
            entries.append(e)
    return entries


__all__ = ["LOG_NAME", "RequestLog", "log_files", "read_log"]
