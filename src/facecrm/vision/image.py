"""Decode untrusted image bytes into an RGB array, or fail with a clear reason.

Every photo that reaches facecrm (CLI, API, kiosk, phone) passes through
`decode_image`. It checks the byte size before decoding, the pixel count from
the header before allocating, restricts formats to the ones cameras and phones
produce, applies the EXIF orientation (phones store portraits sideways) and
normalises grayscale, palette, alpha, 16-bit and CMYK images to 8-bit RGB.

Memory is bounded per decode and per process: JPEGs are scaled down inside the
decoder (DCT scaling); the other formats can only be decoded at full size, so
they get a lower pixel limit (`max_decoded_pixels`) and are box-reduced right
after loading, before any conversion; at most `max_concurrent_decodes` run at
once (a request that waits longer than `decode_wait_seconds` gets `DecoderBusy`);
and freed memory is handed back to the system after a large decode.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from PIL import Image as PILImage
from PIL import ImageFile, TiffImagePlugin, UnidentifiedImageError

from facecrm.config import Settings
from facecrm.errors import FacecrmError
from facecrm.vision.types import Image

ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF"})
SCALED_IN_DECODER = frozenset({"JPEG", "MPO"})  # the others decode at full size
TRIM_AFTER_PIXELS = 4_000_000  # after a decode this large, give freed memory back
_SOS = 0xDA
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RST0..7 carry no length
_ORIENTATION = {
    2: PILImage.Transpose.FLIP_LEFT_RIGHT,
    3: PILImage.Transpose.ROTATE_180,
    4: PILImage.Transpose.FLIP_TOP_BOTTOM,
    5: PILImage.Transpose.TRANSPOSE,
    6: PILImage.Transpose.ROTATE_270,
    7: PILImage.Transpose.TRANSVERSE,
    8: PILImage.Transpose.ROTATE_90,
}

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated upload is an error, not a grey band
PILImage.MAX_IMAGE_PIXELS = None  # we enforce our own, configurable limit below


class ImageError(FacecrmError, ValueError):
    """An image that cannot be used; `reason` is a stable machine-readable code.

    422, except an image too large to accept at all (413).
    """

    status = 422
    reason = "bad_image"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, reason=reason)
        self.message = message
        if reason == "too_large":
            self.status = 413


class DecoderBusy(FacecrmError):
    """Every decode slot stayed taken for `decode_wait_seconds`; retry shortly (HTTP 503)."""

    status = 503
    reason = "busy"
    retry_after = 1  # seconds; a decode takes well under one

    def __init__(self) -> None:
        super().__init__("the server is busy decoding other photos; retry in a second")

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


_slots_lock = threading.Lock()
_slots: dict[int, threading.BoundedSemaphore] = {}
_held = threading.local()


@contextmanager
def decode_slot(settings: Settings) -> Iterator[None]:
    """Hold one of the process's `max_concurrent_decodes` slots, or raise `DecoderBusy`.

    Waiting is bounded: a flood of uploads is turned away with 503 instead of piling up
    threads that each hold a compressed body and then a decoded image.
    """
    if getattr(_held, "slot", False):  # re-entrant: the upload reader holds it for decode_image
        yield
        return
    size = max(1, settings.max_concurrent_decodes)
    with _slots_lock:
        slots = _slots.setdefault(size, threading.BoundedSemaphore(size))
    if not slots.acquire(timeout=max(0.0, settings.decode_wait_seconds)):
        raise DecoderBusy
    _held.slot = True
    try:
        yield
    finally:
        _held.slot = False
        slots.release()


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
        return trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_malloc_trim = _load_malloc_trim()


def release_memory() -> None:
    """Hand freed heap pages back to the system (glibc keeps them in its arenas otherwise)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def read_image(path: str | Path, settings: Settings) -> Image:
    """Read and decode an image file within `settings`' limits (see `decode_image`)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError("not_found", f"{path}: no such file")
    limit = settings.max_upload_bytes
    if path.stat().st_size > limit:
        raise ImageError("too_large", f"{path}: larger than the {limit} byte limit")
    return decode_image(path.read_bytes(), settings)


def decode_image(data: bytes, settings: Settings) -> Image:
    """Decode `data` into an upright RGB uint8 array, or raise `ImageError`/`DecoderBusy`.

    The limits (`max_upload_bytes`, pixels, scans, decode slots) are `settings`', passed
    by the caller: the server's, the CLI's or a test's, never a process-wide global.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageError("wrong_type", f"expected image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError("empty", "the image is empty (0 bytes)")
    if len(data) > settings.max_upload_bytes:
        raise ImageError(
            "too_large", f"the image is larger than the {settings.max_upload_bytes} byte limit"
        )
    with decode_slot(settings):
        pixels = 0
        try:
            image, pixels = _load(bytes(data), settings)  # pixels: as in the header
            return image
        finally:
            if pixels >= TRIM_AFTER_PIXELS:
                release_memory()


