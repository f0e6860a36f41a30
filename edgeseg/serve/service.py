"""What the service does, without the web framework: hold the active model, segment, score
feedback, switch versions, count and log. :mod:`edgeseg.serve.app` only maps HTTP onto this.

A version switch is one attribute assignment after the new model has been verified, loaded and
smoke-tested: a request takes its reference to the model (``Loaded``) once, when it starts, and
finishes on it whatever happens meanwhile; the next request gets the new one.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from edgeseg.runtime.errors import BundleError, EdgesegError, InputError
from edgeseg.runtime.files import json_clean
from edgeseg.serve.encode import class_areas
from edgeseg.serve.feedback import Answer, RecentAnswers, score
from edgeseg.serve.images import decode_image, decode_mask, encode_png, sniff
from edgeseg.serve.metrics import Metrics
from edgeseg.serve.requestlog import RequestLog
from edgeseg.serve.store import Loaded, ModelStore, timestamp

log = logging.getLogger(__name__)
MAX_OTHER_LOADED = 2  # versions asked for by name besides the active one, kept open


class NotReady(EdgesegError):
    """No verified model is loaded (the store has no active version, or it failed to load)."""


class UnknownRequest(EdgesegError):
    """Feedback for a request id the service does not remember."""


class Service:
    def __init__(self, store: ModelStore | str | Path, log_dir: str | Path | None = None,
                 max_pixels: int = 40_000_000, threads: int | None = None, keep_images: bool = False,
                 log_max_bytes: int = 10_000_000, remember: int = 512) -> None:
        self.store = store if isinstance(store, ModelStore) else ModelStore(store)
        self.max_pixels, self.threads = max_pixels, threads
        self.metrics = Metrics()
        self.log = RequestLog(log_dir, max_bytes=log_max_bytes, keep_images=keep_images) if log_dir else None
        self.answers = RecentAnswers(max_count=remember)
        self.current: Loaded | None = None
        self.not_ready = "not started"
        self._others: dict[str, Loaded] = {}
        self._switch_lock = threading.Lock()  # loading versions asked for by name
        self._activate_lock = threading.Lock()

    def start(self) -> None:
        """Load the store's active version (verified, smoke-tested); without one, not ready."""
        active = self.store.active
        if active is None:
            self.not_ready = f"{self.store.root} has no active version (`edgeseg store activate STORE V`)"
            return
        try:
            self._use(self.store.load(active, self.threads))
        except EdgesegError as exc:
            self.not_ready = f"version {active!r} failed to load: {exc}"
            log.error("%s", self.not_ready)

    def _use(self, loaded: Loaded) -> None:
        self.current = loaded  # the switch: one reference assignment
        self.metrics.active(loaded.version, loaded.sha256)
        self._others.pop(loaded.version, None)

    def model(self, version: str | None = None) -> Loaded:
        cur = self.current
        if version is None or (cur is not None and version == cur.version):
            if cur is None:
                raise NotReady(f"no model is loaded: {self.not_ready}")
            return cur
        with self._switch_lock:
            if version not in self._others:
                loaded = self.store.load(version, self.threads)  # UnknownVersion for a name the store lacks
                while len(self._others) >= MAX_OTHER_LOADED:
                    self._others.pop(next(iter(self._others)))
                self._others[version] = loaded
            return self._others[version]

    # --- requests -----------------------------------------------------------------------
    def segment(self, data: bytes, version: str | None = None, probabilities: bool = False) -> tuple[dict, np.ndarray]:
        """Image bytes -> (answer, mask). The answer names the version, sha256, drift and latency."""
        t0 = time.perf_counter()
        request_id = uuid.uuid4().hex
        loaded = self.model(version)  # held for the whole request
        seg = loaded.segmenter
        policy = getattr(seg, "intensity", None)  # [intensity] source pixels, mapped by the Segmenter
        image = decode_image(data, self.max_pixels, source_pixels=policy is not None)
        drift = seg.drift(image) if seg.drift_guard is not None else None
        kinds = {o["kind"] for o in seg.outputs}
        probs = None
        if kinds & {"logits", "probs"}:
            mask, probs = seg.predict(image, probabilities=True)
        else:
            mask = seg.predict(image)
        h, w = mask.shape
        areas = class_areas(mask, seg.classes)
        answer = {
            "request_id": request_id, "model": {"version": loaded.version, "sha256": loaded.sha256},
            "size": [h, w], "classes": list(seg.classes), "areas": areas,
            "area_fraction": {k: v / (h * w) for k, v in areas.items()},
            "mean_confidence": float(probs.max(axis=0).mean()) if probs is not None else None,
            "intensity": json_clean(seg.intensity_check(image)) if policy is not None else None,
            "drift": ({"score": float(drift["score"]), "drifted": bool(drift["drifted"]),
                       "threshold": float(drift["threshold"]), "likely_cause": drift.get("likely_cause")}
                      if drift is not None else {"score": None, "drifted": None}),
        }
        if probabilities:
            if probs is None:
                raise InputError("this model outputs masks only; probabilities are not available")
            answer["probabilities"] = {
                "encoding": "png-base64, one 8-bit map per class, value = round(255 * probability)",
                "maps": {name: base64.b64encode(encode_png(np.rint(probs[i] * 255).astype(np.uint8))).decode()
                         for i, name in enumerate(seg.classes)}}
        self.answers.put(request_id, Answer(loaded.version, loaded.sha256, mask, tuple(seg.classes)))
        seconds = time.perf_counter() - t0
        answer["latency_ms"] = round(seconds * 1000, 3)
        self.metrics.segmented(loaded.version, seconds, answer["drift"]["drifted"])
        if self.log is not None:
            entry = {"type": "segment", "time": timestamp(), "request_id": request_id, "status": 200,
                     "version": loaded.version, "sha256": loaded.sha256, "latency_ms": answer["latency_ms"],
                     "image": [h, w], "bytes": len(data), "drift_score": answer["drift"]["score"],
                     "drifted": answer["drift"]["drifted"], "areas": areas,
                     "mean_confidence": answer["mean_confidence"]}
            saved = self.log.save_image(request_id, data, sniff(data))
            if saved:
                entry["image_file"] = saved
            self.log.write(entry)
        return answer, mask

    def feedback(self, request_id: str, data: bytes) -> dict:
        """Score the answer given to ``request_id`` against a corrected mask."""
        answer = self.answers.get(request_id) if request_id else None
        if answer is None:
            raise UnknownRequest(f"unknown request id {request_id!r}: feedback is taken for the service's recent "
                                 f"answers (the last {self.answers.max_count}) since it started")
        truth = decode_mask(data, self.max_pixels)
        s = score(answer.mask, truth, len(answer.classes))
        result = {"request_id": request_id, "model": {"version": answer.version, "sha256": answer.sha256}, **s}
        self.metrics.scored(answer.version, s["dice"], s["fp_pixels"], s["fn_pixels"])
        if self.log is not None:
            self.log.write({"type": "feedback", "time": timestamp(), "request_id": request_id,
                            "version": answer.version, "sha256": answer.sha256, **s})
        return result

    def refused(self, endpoint: str, status: int, message: str) -> None:
        if self.log is not None and endpoint in ("segment", "feedback"):
            self.log.write({"type": endpoint, "time": timestamp(), "status": status, "error": message})

    # --- versions -----------------------------------------------------------------------
    def switch(self, action: str, version: str | None = None, actor: str = "http") -> Loaded:
        """activate VERSION or rollback: verified and smoke-tested by the store before the swap."""
        with self._activate_lock:  # the store's record and the model served change together, in order
            try:
                loaded = (self.store.activate(version, actor=actor, threads=self.threads) if action == "activate"
                          else self.store.rollback(actor=actor, threads=self.threads))
            except BundleError:
                self.metrics.switched(action, "refused")
                raise
            self._use(loaded)
        self.metrics.switched(action, "ok")
        return loaded

    def models(self) -> dict:
        listing = self.store.listing()
        cur = self.current
        listing["serving"] = cur.describe() if cur is not None else None
        listing["audit"] = self.store.audit()[-20:]
        return listing


__all__ = ["NotReady", "Service", "UnknownRequest"]
