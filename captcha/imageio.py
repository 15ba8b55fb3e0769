"""Decode images of any format, size and mode into one layout: uint8 BGR, H x W x 3.

Training, evaluation, prediction and the server all read images through `decode_image`, so a
PNG, a JPEG, a GIF, a palette or 16-bit image gives the same pixels everywhere.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np

from captcha.constants import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS

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


def header_pixels(data: bytes) -> int | None:
    """Pixels an encoded image will decode to, from its header alone (None: not known)."""
    size = _header_size(data)
    return None if size is None else size[0] * size[1]


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


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from the header alone, or None if the format is not recognised."""
    if data.startswith(_PNG_SIGNATURE) and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below is ours
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Image.DecompressionBombError as exc:  # over Pillow's own limit, far over ours: read its size
        size = _BOMB_SIZE.search(str(exc))
        return (int(size.group(1)), 1) if size else (MAX_IMAGE_PIXELS + 1, 1)
    except Exception:  # noqa: BLE001 - any other failure just means "unknown header"
        return None


_BOMB_SIZE = re.compile(r"\((\d+) pixels\)")  # Pillow's message: "Image size (225000000 pixels) exceeds limit ..."


def _to_bgr8(image: np.ndarray) -> np.ndarray:
    """Convert any OpenCV-decoded array (gray, BGRA, 16-bit, float) to uint8 BGR."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype.kind == "f" and np.nanmin(image) >= 0.0 and np.nanmax(image) <= 1.0:
        image = np.nan_to_num(image * 255.0).round().astype(np.uint8)  # float images in [0, 1], as TIFF writers store them
    elif image.dtype != np.uint8:
        image = cv2.normalize(np.nan_to_num(image.astype(np.float32)), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        # Composite transparent pixels over white: CAPTCHAs are drawn on light backgrounds.
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        rgb = image[:, :, :3].astype(np.float32)
        return (rgb * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    return np.ascontiguousarray(image[:, :, :3])


def _decode_with_pillow(data: bytes) -> np.ndarray | None:
    """Fallback for formats OpenCV lacks (GIF): first frame, converted to BGR."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)
            rgba = np.asarray(im.convert("RGBA"))
    except Exception:  # noqa: BLE001
        return None
    return _to_bgr8(cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))


def decode_image(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to uint8 BGR H x W x 3.

    `source` names the file or request in error messages.
    """
    if not data:
        raise ImageDecodeError(source, "empty image data")
    size = _header_size(data)
    if size is None:  # no size to check before decoding (OpenCV alone reads e.g. Radiance HDR): not decoded at all
        raise ImageDecodeError(source, "not a readable image (unknown format: its size cannot be read from its header)")
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        shape = f"{size[0]}x{size[1]}" if size[1] > 1 else f"{size[0]:,}"
        raise ImageDecodeError(source, f"image of {shape} pixels exceeds the limit of {MAX_IMAGE_PIXELS}")
    buffer = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        image = _decode_with_pillow(data)
        if image is None:
            raise ImageDecodeError(source, "not a readable image (truncated or unknown format)")
        return image
    if not (image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
        image = _to_bgr8(image)
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


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 BGR H x W x 3; errors name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(str(path), f"cannot read file ({exc.strerror})") from exc
    return decode_image(data, source=str(path))
