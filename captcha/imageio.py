"""Decode images of any format, size and mode into one layout: uint8 BGR, H x W x 3.

Training, evaluation, prediction and the server all read images through `decode_image`, so a
PNG, a JPEG, a GIF, a palette or 16-bit image gives the same pixels everywhere.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import cv2
import numpy as np

from captcha.constants import MAX_IMAGE_PIXELS

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageDecodeError(ValueError):
    """Raised when bytes are not a readable image; the message says why."""


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from the header alone, or None if the format is not recognised."""
    if data.startswith(_PNG_SIGNATURE) and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any failure just means "unknown header"
        return None


def _to_bgr8(image: np.ndarray) -> np.ndarray:
    """Convert any OpenCV-decoded array (gray, BGRA, 16-bit, float) to uint8 BGR."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = cv2.normalize(image.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
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
        raise ImageDecodeError(f"{source}: empty image data")
    size = _header_size(data)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise ImageDecodeError(
            f"{source}: image of {size[0]}x{size[1]} pixels exceeds the limit of {MAX_IMAGE_PIXELS}"
        )
    buffer = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        image = _decode_with_pillow(data)
        if image is None:
            raise ImageDecodeError(f"{source}: not a readable image (truncated or unknown format)")
        return image
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return image
    return _to_bgr8(image)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 BGR H x W x 3; errors name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read file ({exc.strerror})") from exc
    return decode_image(data, source=str(path))
