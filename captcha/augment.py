"""Random augmentation on the training device, a whole batch at a time.

Runs after the cached deterministic preprocessing, on normalised float tensors, so the GPU (or
the CPU's vector units) does it in a few large operations instead of Python per image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENT_LEVELS = ("none", "light", "strong")

# (max rotation degrees, max scale change, max translation as a fraction, max shear, noise std)
_LEVELS = {
    "light": (5.0, 0.05, 0.04, 0.1, 0.0),
    "strong": (12.0, 0.12, 0.08, 0.3, 0.1),
}


def augment_batch(x: torch.Tensor, level: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random affine (rotation, scale, shift, shear) per image, plus noise at `strong`.

    `x` is normalised B x C x H x W; the border fills with the image's own minimum, which is the
    background after `denoise` and close to it for light backgrounds after `original`.
    """
    if level == "none":
        return x
    rot, scale, shift, shear, noise = _LEVELS[level]
    b = x.shape[0]
    dev = x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=generator, device="cpu").to(dev) * (hi - lo) + lo

    angle = uniform(-rot, rot) * (math.pi / 180)
    s = uniform(1 - scale, 1 + scale)
    sh = uniform(-shear, shear)
    tx, ty = uniform(-shift, shift) * 2, uniform(-shift, shift) * 2
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack(
        [torch.stack([cos, -sin + sh, tx], 1), torch.stack([sin, cos, ty], 1)], 1
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Pad with the background value: shift the image so that background is 0, sample with zeros, shift back.
    background = x.amin(dim=(1, 2, 3), keepdim=True)
    out = F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + background
    if noise > 0:
        out = out + torch.randn(out.shape, generator=generator, device="cpu").to(dev) * noise
    return out
