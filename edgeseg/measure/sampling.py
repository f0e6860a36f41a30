"""Background samplers that watch a block of code while it runs: memory and (on a Jetson) power.

:class:`Sampler` is the one thread base: ``with SomeSampler() as s:`` samples once on entry,
then every ``every_s`` seconds in a daemon thread, and once more on exit. Subclasses only say
what one sample is (:meth:`Sampler.sample`) and whether there is anything to sample
(:meth:`Sampler.available`).

- :class:`RssSampler`: the resident set size (Linux ``/proc/self/statm``, else psutil when
  installed, else nothing) and its maximum during the block.
- :class:`PowerSampler`: the total input power of a Jetson module from its INA3221 monitors
  (``/sys/bus/i2c/drivers/ina3221``), and the energy per image it implies.

Memory figures are in MB = 10^6 bytes, like every size in edgeseg.
"""

from __future__ import annotations

import os
import sys
import abc
import threading
from pathlib import Path

import numpy as np

from edgeseg.runtime.files import MB

SAMPLE_EVERY_S = 0.01
INA3221_ROOT = "/sys/bus/i2c/drivers/ina3221"


class Sampler(abc.ABC):
    """Calls :meth:`sample` on entry, every ``every_s`` seconds in a thread, and on exit.
    Subclasses say what one sample is (RSS, power)."""

    thread_name = "edgeseg-sampler"

    def __init__(self, every_s: float = SAMPLE_EVERY_S) -> None:
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abc.abstractmethod
    def sample(self) -> None:
        """Take one reading (called from the sampling thread)."""

    def available(self) -> bool:
        """Whether there is anything to sample here (no thread is started otherwise)."""
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def __enter__(self):
        if self.available():
            self.sample()
            self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.sample()


# --------------------------------------------------------------------------- memory
def maxrss_mb() -> float | None:
    """The process's resident-set high-water mark (``getrusage``), in MB."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / MB if sys.platform == "darwin" else r * 1024 / MB  # bytes on macOS, KiB elsewhere


def current_rss_mb() -> float | None:
    """Resident set size now in MB (Linux /proc, else psutil when installed, else None)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss / MB


class RssSampler(Sampler):
    """The resident set while a block runs: ``start_mb`` (on entry), ``max_mb``, ``samples``."""

    thread_name = "edgeseg-rss"

    def __init__(self, every_s: float = SAMPLE_EVERY_S) -> None:
        super().__init__(every_s)
        self.start_mb = current_rss_mb()
        self.max_mb: float | None = None
        self.samples = 0

    def available(self) -> bool:
        return self.start_mb is not None

    def sample(self) -> None:
        v = current_rss_mb()
        if v is not None:
            self.samples += 1
            self.max_mb = v if self.max_mb is None else max(self.max_mb, v)


# --------------------------------------------------------------------------- Jetson power
def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def power_rails(root: str = INA3221_ROOT) -> list[tuple[str, Path, Path]]:
    """Jetson INA3221 power monitors: [(label, millivolt file, milliamp file)], [] elsewhere.

    The module's total input rail (VDD_IN, or POM_5V_IN on older boards) comes first when present."""
    rails = []
    for label_file in sorted(Path(root).glob("*/hwmon/hwmon*/in*_label")):
        n = label_file.name[2:-len("_label")]
        volt, curr = label_file.with_name(f"in{n}_input"), label_file.with_name(f"curr{n}_input")
        if volt.is_file() and curr.is_file():
            label = _read_text(label_file) or f"in{n}"
            rails.append((label, volt, curr))
    rails.sort(key=lambda r: 0 if r[0] in ("VDD_IN", "POM_5V_IN") else 1)
    return rails


def read_power_w(rails) -> float | None:
    """Instantaneous power of the first (total input) rail, in watts."""
    if not rails:
        return None
    _, volt, curr = rails[0]
    try:
        return float(volt.read_text()) * float(curr.read_text()) / 1e6
    except (OSError, ValueError):
        return None


class PowerSampler(Sampler):
    """The total input power while a block runs (watts), from :func:`power_rails`."""

    thread_name = "edgeseg-power"

    def __init__(self, rails, every_s: float = SAMPLE_EVERY_S) -> None:
        super().__init__(every_s)
        self.rails = rails
        self.samples: list[float] = []

    def available(self) -> bool:
        return bool(self.rails)

    def sample(self) -> None:
        w = read_power_w(self.rails)
        if w is not None:
            self.samples.append(w)

    def energy(self, seconds: float, images: int) -> dict | None:
        """Mean power and energy per image (mJ) over ``seconds`` that processed ``images``."""
        if not self.samples or images <= 0:
            return None
        mean_w = float(np.mean(self.samples))
        return {"rail": self.rails[0][0], "mean_power_w": mean_w, "samples": len(self.samples),
                "energy_per_image_mj": mean_w * seconds / images * 1000.0}
