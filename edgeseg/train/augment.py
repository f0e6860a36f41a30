"""On-the-fly augmentation and tensor conversion for training (torch, per batch).

Images stay uint8 at the model's input size in memory; each batch is flipped, rotated (square
inputs) and brightness/contrast-jittered, then normalised with exactly the maths of
``edgeseg.runtime.preprocess``.
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


def augment(x_u8, y, gen, strength: float = 1.0):
    """Flips, 90-degree rotations (square inputs), brightness/contrast jitter; in torch, per batch.
    ``strength`` scales the jitter (1: brightness +-15% of the range, contrast +-20%; 0: none)."""
    import torch

    if torch.rand((), generator=gen) < 0.5:
        x_u8, y = x_u8.flip(2), y.flip(2)
    if torch.rand((), generator=gen) < 0.5:
        x_u8, y = x_u8.flip(1), y.flip(1)
    if x_u8.shape[1] == x_u8.shape[2]:
        k = int(torch.randint(0, 4, (), generator=gen))
        x_u8, y = torch.rot90(x_u8, k, (1, 2)), torch.rot90(y, k, (1, 2))
    x = x_u8.float()
    n = x.shape[0]
    b = (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * (0.3 * strength) * 255
    c = 1 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * (0.4 * strength)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * c + mean + b).clamp(0, 255)
    return x.round().to(torch.uint8), y
