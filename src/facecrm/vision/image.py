"""Decode untrusted image bytes into an RGB array, or fail with a clear reason.

Every photo that reaches facecrm (CLI, API, kiosk, phone) passes through
`decode_image`. It checks the byte size before decoding, the pixel count from
the header before allocating, restricts formats to the ones cameras and phones
produce, applies the EXIF orientation (phones store portraits sideways) and
normalises grayscale, palette, alpha, 16-bit and CMYK images to 8-bit RGB.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageFile, ImageOps, UnidentifiedImageError

from facecrm.config import get_settings
from facecrm.vision.types import Image

ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF"})

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated upload is an error, not a grey band
PILImage.MAX_IMAGE_PIXELS = None  # we enforce our own, configurable limit below


class ImageError(ValueError):
    """An image that cannot be used; `reason` is a stable machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def read_image(path: str | Path) -> Image:
    """Read and decode an image file (see `decode_image`)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError("not_found", f"{path}: no such file")
    limit = get_settings().max_upload_bytes
    if path.stat().st_size > limit:
        raise ImageError("too_large", f"{path}: larger than the {limit} byte limit")
    return decode_image(path.read_bytes())


def decode_image(data: bytes) -> Image:
    """Decode `data` into an upright RGB uint8 array, or raise `ImageError`."""
    settings = get_settings()
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageError("wrong_type", f"expected image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError("empty", "the image is empty (0 bytes)")
    if len(data) > settings.max_upload_bytes:
        raise ImageError(
            "too_large", f"the image is larger than the {settings.max_upload_bytes} byte limit"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # malformed metadata: not worth a log
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            pil = PILImage.open(io.BytesIO(bytes(data)))
    except UnidentifiedImageError as exc:
        raise ImageError("not_an_image", "the data is not a recognised image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError("corrupt", f"the image header is corrupt: {exc}") from exc
    with pil:
        if pil.format not in ALLOWED_FORMATS:
            raise ImageError(
                "unsupported_format",
                f"{pil.format} images are not accepted; use JPEG, PNG, WebP, BMP or TIFF",
            )
        width, height = pil.size
        if width <= 0 or height <= 0 or width * height > settings.max_image_pixels:
            raise ImageError(
                "too_many_pixels",
                f"{width}x{height} exceeds the {settings.max_image_pixels} pixel limit",
            )
        if pil.format in {"JPEG", "MPO"} and settings.decode_max_side:
            # let the JPEG decoder scale down by 1/2, 1/4 or 1/8 in the DCT (much cheaper
            # than decoding everything and resizing), never below decode_max_side
            scale = settings.decode_max_side / max(width, height)
            if scale < 1.0:
                pil.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
        try:
            with warnings.catch_warnings():  # malformed metadata is not worth a log line
                warnings.simplefilter("ignore", UserWarning)
                pil.load()
                upright = ImageOps.exif_transpose(pil)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError("corrupt", f"the image data is truncated or corrupt: {exc}") from exc
        return _to_rgb(upright)


def _to_rgb(pil: PILImage.Image) -> Image:
    """Normalise any Pillow mode to an 8-bit RGB array."""
    mode = pil.mode
    if mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        arr = np.asarray(pil, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        gray = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.stack([gray] * 3, axis=-1))
    if mode == "P" and "transparency" in pil.info:
        pil = pil.convert("RGBA")
        mode = "RGBA"
    if mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = pil.convert("RGBA")
        white = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        pil = PILImage.alpha_composite(white, rgba)
    rgb = pil.convert("RGB")
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
