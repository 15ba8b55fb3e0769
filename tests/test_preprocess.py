import cv2
import numpy as np
import pytest

from captcha.generate import STYLES, render
from captcha.preprocess import get_preprocessor, list_preprocessors, normalize, preprocess


def _text_with_curve_and_dots(seed=0):
    """White image, thick dark text in the middle, a thin curve across the width, some dots."""
    rng = np.random.default_rng(seed)
    img = np.full((50, 130, 3), 255, np.uint8)
    text = np.zeros((50, 130), np.uint8)
    cv2.putText(text, "7b", (40, 36), cv2.FONT_HERSHEY_SIMPLEX, 1.1, 255, 3, cv2.LINE_AA)
    curve = np.zeros((50, 130), np.uint8)
    xs = np.arange(130)
    ys = (25 + 12 * np.sin(xs / 20.0)).round().astype(np.int32)
    cv2.polylines(curve, [np.stack([xs, ys], 1)[None]], False, 255, 1)
    dots = np.zeros((50, 130), np.uint8)
    for _ in range(25):
        cv2.circle(dots, (int(rng.integers(0, 130)), int(rng.integers(0, 50))), 1, 255, -1)
    img[text > 128] = (30, 30, 30)
    img[(curve > 0) & (text == 0)] = (90, 40, 200)
    img[(dots > 0) & (text == 0)] = (20, 150, 20)
    return img, text > 128, (curve > 0) & (text == 0), (dots > 0) & (text == 0) & (curve == 0)


def test_registry_has_the_three_report_preprocessors():
    assert {"original", "denoise", "denoise2"} <= set(list_preprocessors())
    assert get_preprocessor("original").channels == 3
    assert get_preprocessor("denoise").channels == 1
    with pytest.raises(ValueError, match="unknown preprocessor"):
        get_preprocessor("nope")


@pytest.mark.parametrize("name", ["original", "gray", "denoise", "denoise2"])
@pytest.mark.parametrize("style", sorted(STYLES))
def test_every_preprocessor_on_every_style(name, style):
    image = render("a7x2", STYLES[style], np.random.default_rng(1), (60, 160))
    out = get_preprocessor(name)(image, (50, 130))
    assert out.dtype == np.uint8 and out.shape == (50, 130, get_preprocessor(name).channels)
    x = preprocess(name, image)
    assert x.dtype == np.float32 and x.shape == (get_preprocessor(name).channels, 50, 130)
    assert -1.0 <= x.min() and x.max() <= 1.0


def test_denoise_erases_curve_and_dots_but_keeps_text():
    img, text, curve, dots = _text_with_curve_and_dots()
    out = get_preprocessor("denoise")(img, (50, 130))[:, :, 0] > 0
    assert out[text].mean() > 0.8
    assert out[curve].mean() < 0.2
    assert out[dots].mean() < 0.2


def test_denoise2_erases_dots_but_keeps_the_curve():
    img, text, curve, dots = _text_with_curve_and_dots()
    out = get_preprocessor("denoise2")(img, (50, 130))[:, :, 0] > 0
    assert out[text].mean() > 0.8
    assert out[curve].mean() > 0.6
    assert out[dots].mean() < 0.2


def test_denoise_handles_light_text_on_dark_background():
    img, text, _, _ = _text_with_curve_and_dots()
    out = get_preprocessor("denoise")(255 - img, (50, 130))[:, :, 0] > 0
    assert out[text].mean() > 0.8 and out[~text].mean() < 0.1


def test_normalize_matches_the_stated_formula():
    u8 = np.array([[[0], [255]]], np.uint8)
    assert np.allclose(normalize(u8, 0.5, 0.5)[0, 0], [-1.0, 1.0])
