"""At export: fit the temperature and record the uncertainty distribution on the validation images.

Both come from the images the export's parity check uses (the user's ``--data`` or the
checkpoint's recorded validation split, see :func:`edgeseg.export.pipeline.parity_samples`),
run once through the exported graph itself:

1. ``temperature`` (labelled images, a model with logits or probabilities): T fitted by
   :func:`edgeseg.runtime.temperature.fit_temperature` on up to 20 000 pixels per image at the
   original resolution, with the ECE before and after on all their pixels;
2. ``uncertainty``: the per-image uncertainty summaries, computed exactly as the runtime will
   (with T applied), and their distribution (:func:`edgeseg.runtime.uncertainty.profile_section`).

A model that outputs masks only gets neither section.
"""

from __future__ import annotations

import logging

import numpy as np

from edgeseg.data import folders as D
from edgeseg.runtime.confidence import ReliabilityBins
from edgeseg.runtime.segmenter import Segmenter
from edgeseg.runtime.temperature import fit_temperature, original_logits, sample_pixels, section
from edgeseg.runtime.uncertainty import profile_section, summarize

log = logging.getLogger(__name__)


def run_images(seg: Segmenter, samples) -> list[tuple[dict, tuple[int, int], np.ndarray | None]]:
    """Each image through the graph once: (graph outputs, (h, w), ground truth or None). The
    outputs are at the model's resolution, so keeping them costs little. ``samples``:
    ``data.Sample`` objects (ground truth when all have masks) or ``(name, image, gt)`` triples."""
    labelled = all(not isinstance(s, D.Sample) or s.masks for s in samples)
    runs = []
    for s in samples:
        if not isinstance(s, D.Sample):
            image, gt = s[1], s[2]
        else:
            image, gt = D.load_pair(s, seg.num_classes) if labelled else (D.read_image(s.image), None)
        runs.append((seg.infer(seg.prepare([image])), image.shape[:2], gt))
    return runs


def fit(seg: Segmenter, runs: list, what: str = "parity images") -> dict:
    """The ``temperature`` section fitted on labelled ``runs`` (see :func:`run_images`), with the
    ECE of all their pixels before and after. ``seg.temperature`` is left as it was."""
    keep = seg.temperature
    zs, ys = zip(*(sample_pixels(original_logits(seg, o, *hw), gt, seed=i) for i, (o, hw, gt) in enumerate(runs)))
    z, y = np.concatenate(zs), np.concatenate(ys)
    t = fit_temperature(z, y)
    bins = [(1.0, ReliabilityBins()), (t, ReliabilityBins())]
    try:
        for temp, rel in bins:
            seg.temperature = temp
            for o, hw, gt in runs:
                rel.add(seg.finish(o, [hw], True)[0][1], gt)
    finally:
        seg.temperature = keep
    return section(t, z, y, len(runs), what, bins[0][1].ece(), bins[1][1].ece())


def confidence_sections(seg: Segmenter, samples: list[D.Sample], what: str = "parity images") -> dict:
    """``{"temperature": ..., "uncertainty": ...}`` for the manifest (either may be absent)."""
    if not samples or not {"logits", "probs"} & {o["kind"] for o in seg.outputs}:
        return {}
    runs = run_images(seg, samples)
    out: dict = {}
    if all(gt is not None for _, _, gt in runs):
        out["temperature"] = sec = fit(seg, runs, what)
        log.info("temperature %.3f fitted on %d images (ECE %.4f -> %.4f)", sec["value"], len(runs),
                 sec["ece"]["before"], sec["ece"]["after"])
    keep = seg.temperature
    seg.temperature = out["temperature"]["value"] if "temperature" in out else 1.0
    summaries = [summarize(*seg.finish(o, [hw], True)[0]) for o, hw, _ in runs]
    if len(summaries) < 20:
        log.info("uncertainty distribution from %d image(s) only: the 95%% flag is coarse (pass more images)",
                    len(summaries))
    seg.temperature = keep
    out["uncertainty"] = profile_section(summaries, what)
    return out
