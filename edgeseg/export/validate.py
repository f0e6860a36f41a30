"""Parity between two runners of the same model on real images: logits, masks and Dice.

Every export is gated by this: an ONNX graph that disagrees with its torch source (train-mode
BatchNorm, shape bookkeeping, a lossy conversion) is refused, not shipped."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edgeseg.data import folders as D
from edgeseg.errors import EdgesegError
from edgeseg.runtime.metrics import MetricAccumulator
from edgeseg.runtime.segmenter import Segmenter


class ParityError(EdgesegError):
    """An exported model does not reproduce its source within tolerance."""


@dataclass(frozen=True)
class Tolerance:
    max_abs_logit: float = 1e-3
    min_mask_agreement: float = 0.999
    max_dice_diff: float = 0.001

    @classmethod
    def for_precision(cls, precision: str) -> "Tolerance":
        if precision == "fp16":
            return cls(max_abs_logit=5e-2, min_mask_agreement=0.995, max_dice_diff=0.005)
        return cls()


def parity(ref: Segmenter, cand: Segmenter, samples: list[D.Sample], check_logits: bool = True) -> dict:
    """Compare two segmenters image by image at the original resolution."""
    nc = ref.num_classes
    acc_r, acc_c = MetricAccumulator(nc), MetricAccumulator(nc)
    max_abs, sum_abs, n_el = 0.0, 0.0, 0
    agree, total = 0, 0
    labelled = all(s.masks for s in samples)
    for s in samples:
        source = ref.intensity is not None  # [intensity] source pixels: prepare maps them by the policy
        if labelled:
            image, gt = D.load_pair(s, nc, source=source)
        else:
            image, gt = D.read_source(s.image) if source else D.read_image(s.image), None
        batch = ref.prepare([image])
        o_r, o_c = ref.infer(batch), cand.infer(batch)
        if check_logits and "logits" in o_r and "logits" in o_c:
            d = np.abs(o_r["logits"].astype(np.float32) - o_c["logits"].astype(np.float32))
            max_abs = max(max_abs, float(d.max()))
            sum_abs += float(d.sum())
            n_el += d.size
        hw = [image.shape[:2]]
        m_r, m_c = ref.finish(o_r, hw)[0], cand.finish(o_c, hw)[0]
        agree += int((m_r == m_c).sum())
        total += m_r.size
        if gt is not None:
            acc_r.add(m_r, gt, name=s.name)
            acc_c.add(m_c, gt, name=s.name)
    rep = {"images": len(samples), "mask_agreement": agree / max(total, 1),
           "max_abs_logit_diff": max_abs if n_el else None,
           "mean_abs_logit_diff": sum_abs / n_el if n_el else None}
    if labelled:
        dr, dc = acc_r.summary()["mean_dice"], acc_c.summary()["mean_dice"]
        rep.update(ref_dice=dr, cand_dice=dc, dice_diff=abs(dr - dc))
    return rep


def check(rep: dict, tol: Tolerance, what: str = "exported model") -> None:
    problems = []
    if rep.get("max_abs_logit_diff") is not None and rep["max_abs_logit_diff"] > tol.max_abs_logit:
        problems.append(f"max |logit diff| {rep['max_abs_logit_diff']:.2e} > {tol.max_abs_logit:.0e}")
    if rep["mask_agreement"] < tol.min_mask_agreement:
        problems.append(f"mask agreement {rep['mask_agreement']:.5f} < {tol.min_mask_agreement}")
    if rep.get("dice_diff") is not None and rep["dice_diff"] > tol.max_dice_diff:
        problems.append(f"Dice differs by {rep['dice_diff']:.4f} > {tol.max_dice_diff}")
    if problems:
        raise ParityError(f"{what} disagrees with its source on {rep['images']} images: " + "; ".join(problems))


def tolerance_dict(tol: Tolerance) -> dict:
    return asdict(tol)
