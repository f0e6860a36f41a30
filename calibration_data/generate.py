"""Generate edgeseg's small embedded synthetic segmentation dataset.

Writes 64 synthetic "endoscopy-like" RGB images with binary lesion masks into
this directory (``images/``, ``masks/``, ``splits/``).  Everything is made
procedurally from a fixed seed with numpy + OpenCV only: no real image, patient
or otherwise, is read or copied.

Usage (from the repository root or anywhere)::

    python calibration_data/generate.py            # regenerate in place
    python calibration_data/generate.py --out DIR  # write elsewhere

The output is deterministic: the same seed gives the same pixels and the same
splits (JPEG bytes may differ only if a different libjpeg build is used).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

SEED = 20240611
NUM_SAMPLES = 64
NUM_TRAIN, NUM_VAL, NUM_TEST = 40, 12, 12
NUM_CALIBRATION = 16
NUM_EMPTY = 8  # images with no lesion (1 in 8)
EMPTY_PER_SPLIT = {"train": 4, "val": 2, "test": 2}
WIDTH_RANGE = (160, 224)  # inclusive
HEIGHT_RANGE = (144, 176)  # inclusive
JPEG_QUALITY = 90
LESION_RADIUS_RANGE = (6.0, 50.0)

HERE = Path(__file__).resolve().parent


def sample_name(index: int) -> str:
    return f"sample_{index:03d}"


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in roughly [-1, 1]: a coarse random grid, upsampled."""
    gh = max(2, int(round(cells * h / max(h, w))))
    gw = max(2, int(round(cells * w / max(h, w))))
    grid = rng.standard_normal((gh + 2, gw + 2)).astype(np.float32)
    big = cv2.resize(grid, (w + 2 * (w // gw), h + 2 * (h // gh)), interpolation=cv2.INTER_CUBIC)
    oy, ox = h // gh, w // gw
    return np.clip(big[oy:oy + h, ox:ox + w] / 1.5, -1.0, 1.0)


def _fractal_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for cells in (3, 6, 12):
        out += amp * _smooth_noise(rng, h, w, cells)
        total += amp
        amp *= 0.5
    return out / total


def _fine_grain(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Granular high-frequency texture, unit-ish std."""
    g = rng.standard_normal((h, w)).astype(np.float32)
    g = cv2.GaussianBlur(g, (0, 0), sigma)
    return g / (g.std() + 1e-6)


def _blob_polygon(rng: np.random.Generator, cx: float, cy: float, radius: float) -> np.ndarray:
    """Irregular ellipse: polar radius with a few random low harmonics."""
    n = 96
    theta = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    aspect = rng.uniform(0.6, 1.0)
    rot = rng.uniform(0.0, np.pi)
    r = np.ones(n)
    for k in range(2, 7):
        r += rng.uniform(0.02, 0.16) / (k / 2.0) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r *= radius
    x = r * np.cos(theta)
    y = r * np.sin(theta) * aspect
    xr = cx + x * np.cos(rot) - y * np.sin(rot)
    yr = cy + x * np.sin(rot) + y * np.cos(rot)
    return np.stack([xr, yr], axis=1)


def _draw_folds(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Darkening map (0 = none, 1 = full) made of a few blurred curved bands."""
    fold = np.zeros((h, w), np.float32)
    for _ in range(rng.integers(1, 4)):
        p0 = np.array([rng.uniform(-0.2, 1.2) * w, rng.uniform(-0.2, 1.2) * h])
        p2 = np.array([rng.uniform(-0.2, 1.2) * w, rng.uniform(-0.2, 1.2) * h])
        p1 = (p0 + p2) / 2 + rng.normal(0, 0.35, 2) * np.array([w, h])
        t = np.linspace(0, 1, 60)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
        layer = np.zeros((h, w), np.float32)
        cv2.polylines(layer, [np.round(pts * 4).astype(np.int32)], False,
                      float(rng.uniform(0.5, 1.0)), int(rng.integers(3, 9)),
                      lineType=cv2.LINE_AA, shift=2)
        fold = np.maximum(fold, layer)
    return cv2.GaussianBlur(fold, (0, 0), float(rng.uniform(2.5, 5.0)))


def _render(index: int, seed: int, empty: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, index])
    w = int(rng.integers(WIDTH_RANGE[0], WIDTH_RANGE[1] + 1))
    h = int(rng.integers(HEIGHT_RANGE[0], HEIGHT_RANGE[1] + 1))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # --- mucosa background (float RGB in [0, 1]) ---------------------------
    base = np.array([0.78, 0.36, 0.33], np.float32)  # pink-red
    base *= rng.uniform(0.8, 1.15)  # per-image brightness
    base[1] *= rng.uniform(0.8, 1.2)  # per-image hue shift (toward orange / magenta)
    base[2] *= rng.uniform(0.8, 1.25)
    low = _fractal_noise(rng, h, w)
    tint = _smooth_noise(rng, h, w, 4)
    img = base[None, None, :] * (1.0 + 0.22 * low[..., None])
    img[..., 0] *= 1.0 + 0.06 * tint
    img[..., 2] *= 1.0 - 0.08 * tint
    # faint vessel-ish / surface texture everywhere (coarser than the lesion grain)
    img *= 1.0 + 0.025 * _fine_grain(rng, h, w, 1.6)[..., None]

    # folds: darker, slightly more saturated red bands
    fold = _draw_folds(rng, h, w)[..., None]
    img = img * (1.0 - fold * np.array([0.32, 0.45, 0.42], np.float32))

    # --- lesions -------------------------------------------------------------
    mask = np.zeros((h, w), np.uint8)
    if not empty:
        n_lesions = int(rng.choice([1, 1, 2, 2, 3]))
        lo, hi = np.log(LESION_RADIUS_RANGE[0]), np.log(LESION_RADIUS_RANGE[1])
        for _ in range(n_lesions):
            radius = float(np.exp(rng.uniform(lo, hi)))
            radius = min(radius, 0.42 * min(h, w))
            margin = 0.5 * radius
            cx = rng.uniform(margin, w - margin)
            cy = rng.uniform(margin, h - margin)
            poly = _blob_polygon(rng, cx, cy, radius)
            blob = np.zeros((h, w), np.uint8)
            cv2.fillPoly(blob, [np.round(poly * 4).astype(np.int32)], 255,
                         lineType=cv2.LINE_8, shift=2)
            if not blob.any():
                continue
            mask = np.maximum(mask, blob)
            # soft alpha that follows the hard mask (edges blurred ~1 px)
            alpha = cv2.GaussianBlur(blob.astype(np.float32) / 255.0, (0, 0), 1.0)[..., None]
            # lesion appearance: lighter, more saturated (yellow-pink/whitish),
            # with fine granular texture and mild internal shading
            colour = np.array([rng.uniform(0.88, 1.0), rng.uniform(0.50, 0.68),
                               rng.uniform(0.38, 0.55)], np.float32)
            colour *= rng.uniform(0.9, 1.08)
            grain = _fine_grain(rng, h, w, rng.uniform(0.6, 0.9))[..., None]
            shade = _smooth_noise(rng, h, w, 5)[..., None]
            lesion = colour * (1.0 + 0.13 * grain + 0.08 * shade)
            strength = rng.uniform(0.65, 0.9)
            img = img * (1.0 - strength * alpha) + lesion * strength * alpha

    # --- vignette and specular highlights (on top of everything) -------------
    cx0, cy0 = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6)
    rr = np.sqrt(((xx - cx0) / (0.75 * w)) ** 2 + ((yy - cy0) / (0.75 * h)) ** 2)
    vign = np.clip(1.0 - rng.uniform(0.45, 0.7) * rr ** 2, 0.15, 1.0)
    img *= vign[..., None]

    spec = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(2, 7))):
        c = (int(rng.uniform(0.1, 0.9) * w), int(rng.uniform(0.1, 0.9) * h))
        axes = (int(rng.integers(1, 6)), int(rng.integers(1, 4)))
        cv2.ellipse(spec, c, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1, cv2.LINE_AA)
    spec = cv2.GaussianBlur(spec, (0, 0), 0.9)[..., None]
    img = img * (1.0 - spec) + spec * np.array([1.0, 0.98, 0.96], np.float32)

    img += rng.normal(0.0, 0.008, img.shape).astype(np.float32)  # sensor noise
    rgb = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return rgb, mask


