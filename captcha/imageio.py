"""Decode images of any format, size and mode into one layout: uint8 BGR, H x W x 3.

Training, evaluation, prediction and the server all read images through `decode_image`, so a
PNG, a JPEG, a GIF, a palette or 16-bit image gives the same pixels everywhere.

Nothing is decoded before its header is read (`read_header`): an image over `MAX_IMAGE_PIXELS`
pixels or `MAX_DECODED_BYTES` of decoded samples is refused unread, and conversion to 8 bits
works in strips, so one decode holds little more than the decoder's own output. Files are read
through `read_image_file`: regular files only, their size checked before reading.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from captcha.constants import IMAGE_EXTENSIONS, MAX_DECODED_BYTES, MAX_IMAGE_FILE_BYTES, MAX_IMAGE_PIXELS

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageDecodeError(ValueError):
    """Raised when bytes are not a readable image: `source` names the file or request, `reason`
    says why, and the message is `source: reason`."""

    def __init__(self, source: str, reason: str):
        self.source, self.reason = source, reason
        super().__init__(f"{source}: {reason}")

    def __reduce__(self):
        return type(self), (self.source, self.reason)


def list_images(folder: str | Path, recursive: bool = False, problems: list[tuple[str, str]] | None = None) -> list[Path]:
    """The image files in `folder` (by extension, any case), sorted; with `recursive`, in its
    sub-folders too. The one place that decides which files count as images. Entries named like
    images that are not readable files (a broken link, a link loop, a folder, a pipe) are left
    out; with `problems`, each is added to it as (path, reason)."""
    folder = Path(folder)
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    found = []
    for path in candidates:
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        reason = file_problem(path)
        if reason is None:
            found.append(path)
        elif problems is not None and not (recursive and path.is_dir() and not path.is_symlink()):  # a walk goes into a folder
            problems.append((str(path), reason))
    return sorted(found)


def file_problem(path: str | Path) -> str | None:
    """Why `path` cannot be read as an image file, in a few words; None for a regular file."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        if os.path.islink(path):
            return "a broken symbolic link (its target is missing)"
        return "missing" if exc.errno in (errno.ENOENT, errno.ENOTDIR) else f"cannot read ({exc.strerror})"
    except ValueError:  # a NUL character in the name
        return "not a file name (it holds a NUL character)"
    if stat.S_ISDIR(mode):
        return "a folder, not an image file"
    return None if stat.S_ISREG(mode) else "not a regular file"


def expand_image_paths(given: list[str | Path]) -> list[Path]:
    """The paths as given, with each folder replaced by the images directly in it (sorted), as
    `captcha predict` and `captcha client` read them."""
    paths: list[Path] = []
    for item in map(Path, given):
        if not item.is_dir():
            paths.append(item)
            continue
        found = list_images(item)
        if not found:
            below = sorted(d.name + "/" for d in item.iterdir() if d.is_dir() and list_images(d))
            where = f" (its sub-folders {', '.join(below)} hold some: name them)" if below else ""
            raise FileNotFoundError(f"{item}: no images in this folder{where}")
        paths += found
    return paths


@dataclass(frozen=True)
class ImageHeader:
    """What an encoded image decodes to, read from its header alone: `channels` samples of
    `sample_bytes` bytes per pixel, as OpenCV's decoder returns them (upper bounds where the
    header does not say exactly)."""

    width: int
    height: int
    channels: int = 4
    sample_bytes: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        """The decoder's output: pixels x channels x bytes per sample."""
        return self.pixels * self.channels * self.sample_bytes

    @property
    def peak_bytes(self) -> int:
        """What one decode holds at its peak: the decoder's output, its 8-bit copy and the BGR result."""
        return self.pixels * (self.channels * self.sample_bytes + self.channels + 3)


def read_header(data: bytes) -> ImageHeader | None:
    """The size and sample layout an encoded image will decode to, from its header alone (None:
    the format is not recognised)."""
    if data.startswith(_PNG_SIGNATURE) and len(data) >= 26:
        return _png_header(data)
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below is ours
            with Image.open(io.BytesIO(data)) as im:
                return _pillow_header(im)
    except Image.DecompressionBombError as exc:  # over Pillow's own limit, far over ours: read its size
        size = _BOMB_SIZE.search(str(exc))
        return ImageHeader(int(size.group(1)) if size else MAX_IMAGE_PIXELS + 1, 1)
    except Exception:  # noqa: BLE001 - any other failure just means "unknown header"
        return None


_BOMB_SIZE = re.compile(r"\((\d+) pixels\)")  # Pillow's message: "Image size (225000000 pixels) exceeds limit ..."

# PNG colour type -> channels OpenCV decodes it to (gray, -, RGB, palette, gray+alpha, -, RGBA);
# a palette may carry transparency, and gray+alpha comes out as BGRA.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}

