"""Hand-made hostile image files for the decoder and server tests, and the script that makes them.

    python tests/hostile/make_hostile.py    # rewrites the small files beside this script

`HOSTILE` names each file, the function that makes its bytes (deterministically) and what
`captcha.imageio.decode_image` must make of it: a BGR image of a given height and width, or a
refusal whose reason contains a given phrase. The small ones are committed; `LARGE` ones (real
16-bit images near the decoded-bytes limit, a few hundred KB) are made by the tests when needed.
Headers that lie (dimensions far beyond the file's data) are written by hand, since no encoder
writes them.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path
from typing import Callable, NamedTuple

import cv2
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent


class Hostile(NamedTuple):
    make: Callable[[], bytes]
    shape: tuple[int, int] | None = None  # (height, width) it decodes to ...
    refused: str = ""  # ... or a phrase of the reason it is refused for


def png_bytes(width: int, height: int, depth: int, colour: int, rows: bytes | None = None) -> bytes:
    """A PNG written by hand: any IHDR (even a lying one), the given filtered rows as its IDAT
    (streamed through zlib), no IDAT at all when `rows` is None."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    if rows is not None:
        out += chunk(b"IDAT", zlib.compress(rows, 9))
    return out + chunk(b"IEND", b"")


def flat_png(width: int, height: int, depth: int, colour: int) -> bytes:
    """A real PNG of one colour (all zero samples): tiny encoded, as large as asked decoded."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    row = b"\x00" * (1 + width * channels * depth // 8)  # filter byte + samples
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _encode(ext: str, array: np.ndarray) -> bytes:
    ok, data = cv2.imencode(ext, array)
    assert ok, ext
    return data.tobytes()


def _pillow(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def _gradient(height: int, width: int, channels: int, dtype) -> np.ndarray:
    top = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0
    ramp = np.linspace(0, top, height * width * channels).reshape(height, width, channels)
    return ramp.astype(dtype)[:, :, 0] if channels == 1 else ramp.astype(dtype)


def _gray_alpha16() -> bytes:
    samples = np.stack([_gradient(12, 16, 1, np.uint16), np.full((12, 16), 40000, np.uint16)], axis=-1)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in samples)
    return png_bytes(16, 12, 16, 4, rows)


def _palette_with_transparency() -> bytes:
    image = Image.fromarray(_gradient(12, 16, 1, np.uint8)).convert("P")
    return _pillow(image, "PNG", transparency=0)


def _frames(fmt: str, **options) -> bytes:
    frames = [Image.new("RGB", (20, 10), colour) for colour in ("red", "green", "blue")]
    return _pillow(frames[0], fmt, save_all=True, append_images=frames[1:], **options)


def _float_tiff() -> bytes:
    image = _gradient(10, 12, 1, np.float32) * 4.0 - 1.0  # outside [0, 1], with NaN and infinities
    image[0, :3] = [np.nan, np.inf, -np.inf]
    return _encode(".tiff", image)


def _jpeg_sof(width: int, height: int) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    return b"\xff\xd8" + sof + b"\xff\xd9"


def _gif_screen(width: int, height: int) -> bytes:
    """A GIF whose logical screen is `width` x `height`, holding one 1x1 frame."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame + b";"


def _tiff_header(width: int, height: int, bits: int, samples: int) -> bytes:
    """A little-endian TIFF whose tags claim `samples` channels of `bits` bits (Pillow shows 8-bit
    RGB for 16-bit RGB), with one strip of 8 bytes: refused on its header or it is a bomb."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, samples, None), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, None), (277, 3, 1, samples), (278, 4, 1, height), (279, 4, 1, 8)]
    ifd_size = 2 + 12 * len(entries) + 4
    bits_at, strip_at = 8 + ifd_size, 8 + ifd_size + 2 * samples
    body = b""
    for tag, kind, count, value in entries:
        if tag == 258:
            value = bits_at if samples > 2 else bits | (bits << 16)
        elif tag == 273:
            value = strip_at
        body += struct.pack("<HHII", tag, kind, count, value) if kind == 4 else struct.pack("<HHIHH", tag, kind, count, value & 0xFFFF, value >> 16)
    ifd = struct.pack("<H", len(entries)) + body + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack(f"<{samples}H", *[bits] * samples) + b"\x00" * 8


def _ppm_header(width: int, height: int, maxval: int) -> bytes:
    return f"P6\n{width} {height}\n{maxval}\n".encode() + b"\x00" * 12


HOSTILE: dict[str, Hostile] = {
    "gray16.png": Hostile(lambda: _encode(".png", _gradient(12, 16, 1, np.uint16)), shape=(12, 16)),
    "rgba16.png": Hostile(lambda: _encode(".png", _gradient(12, 16, 4, np.uint16)), shape=(12, 16)),
    "gray_alpha16.png": Hostile(_gray_alpha16, shape=(12, 16)),
    "palette_transparent.png": Hostile(_palette_with_transparency, shape=(12, 16)),
    "cmyk.jpg": Hostile(lambda: _pillow(Image.new("CMYK", (20, 10), (0, 255, 255, 0)), "JPEG"), shape=(10, 20)),
    "animated.gif": Hostile(lambda: _frames("GIF"), shape=(10, 20)),
    "animated.png": Hostile(lambda: _frames("PNG"), shape=(10, 20)),
    "animated.webp": Hostile(lambda: _frames("WEBP", lossless=True), shape=(10, 20)),
    "float_nan_inf.tiff": Hostile(_float_tiff, shape=(10, 12)),
    "int16_negative.tiff": Hostile(lambda: _encode(".tiff", (_gradient(10, 12, 1, np.int16) - 20000).astype(np.int16)), shape=(10, 12)),
    "bomb_100000x100000.png": Hostile(lambda: png_bytes(100_000, 100_000, 8, 0, b"\x00"), refused="exceeds the limit"),
    "bomb_15000x15000.jpg": Hostile(lambda: _jpeg_sof(15_000, 15_000), refused="exceeds the limit"),
    "bomb_screen_65535x65535.gif": Hostile(lambda: _gif_screen(65_535, 65_535), refused="exceeds the limit"),
    "deep_rgb16_6000x5000.tiff": Hostile(lambda: _tiff_header(6000, 5000, 16, 3), refused="decodes to"),
    "deep_rgb16_6000x5000.ppm": Hostile(lambda: _ppm_header(6000, 5000, 65535), refused="decodes to"),
    "deep_rgba16_4500x4500_header.png": Hostile(lambda: png_bytes(4500, 4500, 16, 6), refused="decodes to"),
    "zero_size.png": Hostile(lambda: png_bytes(0, 0, 8, 0, b""), refused="not a readable image"),
    "truncated.png": Hostile(lambda: _encode(".png", _gradient(40, 60, 3, np.uint8))[:200], refused="not a readable image"),
}

# Real images made at test time (a few hundred KB each): a 16-bit RGBA image just over the
# decoded-bytes limit (it has fewer pixels than the pixel limit), and one well under it.
LARGE: dict[str, Hostile] = {
    "rgba16_4500x4500.png": Hostile(lambda: flat_png(4500, 4500, 16, 6), refused="decodes to"),
    "rgba16_2000x2000.png": Hostile(lambda: flat_png(2000, 2000, 16, 6), shape=(2000, 2000)),
}


def main() -> int:
    for name, hostile in HOSTILE.items():
        (HERE / name).write_bytes(hostile.make())
    print(f"wrote {len(HOSTILE)} files to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
