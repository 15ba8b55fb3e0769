"""Random augmentation on the training device, a whole batch at a time.

Runs after the cached deterministic preprocessing, on normalised float tensors, so the GPU (or
the CPU's vector units) does it in a few large operations instead of Python per image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENT_LEVELS = ("none", "light", "strong")

# (max rotation degrees, max scale change, max translation as a fraction, max shear, noise std,
#  elastic displacement in pixels, probability of a random-strength blur)
_LEVELS = {
    "light": (5.0, 0.05, 0.04, 0.1, 0.0, 0.0, 0.0),
    "strong": (12.0, 0.12, 0.08, 0.3, 0.1, 1.5, 0.3),
}
_ELASTIC_GRID = (5, 13)  # control points of the smooth displacement field (rows, columns)


def augment_batch(x: torch.Tensor, level: str, generator: torch.Generator | None = None, ink_curves: float = 0.0) -> torch.Tensor:
    """Random affine (rotation, scale, shift, shear) per image; at `strong` also a smooth elastic
    displacement, a blur of random strength on some images, and pixel noise. Then, on an
    `ink_curves` share of the images, one extra curve in the ink's colour (`draw_ink_curves`).
    Level `none` returns `x` unchanged, whatever `ink_curves` says.

    `x` is normalised B x C x H x W; the area moved in from outside fills with each image's
    background, the median of its outermost pixels (light after `gray`, dark after `denoise`).
    """
    b = x.shape[0]
    dev = x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=generator, device="cpu").to(dev) * (hi - lo) + lo

    if level == "none":  # no augmentation at all, ink curves included
        return x
    rot, scale, shift, shear, noise, elastic, blur = _LEVELS[level]

    angle = uniform(-rot, rot) * (math.pi / 180)
    s = uniform(1 - scale, 1 + scale)
    sh = uniform(-shear, shear)
    tx, ty = uniform(-shift, shift) * 2, uniform(-shift, shift) * 2
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack(
        [torch.stack([cos, -sin + sh, tx], 1), torch.stack([sin, cos, ty], 1)], 1
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    h, w = x.shape[2:]
    if elastic > 0:  # low-resolution noise, upsampled: neighbouring pixels move together
        field = torch.randn((b, 2, *_ELASTIC_GRID), generator=generator, device="cpu").to(dev, x.dtype)
        field = F.interpolate(field, size=(h, w), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
        grid = grid + field * torch.tensor([elastic * 2 / w, elastic * 2 / h], device=dev, dtype=x.dtype)
    # Pad with the background value: shift the image so that background is 0, sample with zeros, shift back.
    background = _border_median(x)
    out = F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + background
    if blur > 0:  # blend towards a 3x3 binomial blur: 0 (sharp) to 1 (blurred), on a `blur` share of images
        kernel = torch.tensor([1.0, 2.0, 1.0], device=dev, dtype=x.dtype)
        kernel = (kernel[:, None] * kernel[None, :] / 16).expand(x.shape[1], 1, 3, 3)
        blurred = F.conv2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])
        strength = uniform(0, 1) * (uniform(0, 1) < blur)
        out = torch.lerp(out, blurred, strength.to(x.dtype).view(b, 1, 1, 1))
    if noise > 0:
        out = out + torch.randn(out.shape, generator=generator, device="cpu").to(dev) * noise
    return draw_ink_curves(out, ink_curves, uniform) if ink_curves > 0 else out


def draw_ink_curves(x: torch.Tensor, share: float, uniform) -> torch.Tensor:
    """On a `share` of the images, one sine curve over 50-100% of the width, 3-8% of the height
    thick, in each image's ink colour (`ink_colour`: dark text on a light background as `gray`
    gives it, light text on a dark one as `denoise` does).

    Practice at reading characters a curve of their own colour crosses, as many CAPTCHAs draw:
    the model sees such occlusions at every position, not only where its few labeled images
    have them. `uniform(lo, hi)` draws one value an image from the batch's generator.
    """
    b, _, h, w = x.shape
    dev, dtype = x.device, x.dtype
    on = (uniform(0, 1) < share).to(dtype)
    ink = ink_colour(x)
    middle, amplitude = uniform(0.3, 0.7) * h, uniform(0.05, 0.25) * h
    frequency, phase = uniform(0.5, 2.0) * 2 * math.pi / w, uniform(0, 2 * math.pi)
    thickness = uniform(0.03, 0.08) * h
    start = uniform(0.0, 0.5) * w
    end = start + uniform(0.5, 1.0) * w
    xs = torch.arange(w, device=dev, dtype=dtype)
    ys = torch.arange(h, device=dev, dtype=dtype)
    centre = middle[:, None] + amplitude[:, None] * torch.sin(frequency[:, None] * xs + phase[:, None])  # B x W
    cover = (thickness[:, None, None] / 2 - (ys[None, :, None] - centre[:, None, :]).abs() + 0.5).clamp(0, 1)  # B x H x W, antialiased
    span = ((xs >= start[:, None]) & (xs <= end[:, None])).to(dtype)  # B x W
    cover = cover * span[:, None, :] * on[:, None, None]
    return torch.lerp(x, ink.view(b, 1, 1, 1).expand_as(x), cover[:, None])


def _border_median(x: torch.Tensor) -> torch.Tensor:
    """Per image and channel, the median of the outermost rows and columns: B x C x 1 x 1."""
    edges = torch.cat([x[:, :, 0, :], x[:, :, -1, :], x[:, :, :, 0], x[:, :, :, -1]], dim=2)
    return edges.median(dim=2).values[:, :, None, None]


def ink_colour(x: torch.Tensor) -> torch.Tensor:
    """Per image, the value of its darkest or of its lightest 1% of pixels, whichever lies farther
    from the background (`_border_median`): dark text on a light background, as after `gray`, or
    light text on a dark one, as after `denoise`. B values."""
    # kthvalue (nearest rank) rather than torch.quantile, which refuses a large batch at full size.
    flat = x.reshape(x.shape[0], -1).float()
    rank = int(0.01 * (flat.shape[1] - 1)) + 1
    dark = flat.kthvalue(rank, dim=1).values
    light = flat.kthvalue(flat.shape[1] + 1 - rank, dim=1).values
    background = _border_median(x).flatten(1).float().mean(1)
    return torch.where((light - background).abs() > (dark - background).abs(), light, dark).to(x.dtype)