def _load(data: bytes, settings: Settings, fast: bool = True) -> tuple[Image, int]:
    """Open, check and decode `data`; returns the upright, reduced RGB array and the pixel
    count decoded. `fast=False` keeps plain JPEGs on Pillow too (for the tests that
    compare the two decoders)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # malformed metadata: not worth a log
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            pil = PILImage.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageError("not_an_image", "the data is not a recognised image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError("corrupt", f"the image header is corrupt: {exc}") from exc
    with pil:
        _check(pil, settings, data)
        width, height = pil.size
        pixels = width * height  # what the decoder may touch, even when it scales down
        if pil.format in SCALED_IN_DECODER and settings.decode_max_side:
            # let the JPEG decoder scale down by 1/2, 1/4 or 1/8 in the DCT (much cheaper
            # than decoding everything and resizing), never below decode_max_side
            scale = settings.decode_max_side / max(width, height)
            if scale < 1.0:
                pil.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
        image = _plain_jpeg(pil, data, settings, width, height) if fast else None
        if image is not None:
            return image, pixels
        try:
            with warnings.catch_warnings():  # malformed metadata is not worth a log line
                warnings.simplefilter("ignore", UserWarning)
                pil.load()
                orientation = pil.getexif().get(0x0112)
                scale_max = _white_point(pil)
                small = _reduce(pil, settings.decode_max_side)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError("corrupt", f"the image data is truncated or corrupt: {exc}") from exc
    if orientation in _ORIENTATION:
        small = small.transpose(_ORIENTATION[orientation])
    return _to_rgb(small, scale_max), pixels


# a plain JPEG's decode through OpenCV: the libjpeg-turbo scale (as `PIL.Image.draft` chose)
_CV_SCALE = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def _plain_jpeg(
    pil: PILImage.Image, data: bytes, settings: Settings, width: int, height: int
) -> Image | None:
    """A plain JPEG (YCbCr or grey, complete, no reduction left after the DCT scaling)
    decoded by OpenCV's libjpeg-turbo; None for anything else, which Pillow decodes.

    Why: the same library and the same scale give the same pixels
    (`tests/test_image.py` compares every JPEG of the test photos, scaled, rotated and
    grey, bit for bit), and the pixels must not move: recognition decisions at the
    calibrated floor hinge on sub-pixel landmark shifts (benchmarks/README.md, "Where the
    CPU of a request goes"). OpenCV writes the array directly, where Pillow loads in
    chunks and then copies twice (`convert`, `tobytes`): ~20% less CPU a photo (13.0 →
    10.4 ms on the benchmark's request photos).

    A file that does not end with the end marker (truncated, or with bytes after it) is
    left to Pillow, which refuses a truncated one; OpenCV would fill the missing rows with
    grey. (Inside entropy-coded data 0xFF is never followed by 0xD9, so a file cut there
    cannot end with it.)
    """
    if pil.format != "JPEG" or pil.mode not in {"RGB", "L"}:
        return None
    reduced_w, reduced_h = pil.size  # after `draft`
    factor = next(
        (f for f in _CV_SCALE if -(-width // f) == reduced_w and -(-height // f) == reduced_h),
        None,
    )
    if factor is None or max(pil.size) // max(settings.decode_max_side, 1) >= 2:
        return None  # a scale OpenCV has not, or a box reduction still to do: Pillow's path
    if not data.endswith(b"\xff\xd9"):  # no end marker where it belongs: Pillow's path
        return None
    orientation = pil.getexif().get(0x0112)
    flags = _CV_SCALE[factor] | cv2.IMREAD_IGNORE_ORIENTATION
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if bgr is None or bgr.shape[:2] != (reduced_h, reduced_w):
        raise ImageError("corrupt", "the image data is corrupt")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if orientation in _ORIENTATION:
        rgb = _transpose(np.asarray(rgb, np.uint8), _ORIENTATION[orientation])
    return np.ascontiguousarray(rgb)


def _transpose(image: Image, method: PILImage.Transpose) -> Image:
    """`PIL.Image.transpose` on an array (EXIF orientations; tested against Pillow's)."""
    T = PILImage.Transpose
    ops: dict[PILImage.Transpose, Callable[[Image], Image]] = {
        T.FLIP_LEFT_RIGHT: lambda a: a[:, ::-1],
        T.FLIP_TOP_BOTTOM: lambda a: a[::-1],
        T.ROTATE_180: lambda a: a[::-1, ::-1],
        T.ROTATE_90: lambda a: np.rot90(a, 1),
        T.ROTATE_270: lambda a: np.rot90(a, -1),
        T.TRANSPOSE: lambda a: a.transpose(1, 0, 2),
        T.TRANSVERSE: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    }
    return np.ascontiguousarray(ops[method](image))


def _check(pil: PILImage.Image, settings: Settings, data: bytes) -> None:
    """Refuse, from the header alone, what would cost too much to decode."""
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
    progressive = pil.format in SCALED_IN_DECODER and bool(pil.info.get("progressive"))
    if progressive:
        # libjpeg re-runs every scan over the whole image, so a small file that repeats
        # one refinement scan thousands of times holds a decode slot for minutes
        scans = jpeg_scans(data, stop_after=settings.jpeg_max_scans + 1)
        if scans > settings.jpeg_max_scans:
            raise ImageError(
                "too_many_scans",
                f"the progressive JPEG has more than {settings.jpeg_max_scans} scans",
            )
    limit = decoded_pixel_limit(pil.format, settings, progressive)
    if width * height > limit:
        raise ImageError(
            "too_many_pixels",
            f"{pil.format} images are decoded at full size: {width}x{height} exceeds their"
            f" {limit} pixel limit; send a JPEG or a smaller image",
        )
    if isinstance(pil, TiffImagePlugin.TiffImageFile):  # pil.format == "TIFF"
        if getattr(pil, "is_animated", False):
            raise ImageError("multi_page", "multi-page TIFF files are not accepted")
        tile_w, tile_h = pil.tag_v2.get(322), pil.tag_v2.get(323)  # TileWidth, TileLength
        if (
            isinstance(tile_w, int)
            and isinstance(tile_h, int)
            and tile_w * tile_h > max(width * height, 1 << 20)
        ):
            raise ImageError("corrupt", f"the TIFF tiles ({tile_w}x{tile_h}) exceed the image")


def decoded_pixel_limit(fmt: str | None, settings: Settings, progressive: bool = False) -> int:
    """The most pixels an image of `fmt` may have.

    PNG, TIFF and BMP peak at up to 8 bytes a pixel (the image, plus the premultiplied
    copy Pillow makes to reduce one with alpha); WebP at 16 (Pillow decodes every WebP
    through libwebp's animation API: two canvases, a copy, then the image), so it gets half.
    A progressive JPEG keeps every DCT coefficient of the full-size image (2 bytes per
    pixel and component) however far it is scaled down, so it counts as full size too.
    """
    if fmt in SCALED_IN_DECODER and not progressive:
        return settings.max_image_pixels
    if fmt == "WEBP":
        return min(settings.max_image_pixels, settings.max_decoded_pixels // 2)
    return min(settings.max_image_pixels, settings.max_decoded_pixels)


def jpeg_scans(data: bytes, stop_after: int | None = None) -> int:
    """How many scans (SOS segments) a JPEG's own marker stream has.

    Walks the segments instead of counting bytes, so an EXIF thumbnail (a JPEG inside an
    APP1 segment) does not count; inside entropy-coded data 0xFF is always followed by
    0x00 or a restart marker, so the next other marker ends the scan.
    """
    scans, pos, end = 0, 2, len(data)  # after SOI
    while pos + 1 < end:
        if data[pos] != 0xFF:
            break  # not a marker where one must be: corrupt, left to the decoder
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        pos += 2
        if marker == 0xD9:  # EOI
            break
        if marker in _STANDALONE:
            continue
        if pos + 2 > end:
            break
        pos += int.from_bytes(data[pos : pos + 2], "big")
        if marker != _SOS:
            continue
        scans += 1
        if stop_after is not None and scans >= stop_after:
            break
        while True:  # skip the entropy-coded data to the next real marker
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= end:
                return scans
            following = data[pos + 1]
            if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
                pos += 1 if following == 0xFF else 2
                continue
            break
    return scans


def _white_point(pil: PILImage.Image) -> float:
    """The value that maps to white for 16-bit, int and float images (from the full image)."""
    if pil.mode.startswith("I;16"):
        return 65535.0
    if pil.mode in {"I", "F"}:
        top = pil.getextrema()[1]
        return 65535.0 if isinstance(top, int | float) and top > 255 else 255.0
    return 255.0


def _reduce(pil: PILImage.Image, max_side: int) -> PILImage.Image:
    """Box-reduce a full-size decode to between `max_side` and twice that, as JPEGs are.

    Done before any mode conversion so that no full-size copy is ever made (palette and
    1-bit images, which Pillow cannot average, are expanded first).
    """
    if pil.mode == "1":
        pil = pil.convert("L")
    elif pil.mode in {"P", "PA"}:
        pil = pil.convert("RGBA" if pil.mode == "PA" or "transparency" in pil.info else "RGB")
    factor = max(pil.size) // max_side if max_side else 1
    if factor < 2:
        return pil
    if pil.mode.startswith("I;16"):  # Image.reduce has no 16-bit path; resize does
        width, height = pil.size
        size = (-(-width // factor), -(-height // factor))
        return pil.resize(size, PILImage.Resampling.BOX)
    return pil.reduce(factor)


def _to_rgb(pil: PILImage.Image, white: float = 255.0) -> Image:
    """Normalise any Pillow mode to an 8-bit RGB array (on the already reduced image)."""
    mode = pil.mode
    if mode.startswith("I;16") or mode in {"I", "F"}:
        arr = np.asarray(pil)
        if arr.dtype.kind == "f":
            arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=white, neginf=0.0)
            gray = np.clip(arr * np.float32(255.0 / white) + np.float32(0.5), 0, 255)
        else:  # integer math: round(v * 255 / white)
            wide = np.clip(arr.astype(np.int64), 0, int(white))
            gray = (wide * 255 + int(white) // 2) // int(white)
        gray8 = gray.astype(np.uint8)
        return np.ascontiguousarray(np.stack([gray8] * 3, axis=-1))
    if mode == "P" and "transparency" in pil.info:
        pil = pil.convert("RGBA")
        mode = "RGBA"
    if mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = pil.convert("RGBA")
        white_bg = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        pil = PILImage.alpha_composite(white_bg, rgba)
    rgb = pil.convert("RGB")
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
