import io
import os
import struct
import threading
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from captcha.constants import MAX_DECODED_BYTES, MAX_IMAGE_PIXELS
from captcha.imageio import ImageDecodeError, ImageHeader, decode_image, list_images, read_header, read_image, read_image_file


def _rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)


def _pil_bytes(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "make",
    [
        lambda a: _pil_bytes(Image.fromarray(a, "RGB"), "PNG"),
        lambda a: _pil_bytes(Image.fromarray(a, "RGB").convert("RGBA"), "PNG"),
        lambda a: _pil_bytes(Image.fromarray(a, "RGB").convert("L"), "PNG"),
        lambda a: _pil_bytes(Image.fromarray(a, "RGB").convert("P"), "PNG"),
        lambda a: _pil_bytes(Image.fromarray(a, "RGB"), "JPEG"),
        lambda a: _pil_bytes(Image.fromarray(a, "RGB").convert("P"), "GIF"),
        lambda a: _pil_bytes(Image.fromarray(a, "RGB"), "BMP"),
        lambda a: cv2.imencode(".png", (a.astype(np.uint16) * 257))[1].tobytes(),
    ],
    ids=["png-rgb", "png-rgba", "png-gray", "png-palette", "jpeg", "gif", "bmp", "png-16bit"],
)
def test_every_mode_and_format_decodes_to_bgr8(make):
    out = decode_image(make(_rgb()))
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)


def test_rgba_transparency_is_composited_over_white():
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    data = _pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG")
    assert (decode_image(data) == 255).all()


def test_colours_survive_png_roundtrip():
    a = _rgb()
    data = cv2.imencode(".png", a)[1].tobytes()
    assert np.array_equal(decode_image(data), a)


@pytest.mark.parametrize("data, reason", [(b"", "empty"), (b"not an image at all", "not a readable image")])
def test_bad_bytes_get_a_clear_error(data, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(data, "req-1")


def test_truncated_png_is_rejected():
    data = cv2.imencode(".png", _rgb())[1].tobytes()
    with pytest.raises(ImageDecodeError, match="req"):
        decode_image(data[: len(data) // 2], "req")


def test_decompression_bomb_is_refused_before_decoding():
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        decode_image(data)


def test_formats_whose_size_the_header_does_not_give_are_not_decoded(monkeypatch):
    # OpenCV alone reads Radiance HDR: a 2.6 MB .hdr of one colour decodes to 42M float pixels, so
    # decoding it to check its size afterwards would be the bomb; it is refused unread.
    hdr = cv2.imencode(".hdr", np.full((40, 60, 3), 0.5, np.float32))[1].tobytes()
    decoded = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decoded.append(a))
    with pytest.raises(ImageDecodeError, match="unknown format: its size cannot be read from its header"):
        decode_image(hdr, "req")
    assert decoded == []


def test_only_images_small_encoded_and_decoded_are_read_on_the_servers_event_loop():
    from serving.engine import decodes_inline

    small = cv2.imencode(".png", _rgb())[1].tobytes()
    flat = cv2.imencode(".png", np.zeros((3000, 3000), np.uint8))[1].tobytes()  # 9M pixels in a few KB
    assert decodes_inline(small) and len(flat) < 64 * 1024 and not decodes_inline(flat)
    assert not decodes_inline(b"not an image")


def test_read_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ImageDecodeError, match="broken.png"):
        read_image(bad)
    with pytest.raises(ImageDecodeError, match="missing.png"):
        read_image(tmp_path / "missing.png")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_image_viewers_do(orientation):
    from PIL import ImageOps

    upright = np.zeros((20, 30, 3), np.uint8)
    upright[:, :8] = 255  # a white band on the left
    upright[:5, :, 2] = 200  # a red one on top
    undo = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}
    stored = Image.fromarray(upright[:, :, ::-1])
    stored = stored.transpose(undo[orientation]) if orientation in undo else stored
    exif = Image.Exif()
    exif[274] = orientation
    buf = io.BytesIO()
    stored.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    out = decode_image(buf.getvalue())
    viewer = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))[:, :, ::-1]
    assert out.shape == (20, 30, 3) and np.abs(out.astype(int) - viewer).max() == 0
    assert np.abs(out.astype(int) - upright).mean() < 6


