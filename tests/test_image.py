"""Bad and unusual images: clear errors for the bad ones, correct pixels for the rest."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from facecrm.config import Settings
from facecrm.vision.image import ImageError, decode_image, read_image


def _encode(img: PILImage.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _gradient(width: int = 64, height: int = 48) -> PILImage.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    rgb = np.stack([np.tile(x, (height, 1))] * 3, axis=-1)
    rgb[..., 1] = 0
    return PILImage.fromarray(rgb)


def _png_with_size(width: int, height: int) -> bytes:
    """A tiny, valid PNG whose header claims `width` x `height` (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class TestBadInput:
    def test_not_an_image(self, settings: Settings) -> None:
        with pytest.raises(ImageError) as exc:
            decode_image(b"%PDF-1.4 this is not a picture", settings)
        assert exc.value.reason == "not_an_image"

    def test_zero_bytes(self, settings: Settings) -> None:
        with pytest.raises(ImageError) as exc:
            decode_image(b"", settings)
        assert exc.value.reason == "empty"

    def test_wrong_type(self, settings: Settings) -> None:
        with pytest.raises(ImageError) as exc:
            decode_image("a string, not bytes", settings)  # type: ignore[arg-type]
        assert exc.value.reason == "wrong_type"

    def test_truncated_jpeg(self, settings: Settings) -> None:
        data = _encode(_gradient(640, 480), "JPEG", quality=90)
        with pytest.raises(ImageError) as exc:
            decode_image(data[: len(data) // 2], settings)
        assert exc.value.reason == "corrupt"

    def test_decompression_bomb(self, settings: Settings) -> None:
        with pytest.raises(ImageError) as exc:
            decode_image(_png_with_size(100_000, 100_000), settings)
        assert exc.value.reason == "too_many_pixels"

    def test_absurd_dimensions(self, settings: Settings) -> None:
        with pytest.raises(ImageError) as exc:
            decode_image(_png_with_size(2**31 - 1, 1), settings)
        assert exc.value.reason in {"too_many_pixels", "corrupt"}

    def test_too_many_bytes(self, settings: Settings) -> None:
        with pytest.raises(ImageError) as exc:
            decode_image(b"\xff" * (settings.max_upload_bytes + 1), settings)
        assert exc.value.reason == "too_large"

    def test_unsupported_format(self, settings: Settings) -> None:
        with pytest.raises(ImageError) as exc:
            decode_image(_encode(_gradient(), "GIF"), settings)
        assert exc.value.reason == "unsupported_format"

    def test_missing_file(self, tmp_path: Path, settings: Settings) -> None:
        with pytest.raises(ImageError) as exc:
            read_image(tmp_path / "nope.jpg", settings)
        assert exc.value.reason == "not_found"


class TestModes:
    def test_grayscale(self, settings: Settings) -> None:
        img = decode_image(_encode(_gradient().convert("L"), "PNG"), settings)
        assert img.shape == (48, 64, 3) and img.dtype == np.uint8
        assert np.array_equal(img[..., 0], img[..., 1])

    def test_alpha_is_composited_on_white(self, settings: Settings) -> None:
        rgba = PILImage.new("RGBA", (10, 10), (255, 0, 0, 0))
        img = decode_image(_encode(rgba, "PNG"), settings)
        assert tuple(img[0, 0]) == (255, 255, 255)

    def test_sixteen_bit(self, settings: Settings) -> None:
        arr = np.full((8, 8), 65535, dtype=np.uint16)
        arr[0, 0] = 0
        img = decode_image(_encode(PILImage.fromarray(arr), "PNG"), settings)
        assert img[1, 1, 0] == 255 and img[0, 0, 0] == 0

    def test_cmyk(self, settings: Settings) -> None:
        cmyk = PILImage.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red
        img = decode_image(_encode(cmyk, "JPEG"), settings)
        r, g, b = (int(v) for v in img[4, 4])
        assert r > 200 and g < 60 and b < 60

    def test_palette(self, settings: Settings) -> None:
        img = decode_image(_encode(_gradient().convert("P"), "PNG"), settings)
        assert img.shape == (48, 64, 3)

    def test_exif_rotation_is_applied(self, settings: Settings) -> None:
        upright = _gradient(64, 48)  # wider than tall, dark on the left
        stored = upright.transpose(PILImage.Transpose.ROTATE_90)  # what a phone sensor wrote
        exif = PILImage.Exif()
        exif[0x0112] = 6  # orientation: the viewer must rotate 90 degrees clockwise
        img = decode_image(_encode(stored, "JPEG", exif=exif.tobytes(), quality=95), settings)
        assert img.shape[:2] == (48, 64)
        assert img[:, :8, 0].mean() < img[:, -8:, 0].mean()


def test_rgba_scene_photo_decodes(faces_dir: Path, settings: Settings) -> None:
    img = read_image(faces_dir / "scenes" / "32bit.png", settings)
    assert img.ndim == 3 and img.shape[2] == 3


def test_large_jpeg_is_decoded_at_reduced_scale(settings: Settings) -> None:
    img = decode_image(_encode(_gradient(4000, 3000), "JPEG", quality=80), settings)
    assert settings.decode_max_side <= max(img.shape[:2]) < 2 * settings.decode_max_side
    assert img.shape[0] * 4 == img.shape[1] * 3  # aspect ratio kept


def _jpegs(faces_dir: Path) -> list[Path]:
    found = sorted(p for p in faces_dir.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg"})
    assert len(found) >= 10  # the real photos, not an empty folder
    return found


def _both(data: bytes, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    from facecrm.vision.image import _load

    return _load(data, settings)[0], _load(data, settings, fast=False)[0]


def test_plain_jpegs_decode_to_pillows_pixels_through_opencv(
    faces_dir: Path, settings: Settings
) -> None:
    """OpenCV decodes plain JPEGs (less CPU) only because its pixels are Pillow's, bit for
    bit, at every DCT scale: recognition at the calibrated floor hinges on sub-pixel shifts
    of the detector's landmarks, so the decoder must not move one pixel."""
    from facecrm.vision.image import _plain_jpeg

    small = settings.model_copy(update={"decode_max_side": 160})  # scales 1/2 .. 1/8
    used = 0
    for path in _jpegs(faces_dir):
        data = path.read_bytes()
        for config in (settings, small):
            fast, pillow = _both(data, config)
            assert fast.shape == pillow.shape and np.array_equal(fast, pillow), path
        pil = PILImage.open(io.BytesIO(data))
        used += _plain_jpeg(pil, data, settings, *pil.size) is not None
    assert used >= 10  # the comparison is not vacuous: OpenCV decoded them


def test_opencv_decodes_keep_pillows_orientation_and_grey(
    faces_dir: Path, settings: Settings
) -> None:
    photo = PILImage.open(_jpegs(faces_dir)[0]).convert("RGB")
    photo.thumbnail((300, 300))
    for orientation in range(1, 9):
        exif = PILImage.Exif()
        exif[0x0112] = orientation
        data = _encode(photo, "JPEG", exif=exif.tobytes(), quality=90)
        fast, pillow = _both(data, settings)
        assert np.array_equal(fast, pillow), orientation
    grey = _encode(photo.convert("L"), "JPEG", quality=90)
    fast, pillow = _both(grey, settings)
    assert np.array_equal(fast, pillow) and np.array_equal(fast[..., 0], fast[..., 2])


def test_a_cut_jpeg_is_refused_on_the_fast_path_too(settings: Settings) -> None:
    data = _encode(_gradient(640, 480), "JPEG", quality=90)
    for cut in (data[: len(data) // 2], data[:-2]):
        with pytest.raises(ImageError) as exc:
            decode_image(cut, settings)
        assert exc.value.reason == "corrupt"