# Formats whose samples may be deeper than Pillow's mode shows (16-bit PPM and AVIF open as 8-bit
# "RGB"), as bytes per sample the decoder may hold; OpenJPEG decodes JPEG 2000 to 32-bit integers.
_DEEP_FORMATS = {"PPM": 2, "AVIF": 2, "JPEG2000": 4}


def _png_header(data: bytes) -> ImageHeader:
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    return ImageHeader(width, height, _PNG_CHANNELS.get(colour, 4), 2 if depth > 8 else 1)


def _pillow_header(im) -> ImageHeader:
    """Channels and sample size from Pillow's mode, deepened by what a TIFF's tags or the format say."""
    bands = len(im.getbands())
    channels = 4 if im.mode.startswith("P") else {1: 1, 3: 3}.get(bands, 4)
    sample_bytes = 2 if im.mode.startswith("I;16") else 4 if im.mode in ("I", "F") else 1
    sample_bytes = max(sample_bytes, _DEEP_FORMATS.get(im.format, 1))
    if im.format == "TIFF":
        tags = im.tag_v2
        bits = tags.get(258, 8)
        bits = max(bits) if isinstance(bits, tuple) and bits else bits
        samples = 4 if tags.get(262) == 3 else int(tags.get(277, 1))  # a palette (photometric 3) decodes to colour
        channels, sample_bytes = max(channels, samples), max(sample_bytes, -(-int(bits) // 8))
    width, height = im.size
    return ImageHeader(width, height, channels, sample_bytes)


def _refusal(header: ImageHeader | None) -> str | None:
    """Why an image is not decoded at all, judged by its header (None: it may be)."""
    if header is None:  # no size to check before decoding (OpenCV alone reads e.g. Radiance HDR): not decoded at all
        return "not a readable image (unknown format: its size cannot be read from its header)"
    shape = f"{header.width}x{header.height}" if header.height > 1 else f"{header.width:,}"
    if header.pixels > MAX_IMAGE_PIXELS:
        return f"image of {shape} pixels exceeds the limit of {MAX_IMAGE_PIXELS}"
    if header.decoded_bytes > MAX_DECODED_BYTES:
        return (f"image of {shape} pixels x {header.channels} channel(s) x {8 * header.sample_bytes} bits decodes to "
                f"{header.decoded_bytes / 1e6:,.0f} MB, over the limit of {MAX_DECODED_BYTES / 1e6:,.0f} MB")
    return None


# Depth conversion and alpha compositing work through the image this many bytes at a time, so
# their temporary (float) copies stay small whatever the image's size.
_STRIP_BYTES = 1024 * 1024


def _strips(image: np.ndarray):
    """Row slices of `image` of about `_STRIP_BYTES` each."""
    rows = max(1, _STRIP_BYTES // max(1, image[:1].nbytes))
    for top in range(0, image.shape[0], rows):
        yield slice(top, top + rows)


def _value_range(image: np.ndarray) -> tuple[float, float]:
    """(low, high) that map to 0 and 255: [0, 1] for float images within it (as TIFF writers store
    them), else the finite minimum and maximum (NaN and infinities ignored)."""
    low, high = np.inf, -np.inf
    for rows in _strips(image):
        strip = image[rows]
        if image.dtype.kind == "f":
            strip = strip[np.isfinite(strip)]
        if strip.size:
            low, high = min(low, float(strip.min())), max(high, float(strip.max()))
    if image.dtype.kind == "f" and 0.0 <= low and high <= 1.0:
        return 0.0, 1.0
    return (low, high) if low <= high else (0.0, 0.0)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Any decoded depth to uint8 without a full-size float copy: 16-bit by its high byte, other
    integer and float images scaled from their value range strip by strip (NaN -> 0)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        np.right_shift(image, 8, out=image)  # in place: the decoder's array is ours
        return image.astype(np.uint8)
    low, high = _value_range(image)
    scale = 255.0 / (high - low) if high > low else 0.0
    out = np.empty(image.shape, np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN and infinities are mapped below
        for rows in _strips(image):
            scaled = (image[rows].astype(np.float32) - np.float32(low)) * np.float32(scale)
            out[rows] = np.clip(np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0), 0, 255).round()
    return out


def _composite_over_white(image: np.ndarray, rgb_order: bool = False) -> np.ndarray:
    """uint8 colour + alpha (BGRA, or RGBA with `rgb_order`) -> BGR over a white background,
    strip by strip. CAPTCHAs are drawn on light backgrounds."""
    out = np.empty((*image.shape[:2], 3), np.uint8)
    colour = slice(2, None, -1) if rgb_order else slice(0, 3)
    for rows in _strips(image):
        alpha = image[rows, :, 3:4].astype(np.uint16)
        mixed = image[rows, :, colour] * alpha  # 255 x (colour x alpha + white x (1 - alpha)), in 16 bits
        mixed += (255 - alpha) * 255 + 128
        mixed += mixed >> 8
        out[rows] = mixed >> 8  # with the two lines above: exactly the rounded composite
    return out


def _to_bgr(image: np.ndarray) -> np.ndarray:
    """uint8 gray, gray+alpha, BGR or BGRA (extra channels dropped) -> uint8 BGR."""
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    if channels == 2:  # gray + alpha
        return _composite_over_white(np.ascontiguousarray(image[:, :, [0, 0, 0, 1]]))
    if channels == 3:
        return image
    return _composite_over_white(image)


def _decode_with_pillow(data: bytes) -> np.ndarray | None:
    """Fallback for formats OpenCV lacks: first frame, converted to BGR."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)
            rgba = np.asarray(im.convert("RGBA"))
    except Exception:  # noqa: BLE001
        return None
    return _composite_over_white(rgba, rgb_order=True)


def decode_image(data: bytes, source: str = "<bytes>", header: ImageHeader | None = None) -> np.ndarray:
    """Decode encoded image bytes to uint8 BGR H x W x 3.

    `source` names the file or request in error messages. The image is refused before decoding
    when its header is unreadable or over `MAX_IMAGE_PIXELS` or `MAX_DECODED_BYTES`; `header`
    is `read_header(data)` when the caller has read it already.
    """
    if not data:
        raise ImageDecodeError(source, "empty image data")
    refusal = _refusal(header or read_header(data))
    if refusal:
        raise ImageDecodeError(source, refusal)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        image = _decode_with_pillow(data)
        if image is None:
            raise ImageDecodeError(source, "not a readable image (truncated or unknown format)")
        return image
    image = _to_uint8(image)  # one step at a time, so the deeper copy is freed before the next
    image = _to_bgr(image)
    return _apply_orientation(image, data)


# EXIF orientation (tag 274) -> the OpenCV steps that show the image upright.
_ORIENTATION_STEPS = {
    2: ("flip", 1),
    3: ("rotate", cv2.ROTATE_180),
    4: ("flip", 0),
    5: ("transpose", None),
    6: ("rotate", cv2.ROTATE_90_CLOCKWISE),
    7: ("transverse", None),
    8: ("rotate", cv2.ROTATE_90_COUNTERCLOCKWISE),
}


def _exif_orientation(data: bytes) -> int:
    """The EXIF orientation a file asks for (1 = as stored); 1 when it carries none."""
    is_tiff = data[:4] in (b"II*\x00", b"MM\x00*")
    if not is_tiff and b"Exif" not in data[:65536]:
        return 1
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            return int(im.getexif().get(274, 1))
    except Exception:  # noqa: BLE001 - unreadable metadata: show the pixels as stored
        return 1


def _apply_orientation(image: np.ndarray, data: bytes) -> np.ndarray:
    """Turn a photo or scan stored sideways upright, as image viewers do (OpenCV's
    IMREAD_UNCHANGED, needed for alpha and 16-bit, ignores the EXIF orientation)."""
    step = _ORIENTATION_STEPS.get(_exif_orientation(data))
    if step is None:
        return image
    kind, arg = step
    if kind == "flip":
        return cv2.flip(image, arg)
    if kind == "rotate":
        return cv2.rotate(image, arg)
    transposed = np.ascontiguousarray(image.transpose(1, 0, 2))
    return transposed if kind == "transpose" else cv2.rotate(transposed, cv2.ROTATE_180)


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write an image file (its type from the extension), making the folder if needed; a path
    OpenCV cannot write is refused by name instead of failing silently."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        written = cv2.imwrite(str(path), image)
    except cv2.error as exc:
        raise ValueError(f"{path}: cannot write an image of type {path.suffix or '(no extension)'}; use .png or .jpg") from exc
    if not written:
        raise ValueError(f"{path}: could not be written")
    return path


_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a device"),
               (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))


def read_image_file(path: str | Path, max_bytes: int = MAX_IMAGE_FILE_BYTES, limit_name: str = "") -> bytes:
    """The bytes of an image file, read only when it is a regular file of at most `max_bytes`
    (checked before reading, and no more than that read); errors name the file, and `limit_name`
    says where the limit comes from (a flag)."""
    path = Path(path)
    try:  # non-blocking, so that a named pipe without a writer is refused instead of waited on
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ImageDecodeError(str(path), f"cannot read file ({exc.strerror})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "not a regular file")
            raise ImageDecodeError(str(path), f"{kind}, not an image file")
        with open(fd, "rb", closefd=False) as file:
            data = file.read(max_bytes + 1) if info.st_size <= max_bytes else b""
    finally:
        os.close(fd)
    if info.st_size > max_bytes or len(data) > max_bytes:  # too large on disk, or grew while read
        where = f" ({limit_name})" if limit_name else ""
        raise ImageDecodeError(str(path), f"{max(info.st_size, len(data)) / 2**20:.2f} MB, over the "
                                          f"{max_bytes / 2**20:.2f} MB limit{where}")
    return data


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 BGR H x W x 3; errors name the file."""
    return decode_image(read_image_file(path), source=str(path))