def test_float_tiff_in_unit_range_reads_like_the_same_image_as_png():
    gray = np.random.default_rng(1).integers(0, 256, (20, 30)).astype(np.uint8)
    ok, tiff = cv2.imencode(".tiff", gray.astype(np.float32) / 255.0)
    assert ok
    assert np.abs(decode_image(tiff.tobytes())[:, :, 0].astype(int) - gray).max() <= 1


def test_decode_error_keeps_the_source_and_the_reason_apart():
    with pytest.raises(ImageDecodeError) as info:
        decode_image(b"junk", "colon: data/2345_bad.png")
    assert info.value.source == "colon: data/2345_bad.png" and info.value.reason.startswith("not a readable image")
    assert str(info.value) == f"colon: data/2345_bad.png: {info.value.reason}"


def test_list_images_takes_image_extensions_in_any_case_sorted(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.txt", "labels.csv", "sub/d.gif", "sub/deeper/e.webp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()  # a folder with an image's name is not an image
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG"]
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)] == [
        "a.jpg", "b.PNG", "sub/d.gif", "sub/deeper/e.webp"]


# ------------------------------------------------------------------------- hostile files (issue #32)

HOSTILE_DIR = Path(__file__).resolve().parent / "hostile"


import hostile.make_hostile as hostile  # noqa: E402 - tests/ is on the path, as for serving_hooks


@pytest.mark.parametrize("name", sorted(hostile.HOSTILE))
def test_each_hostile_file_decodes_or_is_refused_as_its_table_says(name):
    case = hostile.HOSTILE[name]
    data = (HOSTILE_DIR / name).read_bytes()
    assert data == case.make(), f"tests/hostile/{name} is stale: run python tests/hostile/make_hostile.py"
    if case.shape:
        out = decode_image(data, name)
        assert out.dtype == np.uint8 and out.shape == (*case.shape, 3)
    else:
        with pytest.raises(ImageDecodeError, match=case.refused):
            decode_image(data, name)


@pytest.mark.parametrize("name", sorted(hostile.LARGE))
def test_deep_images_are_bounded_by_their_decoded_bytes_not_only_their_pixels(name):
    # the 4500x4500 16-bit RGBA PNG has half the pixels the pixel limit allows, yet decodes to
    # more bytes than MAX_DECODED_BYTES: refused from its header, before any decoding
    case = hostile.LARGE[name]
    data = case.make()
    header = read_header(data)
    assert header.pixels < MAX_IMAGE_PIXELS
    if case.refused:
        assert header.decoded_bytes > MAX_DECODED_BYTES
        with pytest.raises(ImageDecodeError, match=r"4500x4500 pixels x 4 channel\(s\) x 16 bits decodes to 162 MB, over the limit of 160 MB"):
            decode_image(data, name)
    else:
        assert decode_image(data, name).shape == (*case.shape, 3)


def _sixteen_bit_rgba() -> bytes:
    return hostile.LARGE["rgba16_2000x2000.png"].make()


