"""On-the-fly augmentation and tensor conversion for training (torch, per batch).

Images stay uint8 at the model's input size in memory; each batch is flipped, rotated (square
inputs), optionally zoomed (a random crop of each image resized back: ``scale_jitter``) and
brightness/contrast-jittered, then normalised with exactly the maths of
``edgeseg.runtime.preprocess``. Masks follow every geometric step (nearest neighbour), so a
pixel's label always stays under that pixel.
"""

from __future__ import annotations

from edgeseg.runtime.preprocess import Preprocess


def to_tensor(imgs_u8, pp: Preprocess, device):
    """uint8 (N,h,w,3) torch tensor -> normalised float NCHW (same maths as runtime.preprocess)."""
    import torch

    x = imgs_u8.to(device=device, dtype=torch.float32).permute(0, 3, 1, 2) * pp.scale
    mean = torch.tensor(pp.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(pp.std, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def zoom(x_u8, y, gen, jitter: float):
    """Each image (and its mask) cropped to a random square-ish window whose sides are
    ``1 - jitter`` to 1 times the image's, at a random place, and resized back to the input size
    (bilinear for the image, nearest for the mask). ``jitter`` 0: unchanged."""
    import torch
    import torch.nn.functional as F

    if jitter <= 0:
        return x_u8, y
    n, h, w = y.shape
    xs, ys = [], []
    for i in range(n):
        f = 1 - float(torch.rand((), generator=gen)) * jitter
        ch, cw = max(1, round(h * f)), max(1, round(w * f))
        top = int(torch.randint(0, h - ch + 1, (), generator=gen))
        left = int(torch.randint(0, w - cw + 1, (), generator=gen))
        xi = x_u8[i, top:top + ch, left:left + cw].permute(2, 0, 1)[None].float()
        yi = y[i, top:top + ch, left:left + cw][None, None].float()
        xs.append(F.interpolate(xi, size=(h, w), mode="bilinear", align_corners=False)[0].permute(1, 2, 0))
        ys.append(F.interpolate(yi, size=(h, w), mode="nearest-exact")[0, 0])  # pixel centres, as bilinear
    x = torch.stack(xs).round().clamp(0, 255).to(torch.uint8)
    return x, torch.stack(ys).to(y.dtype)


def augment(x_u8, y, gen, strength: float = 1.0, scale_jitter: float = 0.0):
    """Flips, 90-degree rotations (square inputs), zoom (``scale_jitter``, see :func:`zoom`),
    brightness/contrast jitter; in torch, per batch. ``strength`` scales the jitter (1:
    brightness +-15% of the range, contrast +-20%; 0: none)."""
    import torch

    if torch.rand((), generator=gen) < 0.5:
        x_u8, y = x_u8.flip(2), y.flip(2)
    if torch.rand((), generator=gen) < 0.5:
        x_u8, y = x_u8.flip(1), y.flip(1)
    if x_u8.shape[1] == x_u8.shape[2]:
        k = int(torch.randint(0, 4, (), generator=gen))
        x_u8, y = torch.rot90(x_u8, k, (1, 2)), torch.rot90(y, k, (1, 2))
    x_u8, y = zoom(x_u8, y, gen, scale_jitter)
    x = x_u8.float()
    n = x.shape[0]
    b = (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * (0.3 * strength) * 255
    c = 1 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * (0.4 * strength)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * c + mean + b).clamp(0, 255)
    return x.round().to(torch.uint8), y
