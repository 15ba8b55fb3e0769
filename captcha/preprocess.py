"""OpenCV preprocessors, registered by name.

A preprocessor turns a decoded image (uint8 BGR, any size) into a uint8 H x W x K array at the
model's input size (K = 1, or 3 in RGB order). It is deterministic, so datasets cache its output; `normalize`
then turns it into the float32 K x H x W tensor a model reads. Training, evaluation, prediction
and the server all call `preprocess` (or these two halves), so they see identical inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from captcha.constants import INPUT_SIZE, NORM_MEAN, NORM_STD

PreprocessFn = Callable[[np.ndarray, tuple[int, int]], np.ndarray]


@dataclass(frozen=True)
class Preprocessor:
    name: str
    channels: int
    fn: PreprocessFn
    description: str

    def __call__(self, image: np.ndarray, size: tuple[int, int] = INPUT_SIZE) -> np.ndarray:
        out = self.fn(image, size)
        return out if out.ndim == 3 else out[:, :, None]


_PREPROCESSORS: dict[str, Preprocessor] = {}


def register_preprocessor(name: str, channels: int) -> Callable[[PreprocessFn], PreprocessFn]:
    """Register `fn(image_bgr_uint8, (h, w)) -> uint8 HxW[xK]` under `name`."""

    def wrap(fn: PreprocessFn) -> PreprocessFn:
        if name in _PREPROCESSORS:
            raise ValueError(f"preprocessor {name!r} is already registered")
        doc = (fn.__doc__ or "").strip().splitlines()
        _PREPROCESSORS[name] = Preprocessor(name, channels, fn, doc[0] if doc else "")
        return fn

    return wrap


def get_preprocessor(name: str) -> Preprocessor:
    try:
        return _PREPROCESSORS[name]
    except KeyError:
        raise ValueError(
            f"unknown preprocessor {name!r}; choose from {', '.join(list_preprocessors())}"
        ) from None


def list_preprocessors() -> list[str]:
    return sorted(_PREPROCESSORS)


def normalize(image: np.ndarray, mean: float = NORM_MEAN, std: float = NORM_STD) -> np.ndarray:
    """uint8 H x W x K -> float32 K x H x W, (x / 255 - mean) / std."""
    x = image.astype(np.float32) * (1.0 / 255.0)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(name: str, image: np.ndarray, size: tuple[int, int] = INPUT_SIZE) -> np.ndarray:
    """Decoded BGR image -> normalised float32 K x H x W, the model's input."""
    return normalize(get_preprocessor(name)(image, size))


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The one resize every image takes to the model's input size (area when shrinking)."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    shrinking = image.shape[0] > h or image.shape[1] > w
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _background_color(image: np.ndarray) -> np.ndarray:
    """Median colour of the one-pixel border: CAPTCHA text rarely touches every edge."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float32)
    return np.median(border, axis=0)


def ink_strength(image: np.ndarray) -> np.ndarray:
    """uint8 H x W map of how far each pixel's colour is from the background (0 = background).

    Works for dark-on-light, light-on-dark and coloured text alike.
    """
    diff = image.astype(np.float32) - _background_color(image)
    dist = np.sqrt((diff * diff).sum(axis=2))
    top = max(float(np.percentile(dist, 99.5)), 1.0)
    return np.clip(dist * (255.0 / top), 0, 255).astype(np.uint8)


def _ink_mask(strength: np.ndarray) -> np.ndarray:
    """Boolean foreground mask by Otsu's threshold on the ink strength."""
    threshold, _ = cv2.threshold(strength, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return strength > max(threshold, 40)


def _remove_specks(mask: np.ndarray) -> np.ndarray:
    """Drop connected components too small to be part of a character (noise dots)."""
    h, w = mask.shape
    min_area = max(4, int(round(0.0025 * h * w)))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    extent = np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT])
    keep = (stats[:, cv2.CC_STAT_AREA] >= min_area) & (extent >= 0.12 * h)
    keep[0] = False  # the background
    return keep[labels]


