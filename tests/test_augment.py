"""On-device batch augmentation: shapes, determinism, what each level does."""

from __future__ import annotations

import pytest
import torch

from captcha.augment import AUGMENT_LEVELS, augment_batch, ink_colour


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


def _gray_batch() -> torch.Tensor:
    x = torch.full((64, 1, 50, 130), 0.8)  # light background, as after gray
    x[:, :, 15:35, 20:110:6] = -0.9  # dark strokes: the ink
    return x


@pytest.mark.parametrize("level", [lvl for lvl in AUGMENT_LEVELS if lvl != "none"])
def test_ink_curves_draw_in_the_ink_colour_on_about_their_share(level):
    x = _gray_batch()
    plain = augment_batch(x, level, torch.Generator().manual_seed(5))
    curved = augment_batch(x, level, torch.Generator().manual_seed(5), ink_curves=0.5)
    assert torch.equal(curved, augment_batch(x, level, torch.Generator().manual_seed(5), ink_curves=0.5))  # reproducible
    inked = (curved < plain - 0.5).flatten(1)  # pixels the curve darkened
    touched = inked.any(1)
    assert 16 <= touched.sum() <= 48  # about half the images
    assert curved[~touched].equal(plain[~touched])  # the others as the plain augmentation left them
    # the curve covers a band of pixels in the ink's colour (as `ink_colour` finds it), not a few stray ones
    ink = ink_colour(plain)
    assert ink.median() < 0  # dark, as the strokes are (strong blur can pale a thin stroke)
    full = ((curved.flatten(1) - ink[:, None]).abs() < 1e-4) & inked
    assert full[touched].sum(1).min() > 20  # a curve spans at least half the width


def test_ink_curves_off_leave_the_augmentation_unchanged_and_bad_shares_are_refused():
    x = _gray_batch()
    assert torch.equal(augment_batch(x, "none", torch.Generator().manual_seed(2), ink_curves=1.0), x)  # no augmentation at all
    assert torch.equal(augment_batch(x, "light", torch.Generator().manual_seed(2), ink_curves=0.0),
                       augment_batch(x, "light", torch.Generator().manual_seed(2)))
    assert augment_batch(x, "light", torch.Generator().manual_seed(2), ink_curves=1.0).ne(
        augment_batch(x, "light", torch.Generator().manual_seed(2))).flatten(1).any(1).all()  # every image
    from captcha.train_config import TrainConfig

    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="--ink-curves"):
            TrainConfig(ink_curves=bad)


def test_ink_colour_is_the_darkest_hundredth_even_for_a_batch_too_large_for_torch_quantile():
    x = torch.rand(2, 3, 100, 253)
    x[0].view(-1)[:760] = -1.0  # exactly the darkest hundredth of image 0 is ink
    assert ink_colour(x)[0] == -1.0 and ink_colour(x)[1] >= 0
    big = torch.full((220, 3, 100, 253), 0.5)  # more elements than torch.quantile accepts
    big[:, :, 40:60, :] = -0.9
    assert torch.equal(ink_colour(big), torch.full((220,), -0.9))


def test_ink_colour_is_light_on_a_dark_background_as_after_denoise():
    x = torch.full((4, 1, 50, 130), -1.0)  # dark background, as after denoise
    x[:, :, 15:35, 20:110:6] = 1.0  # light strokes: the ink
    assert torch.equal(ink_colour(x), torch.ones(4))
    curved = augment_batch(x, "none", ink_curves=1.0)
    assert torch.equal(curved, x)  # no augmentation at all
    curved = augment_batch(x, "light", torch.Generator().manual_seed(4), ink_curves=1.0)
    plain = augment_batch(x, "light", torch.Generator().manual_seed(4))
    assert ((curved > plain + 0.5).flatten(1).sum(1) > 20).all()  # every image gets a light curve
