"""On-device batch augmentation: shapes, determinism, what each level does."""

from __future__ import annotations

import pytest
import torch

from captcha.augment import AUGMENT_LEVELS, augment_batch


def _batch() -> torch.Tensor:
    x = torch.full((8, 1, 50, 130), -1.0)  # background at the minimum, as after normalisation
    x[:, :, 15:35, 20:110:6] = 1.0  # vertical strokes
    return x


@pytest.mark.parametrize("level", AUGMENT_LEVELS)
def test_levels_keep_the_shape_and_are_reproducible(level):
    x = _batch()
    a = augment_batch(x, level, torch.Generator().manual_seed(3))
    b = augment_batch(x, level, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and a.dtype == x.dtype and torch.equal(a, b)
    if level == "none":
        assert torch.equal(a, x)
    else:
        assert not torch.equal(a, x)
        assert not torch.equal(a[0], a[1])  # each image gets its own transform


def test_strong_is_stronger_than_light():
    x = _batch()
    change = {lvl: (augment_batch(x, lvl, torch.Generator().manual_seed(0)) - x).abs().mean().item() for lvl in ("light", "strong")}
    assert change["strong"] > change["light"] > 0


@pytest.mark.parametrize("background, ink", [(-1.0, 1.0), (0.8, -0.9)])  # after denoise; after gray
def test_borders_fill_with_the_background(background, ink):
    x = torch.full((8, 1, 50, 130), background)
    x[:, :, 15:35, 20:110:6] = ink
    out = augment_batch(x, "light", torch.Generator().manual_seed(1))
    corners = torch.cat([out[:, :, :2, :2].flatten(), out[:, :, -2:, -2:].flatten()])
    assert torch.allclose(corners, torch.full_like(corners, background), atol=1e-4)