@pytest.mark.parametrize("make", [
    _sixteen_bit_rgba,
    lambda: cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (2000, 2000, 4), dtype=np.uint8))[1].tobytes(),
    lambda: cv2.imencode(".tiff", np.random.default_rng(0).random((2000, 2000), dtype=np.float32) * 3)[1].tobytes(),
], ids=["rgba16", "rgba8", "float32"])
def test_depth_conversion_and_alpha_make_no_full_size_float_copies(make):
    # numpy (and OpenCV's arrays, allocated through numpy) report to tracemalloc; the decode's peak
    # must stay within the header's estimate that the server budgets by (decoder output, its
    # 8-bit copy and the BGR result): full-size float copies needed several times that
    data = make()
    header = read_header(data)
    tracemalloc.start()
    try:
        decode_image(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= header.peak_bytes, f"decoding held {peak / 1e6:.0f} MB; the estimate is {header.peak_bytes / 1e6:.0f} MB"


def test_sixteen_bit_and_float_samples_keep_their_values():
    deep = np.arange(0, 65536, 257, dtype=np.uint16)[:240].reshape(12, 20)  # 0, 257, ... -> 0, 1, ...
    out = decode_image(cv2.imencode(".png", deep)[1].tobytes())
    assert np.array_equal(out[:, :, 0], (deep >> 8).astype(np.uint8))
    ramp = np.linspace(-2.0, 6.0, 240, dtype=np.float32).reshape(12, 20)  # outside [0, 1]: stretched to 0..255
    ramp[0, :3] = [np.nan, np.inf, -np.inf]
    out = decode_image(cv2.imencode(".tiff", ramp)[1].tobytes())[:, :, 0]
    assert out[0, 0] == 0 and out[0, 1] == 255 and out[0, 2] == 0  # NaN -> 0, infinities clipped
    finite = np.isfinite(ramp)
    expected = np.round((ramp - ramp[finite].min()) / (ramp[finite].max() - ramp[finite].min()) * 255)
    assert np.abs(out[finite].astype(int) - expected[finite]).max() <= 1


def test_the_header_reports_samples_pillow_hides():
    # Pillow opens 16-bit RGB TIFF and PPM as 8-bit "RGB"; OpenCV decodes them to 16 bits
    for ext in (".tiff", ".ppm"):
        data = cv2.imencode(ext, np.zeros((10, 12, 3), np.uint16))[1].tobytes()
        assert read_header(data) == ImageHeader(12, 10, 3, 2), ext
    assert read_header(cv2.imencode(".png", np.zeros((10, 12), np.uint16))[1].tobytes()) == ImageHeader(12, 10, 1, 2)
    assert read_header(cv2.imencode(".jpg", np.zeros((10, 12, 3), np.uint8))[1].tobytes()) == ImageHeader(12, 10, 3, 1)
    assert read_header(b"not an image") is None


# --------------------------------------------------------------------- bounded file reads (issue #32)


def test_read_image_file_refuses_what_is_not_a_regular_file_without_waiting(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    writer = threading.Timer(5.0, lambda: _feed(fifo))  # only for code that would block on the pipe
    writer.start()
    try:
        with pytest.raises(ImageDecodeError, match="pipe.png: a named pipe, not an image file"):
            read_image_file(fifo)
    finally:
        writer.cancel()
    with pytest.raises(ImageDecodeError, match="a device, not an image file"):
        read_image_file("/dev/zero")
    with pytest.raises(ImageDecodeError, match="a folder, not an image file"):
        read_image_file(tmp_path)
    with pytest.raises(ImageDecodeError, match=r"missing.png: cannot read file \(No such file"):
        read_image_file(tmp_path / "missing.png")


def _feed(fifo: Path) -> None:
    with open(fifo, "wb") as pipe:
        pipe.write(b"not an image")


def test_read_image_file_checks_the_size_before_reading(tmp_path):
    big = tmp_path / "big.png"
    with open(big, "wb") as f:  # sparse: 64 MiB long, nothing on disk
        f.truncate(64 * 2**20)
    tracemalloc.start()
    try:
        with pytest.raises(ImageDecodeError, match=r"big.png: 64.00 MB, over the 1.00 MB limit \(--flag\)"):
            read_image_file(big, max_bytes=2**20, limit_name="--flag")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20  # refused unread
    small = tmp_path / "small.png"
    small.write_bytes(cv2.imencode(".png", _rgb())[1].tobytes())
    assert read_image_file(small, max_bytes=small.stat().st_size) == small.read_bytes()
    assert read_image(small).shape == (20, 30, 3)