def empty_indices(seed: int = SEED) -> list[int]:
    rng = np.random.default_rng([seed, 10_001])
    return sorted(int(i) for i in rng.choice(NUM_SAMPLES, NUM_EMPTY, replace=False))


def generate_sample(index: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Return (image RGB uint8 HxWx3, mask uint8 HxW with values {0, 255})."""
    return _render(index, seed, index in empty_indices(seed))


def make_splits(seed: int = SEED) -> dict[str, list[str]]:
    """Fixed train/val/test split (lesion-free images spread over all three)
    plus a calibration subset drawn from train."""
    rng = np.random.default_rng([seed, 10_002])
    empty = set(empty_indices(seed))
    e = [int(i) for i in rng.permutation(sorted(empty))]
    ne = [int(i) for i in rng.permutation([i for i in range(NUM_SAMPLES) if i not in empty])]
    sizes = {"train": NUM_TRAIN, "val": NUM_VAL, "test": NUM_TEST}
    splits: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        k = EMPTY_PER_SPLIT[split]
        chosen, e = e[:k], e[k:]
        m = sizes[split] - k
        chosen += ne[:m]
        ne = ne[m:]
        splits[split] = [sample_name(i) for i in sorted(chosen)]
    assert not e and not ne
    calib = rng.choice(splits["train"], NUM_CALIBRATION, replace=False)
    splits["calibration"] = sorted(str(n) for n in calib)
    return splits


def generate_all(out: Path = HERE, seed: int = SEED) -> None:
    images, masks, split_dir = out / "images", out / "masks", out / "splits"
    for d in (images, masks, split_dir):
        d.mkdir(parents=True, exist_ok=True)
    # remove stale outputs of this generator (only its own file patterns)
    for p in list(images.glob("sample_*.jpg")) + list(masks.glob("sample_*.png")):
        p.unlink()
    empties = set(empty_indices(seed))
    for i in range(NUM_SAMPLES):
        rgb, mask = _render(i, seed, i in empties)
        name = sample_name(i)
        ok = cv2.imwrite(str(images / f"{name}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                         [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        ok &= cv2.imwrite(str(masks / f"{name}.png"), mask, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        if not ok:
            raise OSError(f"could not write {name}")
    for split, names in make_splits(seed).items():
        (split_dir / f"{split}.txt").write_text("".join(n + "\n" for n in names))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE, help="output directory (default: this folder)")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)
    generate_all(args.out, args.seed)
    print(f"wrote {NUM_SAMPLES} samples to {args.out}")


if __name__ == "__main__":
    main()
