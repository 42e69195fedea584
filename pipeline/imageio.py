"""Decode untidy image and label files into plain numpy arrays, and encode them back."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class BadInputError(ValueError):
    """An input file that cannot be used; the message is the reason recorded for the skip."""


def open_image(data: bytes) -> Image.Image:
    """Open and fully decode `data`, turning every way a file can be broken into BadInputError."""
    if not data:
        raise BadInputError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except UnidentifiedImageError:
        raise BadInputError("not an image file (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise BadInputError(f"cannot decode image: {exc}") from None
    return image


def needs_rgb_conversion(image: Image.Image) -> bool:
    """True when a reader could not get the same RGB pixels with a plain `convert("RGB")`."""
    return image.mode not in ("RGB", "L")


def to_rgb(image: Image.Image) -> np.ndarray:
    """H x W x 3 uint8 RGB from any mode: 16-bit scaled to 8 bits, alpha dropped, CMYK/palette converted."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 257.0 if image.mode != "F" and values.max(initial=0) > 255 else 1.0
        gray = np.clip(np.rint(values / scale), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)


def decode_rgb(data: bytes) -> np.ndarray:
    """Encoded bytes -> H x W x 3 uint8 (the one decoding rule shared by preprocessing and readers)."""
    return to_rgb(open_image(data))


def decode_rgb_oriented(data: bytes) -> np.ndarray:
    """Like decode_rgb, but turned upright by the EXIF orientation tag (photos for inference).

    A broken EXIF block only costs the rotation, not the image.
    """
    image = open_image(data)
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError):
        pass
    return to_rgb(image)


def decode_labels(data: bytes) -> np.ndarray:
    """Annotation bytes -> H x W integer label map; a colour annotation is a broken input."""
    image = open_image(data)
    if image.mode in ("L", "P"):
        return np.asarray(image, dtype=np.uint8)
    if image.mode in SIXTEEN_BIT_MODES:
        return np.asarray(image, dtype=np.int64)
    raise BadInputError(f"annotation has mode {image.mode}, expected a single-channel label map")


def encode_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def shrink_to_max_side(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """The image with antialiasing, shrunk so the longest side is at most `max_side` (0 = unchanged)."""
    height, width = rgb.shape[:2]
    scale = max_side / max(height, width)
    if max_side <= 0 or scale >= 1:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))


def resize_to_max_side(rgb: np.ndarray, labels: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Shrink so the longest side is at most `max_side`: image with antialiasing, labels nearest."""
    small_rgb = shrink_to_max_side(rgb, max_side)
    if small_rgb is rgb:
        return rgb, labels
    size = (small_rgb.shape[1], small_rgb.shape[0])
    return small_rgb, np.asarray(Image.fromarray(labels).resize(size, Image.Resampling.NEAREST))
