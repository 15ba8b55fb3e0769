"""Hypothesis strategies for hostile image bytes, shared by the fuzz tests.

`image_bytes()` draws from four kinds: real images of every format, depth and mode OpenCV writes
(`encoded_images`), the same with bytes flipped, cut, inserted or their header's size rewritten
(`mutated_images`), junk behind a format's magic bytes (`junk`), and the hand-made files of
tests/hostile (`hostile_files`).
"""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import cv2
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

HOSTILE_DIR = Path(__file__).resolve().parent / "hostile"

# (extension, dtype, channels) that OpenCV writes and reads back as written.
ENCODINGS = [
    (".png", np.uint8, 1), (".png", np.uint8, 3), (".png", np.uint8, 4),
    (".png", np.uint16, 1), (".png", np.uint16, 3), (".png", np.uint16, 4),
    (".tiff", np.uint8, 1), (".tiff", np.uint8, 4), (".tiff", np.uint16, 3), (".tiff", np.float32, 1),
    (".bmp", np.uint8, 1), (".bmp", np.uint8, 3), (".bmp", np.uint8, 4),
    (".jpg", np.uint8, 1), (".jpg", np.uint8, 3), (".webp", np.uint8, 3), (".webp", np.uint8, 4),
    (".ppm", np.uint16, 3), (".pgm", np.uint8, 1), (".gif", np.uint8, 3), (".sr", np.uint8, 3),
]
LOSSLESS = [e for e in ENCODINGS if e[0] in (".png", ".tiff", ".bmp", ".ppm", ".pgm", ".sr")]

MAGIC = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM", b"RIFF\x00\x00\x00\x00WEBP",
         b"P6\n", b"P5\n", b"\x00\x00\x00\x0cjP  ", b"#?RADIANCE\n"]


def load_hostile():
    """tests/hostile/make_hostile.py, imported from its file."""
    spec = importlib.util.spec_from_file_location("make_hostile", HOSTILE_DIR / "make_hostile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@st.composite
def image_arrays(draw, dtype, channels: int, max_side: int = 24) -> np.ndarray:
    """An array of `dtype` (floats with NaN and infinities) of 1 to `max_side` pixels a side."""
    shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side))) + ((channels,) if channels > 1 else ())
    if np.issubdtype(dtype, np.floating):
        elements = st.floats(-4.0, 4.0, width=32) | st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1.0])
    else:
        elements = st.integers(0, np.iinfo(dtype).max)
    return draw(hnp.arrays(dtype, shape, elements=elements))


@st.composite
def encoded_images(draw, encodings=ENCODINGS) -> tuple[str, np.ndarray, bytes]:
    """(extension, array, encoded bytes) of a real image."""
    ext, dtype, channels = draw(st.sampled_from(encodings))
    array = draw(image_arrays(dtype, channels))
    ok, data = cv2.imencode(ext, array)
    assert ok, (ext, array.dtype, array.shape)
    return ext, array, data.tobytes()


def _rewrite_size(data: bytes, width: int, height: int) -> bytes:
    """A PNG's IHDR size rewritten (CRC left stale, as an attacker may); other formats unchanged."""
    if data.startswith(MAGIC[0]) and len(data) >= 24:
        return data[:16] + struct.pack(">II", width, height) + data[24:]
    return data


@st.composite
def mutated_images(draw) -> bytes:
    data = bytearray(draw(encoded_images())[2])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "size"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            size = st.integers(0, 2**31 - 1) | st.integers(0, 70_000)
            data = bytearray(_rewrite_size(bytes(data), draw(size), draw(size)))
    return bytes(data)


def junk() -> st.SearchStrategy[bytes]:
    return st.binary(max_size=512) | st.builds(lambda magic, rest: magic + rest, st.sampled_from(MAGIC), st.binary(max_size=256))


def hostile_files() -> st.SearchStrategy[bytes]:
    hostile = load_hostile()
    return st.sampled_from([(HOSTILE_DIR / name).read_bytes() for name in sorted(hostile.HOSTILE)])


def image_bytes() -> st.SearchStrategy[bytes]:
    """Any of the four kinds of hostile image bytes."""
    return st.one_of(junk(), encoded_images().map(lambda e: e[2]), mutated_images(), hostile_files())
