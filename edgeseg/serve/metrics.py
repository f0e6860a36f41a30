"""The service's metrics, kept in memory and written in the Prometheus text format (0.0.4).

A small module of our own rather than ``prometheus_client``: counters and gauges with labels,
one latency histogram, thread-safe, and ``render()`` for ``GET /metrics``. What it counts:

- ``edgeseg_requests_total{endpoint, status}``: every answered request by HTTP status;
- ``edgeseg_errors_total{endpoint, reason}``: the refused or failed ones, by reason;
- ``edgeseg_request_latency_seconds{version}``: segmentation latency (histogram);
- ``edgeseg_drift_checked_total`` / ``edgeseg_drift_flagged_total{version}``: their ratio is the
  drift-flag rate (also the ``edgeseg_drift_flag_rate`` gauge); ``edgeseg_feedback_total`` /
  ``edgeseg_feedback_dice_sum{version}`` and the ``edgeseg_feedback_dice_mean`` gauge: live Dice
  per version from clinicians' corrections (with false-positive and false-negative pixel totals);
- ``edgeseg_model_info{version, sha256}`` (1 for the active model), ``edgeseg_switches_total{action}``.
"""

from __future__ import annotations

import math
import threading

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: tuple) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}" if pairs else ""


def _num(v: float) -> str:
    v = float(v)
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


class Family:
    """One metric name: a value per label set."""

    def __init__(self, name: str, kind: str, help: str) -> None:
        self.name, self.kind, self.help = name, kind, help
        self.values: dict[tuple, float] = {}

    def inc(self, amount: float = 1.0, **labels) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def set(self, value: float, **labels) -> None:
        self.values[tuple(sorted(labels.items()))] = float(value)

    def get(self, **labels) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0.0)

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        out += [f"{self.name}{_labels(k)} {_num(v)}" for k, v in sorted(self.values.items())]
        return out


class Histogram:
    def __init__(self, name: str, help: str, buckets=LATENCY_BUCKETS) -> None:
        self.name, self.help, self.buckets = name, help, tuple(buckets)
        self.series: dict[tuple, list] = {}  # labels -> [bucket counts..., sum, count]

    def observe(self, value: float, **labels) -> None:
        key = tuple(sorted(labels.items()))
        s = self.series.setdefault(key, [0] * len(self.buckets) + [0.0, 0])
        for i, b in enumerate(self.buckets):
            if value <= b:
                s[i] += 1
        s[-2] += value
        s[-1] += 1

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, s in sorted(self.series.items()):
            for b, c in zip(self.buckets, s):
                out.append(f"{self.name}_bucket{_labels(key + (('le', _num(b)),))} {c}")
            out.append(f"{self.name}_bucket{_labels(key + (('le', '+Inf'),))} {s[-1]}")
            out.append(f"{self.name}_sum{_labels(key)} {_num(s[-2])}")
            out.append(f"{self.name}_count{_labels(key)} {s[-1]}")
        return out


class Metrics:
    """Everything ``GET /metrics`` shows; every method is safe to call from many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = Family("edgeseg_requests_total", "counter", "Answered requests by endpoint and HTTP status.")
        self.errors = Family("edgeseg_errors_total", "counter", "Refused or failed requests by endpoint and reason.")
        self.latency = Histogram("edgeseg_request_latency_seconds", "Segmentation latency (decode to answer).")
        self.drift_checked = Family("edgeseg_drift_checked_total", "counter", "Images scored by the drift guard.")
        self.drift_flagged = Family("edgeseg_drift_flagged_total", "counter", "Images the drift guard flagged.")
        self.drift_rate = Family("edgeseg_drift_flag_rate", "gauge", "Flagged / checked since the start, by version.")
        self.feedback = Family("edgeseg_feedback_total", "counter", "Corrected masks received, by model version.")
        self.dice_sum = Family("edgeseg_feedback_dice_sum", "counter", "Sum of live Dice from feedback.")
        self.dice_mean = Family("edgeseg_feedback_dice_mean", "gauge", "Mean live Dice from feedback, by version.")
        self.fp_area = Family("edgeseg_feedback_fp_pixels_total", "counter", "False-positive pixels found by feedback.")
        self.fn_area = Family("edgeseg_feedback_fn_pixels_total", "counter", "False-negative pixels found by feedback.")
        self.model = Family("edgeseg_model_info", "gauge", "The active model (1) by version and bundle sha256.")
        self.switches = Family("edgeseg_switches_total", "counter", "Model switches by action and outcome.")
        self._dice_n: dict[str, int] = {}
        self._all = [self.requests, self.errors, self.latency, self.drift_checked, self.drift_flagged, self.drift_rate,
                     self.feedback, self.dice_sum, self.dice_mean, self.fp_area, self.fn_area, self.model,
                     self.switches]

    def answered(self, endpoint: str, status: int, reason: str | None = None) -> None:
        with self._lock:
            self.requests.inc(endpoint=endpoint, status=str(status))
            if reason is not None:
                self.errors.inc(endpoint=endpoint, reason=reason)

    def segmented(self, version: str, seconds: float, drifted: bool | None) -> None:
        with self._lock:
            self.latency.observe(seconds, version=version)
            if drifted is not None:
                self.drift_checked.inc(version=version)
                self.drift_flagged.inc(1.0 if drifted else 0.0, version=version)
                self.drift_rate.set(self.drift_flagged.get(version=version) / self.drift_checked.get(version=version),
                                    version=version)

    def scored(self, version: str, dice: float | None, fp: int, fn: int) -> None:
        with self._lock:
            self.feedback.inc(version=version)
            self.fp_area.inc(fp, version=version)
            self.fn_area.inc(fn, version=version)
            if dice is not None and math.isfinite(dice):
                self.dice_sum.inc(dice, version=version)
                self._dice_n[version] = self._dice_n.get(version, 0) + 1
                self.dice_mean.set(self.dice_sum.get(version=version) / self._dice_n[version], version=version)

    def active(self, version: str, sha256: str) -> None:
        with self._lock:
            self.model.values.clear()
            self.model.set(1, version=version, sha256=sha256)

    def switched(self, action: str, outcome: str) -> None:
        with self._lock:
            self.switches.inc(action=action, outcome=outcome)

    def render(self) -> str:
        with self._lock:
            return "\n".join(line for fam in self._all for line in fam.lines()) + "\n"


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "Metrics"]
