"""The INT8 model's own parity check: how far its masks are from the FP32 model's it was made
from, on the calibration images at the model's input size. Recorded in the INT8 bundle's
manifest as ``parity`` (the FP32 export's parity block describes another model and is dropped).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BATCH = 8


def _masks(model: Path, x: np.ndarray, session_config: dict | None) -> np.ndarray:
    from edgeseg.runtime.runners.onnxrt import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(model, session_config=session_config)
    try:
        out = []
        for i in range(0, len(x), BATCH):
            logits = next(iter(runner.infer(x[i:i + BATCH]).values()))
            out.append(logits.argmax(axis=1).astype(np.uint8))
        return np.concatenate(out)
    finally:
        runner.close()


def int8_parity(fp32: str | Path, int8: str | Path, x: np.ndarray | None, session_config: dict | None = None) -> dict:
    """Mask agreement (share of pixels with the same label) of the INT8 model with its FP32
    source on the images ``x`` (N x 3 x h x w, pre-processed): overall, the worst image, and the
    foreground Dice between the two models' masks (the INT8 model's agreement with its source)."""
    if x is None or len(x) == 0:
        return {"against": "fp32 source", "measured": False,
                "why": "no calibration images (weight-only INT8): run `edgeseg evaluate` on your images"}
    a = _masks(Path(fp32), x, None)
    b = _masks(Path(int8), x, session_config)
    per_image = (a == b).reshape(len(a), -1).mean(axis=1)
    fa, fb = a > 0, b > 0
    inter = (fa & fb).reshape(len(a), -1).sum(axis=1)
    denom = fa.reshape(len(a), -1).sum(axis=1) + fb.reshape(len(a), -1).sum(axis=1)
    dice = np.where(denom > 0, 2 * inter / np.maximum(denom, 1), 1.0)
    return {"against": "fp32 source", "measured": True, "images": int(len(a)),
            "where": "calibration images at the model's input size",
            "mask_agreement": round(float(per_image.mean()), 6),
            "worst_image_agreement": round(float(per_image.min()), 6),
            "mean_foreground_dice_vs_fp32": round(float(dice.mean()), 6)}
