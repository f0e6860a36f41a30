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
    spacings = sample_spacings(samples, spacing)  # [medical] DICOM/NIfTI pixel spacing: HD95 in mm
    source, flagged = seg.intensity is not None, []  # [intensity] the policy maps the source pixels
    for s in tqdm(samples, desc="evaluate", disable=not progress, file=sys.stderr, leave=False):
        image, gt = D.load_pair(s, nc, source=source)
        if source and seg.intensity_check(image)["flagged"]:
            flagged.append(s.name)
        mask, prob = seg.predict(image, probabilities=True)
        acc.add(mask, gt, prob=prob[1] if nc == 2 else prob, name=s.name, spacing=spacings.get(s.name))
        rel.add(prob, gt)
        conf.add(mask, gt)
        if keep_masks:
            masks[s.name] = mask
    summary = acc.summary()
    summary.update(ece=rel.ece(), temperature=seg.temperature, reliability=rel.to_dict())
    summary["confusion"] = conf.to_dict()
    summary["hd95_unit"] = "mm" if spacing is not None or spacings else "px"
    if source:  # [intensity] images whose values do not fit the policy: counted, never silently clipped
        summary["intensity"] = {"policy": seg.intensity.describe(), "flagged": len(flagged), "flagged_images":
                                flagged[:20]}
    return summary, acc.rows(), masks


def sample_spacings(samples: list[D.Sample], spacing=None) -> dict:
    """[medical] {name: (sy, sx) mm} from each DICOM/NIfTI image's header when every sample has one
    and no ``spacing`` was given; {} otherwise (HD95 in pixels, or in mm by ``spacing``)."""
    if spacing is not None:
        return {}
    from edgeseg.data.medical import slice_spacing

    found = {s.name: slice_spacing(s.image) for s in samples}
    if any(v is None for v in found.values()):
        if any(v is not None for v in found.values()):
            log.warning("some images record a pixel spacing and some do not: HD95 in pixels for all "
                        "(pass --spacing to set one)")
        return {}
    return found


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
    unit = "mm" if spacing or summary.get("hd95_unit") == "mm" else "px"  # mm also from DICOM/NIfTI headers
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
    if summary.get("intensity"):  # [intensity]
        it = summary["intensity"]
        lines.append(f"intensity: {it['policy']}; {it['flagged']} image(s) whose values do not fit it"
                     + (f" (e.g. {it['flagged_images'][0]})" if it["flagged"] else ""))
    return "\n".join(lines)
