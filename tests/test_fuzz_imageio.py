"""Property-based fuzzing of `captcha.imageio` with Hypothesis: whatever the bytes, the decoder
gives uint8 BGR within the limits its header promised, or an `ImageDecodeError`, and never
anything else. Fixed example budgets keep the module to a few seconds on two cores; no example
database is written (each CI run starts clean, and a failure prints its example).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from captcha.constants import MAX_DECODED_BYTES, MAX_IMAGE_PIXELS
from captcha.imageio import ImageDecodeError, decode_image, read_header

import fuzz_strategies as fuzz  # noqa: E402 - tests/ is on the path, as for serving_hooks

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow on corrupt metadata, by design here
FUZZ = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(fuzz.image_bytes())
def test_any_bytes_decode_to_bgr8_within_the_header_or_a_decode_error(data: bytes) -> None:
    header = read_header(data)  # never raises
    try:
        image = decode_image(data, "fuzz")
    except ImageDecodeError as exc:
        assert exc.source == "fuzz" and exc.reason
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    # the header the limits were checked against promised at least what came out (no parser
    # disagreement lets a small header through with a large image behind it)
    assert header is not None and image.shape[0] * image.shape[1] <= header.pixels <= MAX_IMAGE_PIXELS
    assert header.decoded_bytes <= MAX_DECODED_BYTES


def _reference_bgr(array: np.ndarray) -> np.ndarray:
    """What a lossless integer image must decode to: 16-bit by its high byte, gray repeated,
    alpha composited over white (rounded)."""
    eight = (array >> 8).astype(np.uint8) if array.dtype == np.uint16 else array
    if eight.ndim == 2:
        return np.repeat(eight[:, :, None], 3, axis=2)
    if eight.shape[2] == 3:
        return eight
    alpha = eight[:, :, 3:4].astype(np.float64) / 255.0
    return np.round(eight[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


@FUZZ
@given(fuzz.encoded_images([e for e in fuzz.LOSSLESS if e[1] != np.float32]))
def test_lossless_integer_images_keep_their_pixels(encoded) -> None:
    ext, array, data = encoded
    assert np.array_equal(decode_image(data), _reference_bgr(array)), ext


@settings(max_examples=60, deadline=None, database=None)
@given(fuzz.image_arrays(np.float32, 1))
def test_float_images_map_to_0_255_with_nan_black(array: np.ndarray) -> None:
    import cv2

    out = decode_image(cv2.imencode(".tiff", array)[1].tobytes())[:, :, 0]
    assert (out[np.isnan(array)] == 0).all()
    finite = np.isfinite(array)
    if finite.any() and array[finite].min() >= 0 and array[finite].max() <= 1:  # a unit-range image: x 255
        assert np.abs(out[finite].astype(int) - np.round(array[finite] * 255)).max() <= 1
    elif finite.any() and array[finite].max() > array[finite].min():  # else stretched: its minimum black, its maximum white
        assert out[finite][np.argmin(array[finite])] == 0 and out[finite][np.argmax(array[finite])] == 255


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=64) | fuzz.mutated_images())
def test_read_header_never_raises_and_never_promises_negative_sizes(data: bytes) -> None:
    header = read_header(data)
    assert header is None or (header.pixels >= 0 and header.channels >= 1 and header.sample_bytes >= 1)
