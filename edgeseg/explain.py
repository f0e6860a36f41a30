"""Where a segmentation model looks: Grad-CAM class-activation maps for its predicted region
(``edgeseg explain``), for a teacher and, side by side, for its compressed student.

For one image and a target class c (default: the foreground of a binary model; for more
classes the non-background class the model predicts most in that image), with A the
activations of a chosen encoder stage (``stage`` 1..4, its output feature map, 1/4 .. 1/32 of
the input size) and y the sum of class c's logits over the pixels the model predicts as c
(Grad-CAM for segmentation, Vinogradova et al. 2020; the whole image when it predicts no such
pixel, and the record says so):

    gradcam (default):  weights_k = mean over positions of dy/dA_k,  CAM = ReLU(sum_k weights_k * A_k)
    hirescam:           CAM = ReLU(sum_k dy/dA_k * A_k), position by position (Draelos & Carin 2020)

upsampled (bilinear, as edgeseg resizes everywhere) to the image's own size and scaled to
[0, 1]. Grad-CAM's map is all zero when the averaged weights argue against the class at every
position (frequent at stage 4 of a SegFormer: the record counts them); HiResCAM keeps where each
position's own gradient agrees with its activation. Plain torch forward hooks and
``torch.autograd.grad``; the model's weights are not changed.

Per image the record holds ``inside_share`` (the CAM's mass inside the predicted region),
``area_share`` (the region's share of the image) and ``concentration`` (their ratio: above 1
when the map is denser inside the predicted region than over the image as a whole). A student
(``compare``) must be a torch checkpoint: a bundle or ONNX file has no gradients. Its record adds
``correlation`` (Pearson, over the image's pixels, of the teacher's and the student's CAMs) and
``mask_dice`` (agreement of the two predicted masks).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeseg.errors import ConfigError, ModelError
from edgeseg.runtime.preprocess import postprocess, preprocess, resize

log = logging.getLogger(__name__)

STAGES = (1, 2, 3, 4)
METHODS = ("gradcam", "hirescam")


@dataclass(frozen=True)
class Explanation:
    """One model's answer for one image, at the image's size."""

    cam: np.ndarray  # float32 (H, W) in [0, 1]
    mask: np.ndarray  # uint8 (H, W) predicted labels
    target: int  # the class explained
    region_pixels: int  # pixels of the target class in ``mask``; 0: the whole image was the target

    def record(self) -> dict:
        region = self.mask == self.target
        total = float(self.cam.sum())
        inside = float(self.cam[region].sum()) / total if total > 0 else None
        area = float(region.mean())
        return {"target": self.target, "region_pixels": self.region_pixels, "area_share": round(area, 6),
                "inside_share": None if inside is None else round(inside, 6),
                "concentration": None if inside is None or area == 0 else round(inside / area, 4),
                "region": "predicted region" if self.region_pixels else "empty prediction: whole image"}


def check_stage(stage: int) -> int:
    if stage not in STAGES:
        raise ConfigError(f"--stage must be one of 1, 2, 3, 4 (encoder stages), got {stage}")
    return stage


def stage_module(model, stage: int):
    """The encoder stage whose output feature map (B, C, h, w) is explained."""
    check_stage(stage)
    stages = getattr(getattr(model, "segformer", None), "stages", None)
    if stages is None or len(stages) < stage:
        raise ModelError(f"the model has no encoder stage {stage} to explain (not a SegFormer?)")
    return stages[stage - 1]


def pick_target(mask_small: np.ndarray, num_classes: int, target: int | None) -> int:
    """The class to explain: the one asked for, the foreground of a binary model, else the
    non-background class predicted on most pixels (class 1 when none is)."""
    if target is not None:
        if not 0 <= target < num_classes:
            raise ConfigError(f"--target-class {target} out of range: the model has classes 0..{num_classes - 1}")
        return target
    if num_classes == 2:
        return 1
    counts = np.bincount(mask_small.ravel(), minlength=num_classes)[1:]
    return int(counts.argmax()) + 1 if counts.any() else 1


def grad_cam(model, meta, image: np.ndarray, stage: int = 4, target: int | None = None,
             device: str = "cpu", method: str = "gradcam") -> Explanation:
    """Grad-CAM (or HiResCAM) of ``model`` (a SegFormer in eval mode) for ``image`` (H, W, 3 uint8 RGB)."""
    import torch

    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")

    feats: list = []
    handle = stage_module(model, stage).register_forward_hook(lambda _m, _i, out: feats.append(out))
    try:
        x = torch.from_numpy(preprocess(image, meta.preprocess)[None]).to(device)
        with torch.enable_grad():
            logits = model(pixel_values=x).logits
            act = feats[-1]
            act = act[0] if isinstance(act, tuple) else act
            small = logits[0].argmax(0)
            c = pick_target(small.cpu().numpy(), logits.shape[1], target)
            region = small == c
            n_region = int(region.sum())
            y = logits[0, c][region].sum() if n_region else logits[0, c].sum()
            (grad,) = torch.autograd.grad(y, act)
    finally:
        handle.remove()
    weights = grad[0].mean(dim=(1, 2), keepdim=True) if method == "gradcam" else grad[0]  # (C, 1, 1) or (C, h, w)
    cam = torch.relu((weights * act[0]).sum(0)).detach().float().cpu().numpy()
    h, w = image.shape[:2]
    cam = np.maximum(resize(cam[:, :, None], h, w)[:, :, 0], 0.0)
    top = float(cam.max())
    cam = (cam / top if top > 0 else cam).astype(np.float32)
    mask = postprocess(logits[0].detach().float().cpu().numpy(), h, w)
    return Explanation(cam=cam, mask=np.asarray(mask, np.uint8), target=c, region_pixels=n_region)


def correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation of two maps over their pixels; None when either is constant."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else None


def mask_dice(a: np.ndarray, b: np.ndarray, target: int) -> float:
    pa, pb = a == target, b == target
    s = int(pa.sum() + pb.sum())
    return 1.0 if s == 0 else 2.0 * int((pa & pb).sum()) / s


def overlay(image: np.ndarray, ex: Explanation, alpha: float = 0.5) -> np.ndarray:
    """RGB image with the CAM as a heat map (blue = none, red = most) and the predicted region's
    outline in white."""
    import cv2

    heat = cv2.applyColorMap((ex.cam * 255 + 0.5).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    out = ((1 - alpha) * image.astype(np.float32) + alpha * heat.astype(np.float32)).clip(0, 255).astype(np.uint8)
    contours, _ = cv2.findContours((ex.mask == ex.target).astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    out = np.ascontiguousarray(out)
    cv2.drawContours(out, contours, -1, (255, 255, 255), max(1, min(image.shape[:2]) // 150))
    return out


def labelled(img: np.ndarray, text: str) -> np.ndarray:
    """``img`` with a caption strip above it."""
    import cv2

    h = max(18, img.shape[0] // 12)
    strip = np.full((h, img.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text, (4, int(h * 0.72)), cv2.FONT_HERSHEY_SIMPLEX, h / 32, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, img], axis=0)


def side_by_side(image: np.ndarray, teacher: Explanation, student: Explanation, corr: float | None) -> np.ndarray:
    gap = np.full((image.shape[0] + max(18, image.shape[0] // 12), 4, 3), 255, np.uint8)
    r = "n/a" if corr is None else f"{corr:.2f}"
    return np.concatenate([labelled(overlay(image, teacher), "teacher"), gap,
                           labelled(overlay(image, student), f"student (r={r})")], axis=1)


def require_torch_model(path: str | Path, flag: str) -> None:
    """One ModelError line when ``path`` is a model without gradients (bundle, ONNX, engine)."""
    from edgeseg.runtime.formats import detect

    fmt = detect(path)
    if fmt is not None and fmt.name != "checkpoint":
        raise ModelError(f"{flag} {path} is a {fmt.name}: it has no gradients to explain; give the torch checkpoint "
                         "it was made from (a folder with config.json + model.safetensors, e.g. edgeseg prune or "
                         "distill output)")


def resolve_target(name: str | None, classes: list[str]) -> int | None:
    if name is None:
        return None
    if name in classes:
        return classes.index(name)
    if name.isdigit() and int(name) < len(classes):
        return int(name)
    raise ConfigError(f"--target-class {name!r} is not one of the model's classes ({', '.join(classes)}) or "
                      f"an index 0..{len(classes) - 1}")


def explain_folder(model_path: str | Path, images: str | Path, out: str | Path, stage: int = 4,
                   target: str | None = None, compare: str | Path | None = None, overwrite: bool = False,
                   progress: bool = False, method: str = "gradcam") -> dict:
    """Write ``out/overlays/NAME.png`` (and with ``compare`` ``out/compare/NAME.png``: teacher and
    student side by side) and ``out/explain.json`` (per-image records, means); returns the summary.
    ``out`` follows the one output-folder policy (new, or an earlier explain output with
    ``overwrite``), written atomically."""
    import sys

    from tqdm import tqdm

    from edgeseg.data import folders as D
    from edgeseg.outputs import check_output, mark
    from edgeseg.predict import _write, list_images
    from edgeseg.runtime.files import atomic_dir, atomic_write_json

    out = Path(out)
    from edgeseg.model.checkpoint import load_checkpoint

    check_stage(stage)  # before any work
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    require_torch_model(model_path, "MODEL")
    if compare is not None:
        require_torch_model(compare, "--compare")
    check_output(out, "explain", inputs=[model_path, images, compare], overwrite=overwrite)
    items = list_images(Path(images))
    model, meta = load_checkpoint(model_path)
    stage_module(model, stage)
    tgt = resolve_target(target, meta.classes)
    student = smeta = None
    if compare is not None:
        student, smeta = load_checkpoint(compare)
        stage_module(student, stage)
        if smeta.classes != meta.classes:
            raise ModelError(f"--compare {compare} has classes {smeta.classes}, the teacher {meta.classes}")
    rows = []
    with atomic_dir(out) as tmp:
        for name, path in tqdm(items, desc="explain", unit="img", disable=not progress, file=sys.stderr, leave=False):
            image = D.read_image(path)
            ex = grad_cam(model, meta, image, stage, tgt, method=method)
            row = {"name": name, "class": meta.classes[ex.target], **ex.record()}
            _write(tmp / "overlays" / f"{name}.png", overlay(image, ex)[:, :, ::-1])
            if student is not None:
                sx = grad_cam(student, smeta, image, stage, ex.target, method=method)
                corr = correlation(ex.cam, sx.cam)
                row["student"] = sx.record()
                row.update(correlation=None if corr is None else round(corr, 4),
                           mask_dice=round(mask_dice(ex.mask, sx.mask, ex.target), 4))
                _write(tmp / "compare" / f"{name}.png", side_by_side(image, ex, sx, corr)[:, :, ::-1])
            rows.append(row)
        summary = {"model": str(model_path), "compare": str(compare) if compare else None, "stage": stage,
                   "method": method, "blank_maps": sum(r["inside_share"] is None for r in rows),
                   "images": len(rows), "means": _means(rows), "rows": rows, "about": __doc__.split("\n\n")[1]}
        atomic_write_json(tmp / "explain.json", summary)
        mark(tmp, "explain", model=Path(model_path).name, compare=Path(compare).name if compare else None,
             stage=stage, method=method, images=len(rows))
    return summary


def _means(rows: list[dict]) -> dict:
    def mean(values):
        v = [x for x in values if x is not None]
        return round(float(np.mean(v)), 4) if v else None

    m = {"concentration": mean(r["concentration"] for r in rows),
         "inside_share": mean(r["inside_share"] for r in rows)}
    if rows and "student" in rows[0]:
        m.update(student_concentration=mean(r["student"]["concentration"] for r in rows),
                 correlation=mean(r["correlation"] for r in rows), mask_dice=mean(r["mask_dice"] for r in rows))
    return m