def _vertical_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every vertical run of True pixels as (column, start row, length), column by column."""
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1]), dtype=np.int8)
    padded[1:-1] = mask
    change = np.diff(padded, axis=0).T  # W x (H + 1): +1 where a run starts, -1 past its end
    columns, starts = np.nonzero(change == 1)
    _, ends = np.nonzero(change == -1)
    return columns, starts, ends - starts


def _fit_curve(runs: tuple[np.ndarray, np.ndarray, np.ndarray], h: int, w: int, max_thickness: int) -> np.ndarray | None:
    """Fit y(x) to the thin horizontal stroke running across the image, or None if none.

    Thin runs (at most `max_thickness` pixels tall) in a column are candidate points of the noise
    curve; a cubic is fitted to them and refined by discarding outliers, like the course
    report's regression line, but robust to the letters it crosses.
    """
    columns, starts, lengths = runs
    thin = lengths <= max_thickness
    xs = columns[thin].astype(np.float64)
    ys = starts[thin] + (lengths[thin] - 1) / 2.0
    if len(np.unique(xs)) < 0.35 * w:
        return None
    inliers = np.ones(len(xs), dtype=bool)
    coeffs = None
    for tolerance in (h * 0.25, h * 0.12, 2.5):
        if inliers.sum() < 8:
            return None
        coeffs = np.polyfit(xs[inliers], ys[inliers], 3)
        inliers = np.abs(np.polyval(coeffs, xs) - ys) <= tolerance
    # A real curve spans most of the width; scattered thin strokes of letters do not.
    if len(np.unique(xs[inliers])) < 0.35 * w:
        return None
    return np.polyval(coeffs, np.arange(w))


def _erase_curve(mask: np.ndarray, runs: tuple[np.ndarray, np.ndarray, np.ndarray], curve_y: np.ndarray, max_thickness: int) -> np.ndarray:
    """Erase the thin runs lying on the fitted curve; thicker runs (letters it crosses) stay."""
    columns, starts, lengths = runs
    centres = starts + (lengths - 1) / 2.0
    hit = (lengths <= max_thickness + 1) & (np.abs(centres - curve_y[columns]) <= 0.6 * max_thickness + 0.5)
    if not hit.any():
        return mask
    cols, begin, size = columns[hit], starts[hit], lengths[hit]
    offsets = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size)
    out = mask.copy()
    out[np.repeat(begin, size) + offsets, np.repeat(cols, size)] = False
    return out


def _clean(image: np.ndarray, size: tuple[int, int], remove_curve: bool) -> np.ndarray:
    image = resize(image, size)
    strength = ink_strength(image)
    mask = _ink_mask(strength)
    if remove_curve:
        thickness = max(2, int(round(size[0] * 0.07)))
        runs = _vertical_runs(mask)
        curve = _fit_curve(runs, *mask.shape, thickness)
        if curve is not None:
            mask = _erase_curve(mask, runs, curve, thickness)
    mask = _remove_specks(mask)
    return np.where(mask, np.maximum(strength, 128), 0).astype(np.uint8)


@register_preprocessor("original", channels=3)
def original(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize only; 3 channels (RGB)."""
    return cv2.cvtColor(resize(image, size), cv2.COLOR_BGR2RGB)


@register_preprocessor("gray", channels=1)
def gray(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize and convert to grayscale; 1 channel."""
    return cv2.cvtColor(resize(image, size), cv2.COLOR_BGR2GRAY)


@register_preprocessor("denoise", channels=1)
def denoise(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Erase the noise curve (fitted and removed) and the noise dots; 1 channel, ink bright."""
    return _clean(image, size, remove_curve=True)


@register_preprocessor("denoise2", channels=1)
def denoise2(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Erase the noise dots only, keeping the curve; 1 channel, ink bright."""
    return _clean(image, size, remove_curve=False)
