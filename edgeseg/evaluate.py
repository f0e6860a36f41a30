"""Score any model on a labelled folder, the same way for torch, ONNX, bundles and engines."""

from __future__ import annotations

import csv
import io
import logging
import sys
from pathlib import Path

from edgeseg.data import folders as D
from edgeseg.errors import DataError
from edgeseg.measure.confusion import ConfusionMatrix
from edgeseg.runtime.confidence import ReliabilityBins
from edgeseg.runtime.files import atomic_write_json, atomic_write_text
from edgeseg.runtime.metrics import MetricAccumulator
from edgeseg.runtime.segmenter import Segmenter

log = logging.getLogger(__name__)


def evaluate(seg: Segmenter, samples: list[D.Sample], spacing=None, progress: bool = False,
             keep_masks: bool = False):
    """-> (summary dict, per-image rows, {name: predicted mask} if keep_masks)."""
    from tqdm import tqdm

    if not samples:
        raise DataError("nothing to evaluate: no images")
    nc = seg.num_classes
    acc = MetricAccumulator(num_classes=nc, spacing=spacing)
    rel = ReliabilityBins()  # [calibration] ECE over top-class confidence, pixels pooled
    conf = ConfusionMatrix(seg.classes)  # [tracking] pixel confusion matrix, ground truth x prediction
    masks = {}
    for s in tqdm(samples, desc="evaluate", disable=not progress, file=sys.stderr, leave=False):
        image, gt = D.load_pair(s, nc)
        mask, prob = seg.predict(image, probabilities=True)
        acc.add(mask, gt, prob=prob[1] if nc == 2 else prob, name=s.name)
        rel.add(prob, gt)
        conf.add(mask, gt)
        if keep_masks:
            masks[s.name] = mask
    summary = acc.summary()
    summary.update(ece=rel.ece(), temperature=seg.temperature, reliability=rel.to_dict())
    summary["confusion"] = conf.to_dict()
    return summary, acc.rows(), masks


def write_rows_csv(rows: list[dict], path: str | Path) -> Path:
    """Per-image rows as CSV, written atomically (a full disk leaves the old file or none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def write_json(obj, path: str | Path) -> Path:
    """JSON written atomically; NaN and infinities become null (never the invalid token NaN)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, obj)


def format_table(summary: dict, spacing=None) -> str:
    """The metrics table: mean over images and pooled over all pixels, with units and the
    empty-mask convention stated (so a reader can tell why mean and pooled Dice differ)."""
    unit = "mm" if spacing else "px"
    keys = ["dice", "iou", "precision", "recall", "specificity", "accuracy", "auc", "hd95"]
    lines = [f"{'metric':<12} {'mean':>9} {'pooled':>9}"]
    for k in keys:
        mean = summary.get(f"mean_{k}", float("nan"))
        pooled = summary.get(f"pooled_{k}")
        ps = f"{pooled:9.4f}" if isinstance(pooled, float) else f"{'':>9}"
        lines.append(f"{k + (f' ({unit})' if k == 'hd95' else ''):<12} {mean:9.4f} {ps}")
    lines.append(f"{'median dice':<12} {summary.get('median_dice', float('nan')):9.4f}")
    lines.append(f"images: {summary.get('n_images')}  (hd95 infinite on {summary.get('hd95_inf', 0)}: "
                 "one of prediction / ground truth empty)")
    lines.append("mean = average of per-image values (an empty mask predicted empty scores Dice 1); "
                 "pooled = all pixels of the set counted together")
    if summary.get("ece") is not None:  # [calibration]
        lines.append(f"ECE {summary['ece']:.4f} (top-class confidence, {summary['reliability']['bins']} equal-width "
                     f"bins, pixels pooled; temperature {summary.get('temperature', 1.0):.3f})")
    return "\n".join(lines)
