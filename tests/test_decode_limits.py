"""Decoding hostile uploads stays within a memory bound; a flood of decodes gets 503.

The worst cases are a few KB on disk and tens of megapixels decoded: before the
limits, a 1.5 KB lossless WebP of 6300x6300 cost ~1.4 GB and a 16-bit PNG 1 GB.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

from facecrm.config import Settings
from facecrm.crm import accounts, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.service import FaceCRM
from facecrm.server import create_app
from facecrm.vision.image import ImageError, decode_image, decode_slot, jpeg_scans
from facecrm.vision.pipeline import FacePipeline

from server import serve

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"
BOUND_MB = 200  # one decode, above the process's size before it (measured: <= 130)


def _encode(img: PILImage.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def _gray16(side: int) -> PILImage.Image:
    gray = np.zeros((side, side), np.uint16)
    gray[::7] = 40_000
    return PILImage.fromarray(gray)


# name -> (make the image, format, save options, expected: "ok" or the refusal reason)
CASES = {
    "webp-lossless-6300": (
        lambda: PILImage.new("RGBA", (6300, 6300), (200, 100, 50, 128)),
        "WEBP",
        {"lossless": True},
        "too_many_pixels",
    ),
    "png-16bit-6300": (lambda: _gray16(6300), "PNG", {}, "too_many_pixels"),
    "tiff-float-6300": (
        lambda: PILImage.fromarray(np.zeros((6300, 6300), np.float32)),
        "TIFF",
        {"compression": "tiff_adobe_deflate"},
        "too_many_pixels",
    ),
    "jpeg-6300": (lambda: PILImage.new("RGB", (6300, 6300), (90, 120, 150)), "JPEG", {}, "ok"),
    # progressive JPEGs keep every coefficient at full size, however far they are scaled
    "jpeg-progressive-cmyk-6300": (
        lambda: PILImage.new("CMYK", (6300, 6300), (90, 120, 150, 20)),
        "JPEG",
        {"progressive": True},
        "too_many_pixels",
    ),
    "jpeg-progressive-cmyk-3900": (
        lambda: PILImage.new("CMYK", (3900, 3900), (90, 120, 150, 20)),
        "JPEG",
        {"progressive": True},
        "ok",
    ),
    "webp-lossless-2800": (
        lambda: PILImage.new("RGBA", (2800, 2800), (200, 100, 50, 128)),
        "WEBP",
        {"lossless": True},
        "ok",
    ),
    "png-rgba-4000": (
        lambda: PILImage.new("RGBA", (4000, 4000), (200, 100, 50, 128)),
        "PNG",
        {},
        "ok",
    ),
    "png-16bit-4000": (lambda: _gray16(4000), "PNG", {}, "ok"),
    "tiff-float-4000": (
        lambda: PILImage.fromarray(np.zeros((4000, 4000), np.float32)),
        "TIFF",
        {"compression": "tiff_adobe_deflate"},
        "ok",
    ),
}

MEASURE = """
import resource, sys
from facecrm.config import load
from facecrm.vision.image import ImageError, decode_image
settings = load()
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    image = decode_image(data, settings)
    outcome = "ok %dx%d" % (image.shape[1], image.shape[0])
except ImageError as exc:
    outcome = exc.reason
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(outcome, (after - before) // 1024)
"""


@pytest.mark.parametrize("name", list(CASES))
def test_worst_case_decode_is_bounded(name: str, tmp_path: Path) -> None:
    """Each worst case decodes within BOUND_MB (peak RSS of a fresh process) or is refused."""
    make, fmt, options, expected = CASES[name]
    path = tmp_path / name
    path.write_bytes(_encode(make(), fmt, **options))
    assert path.stat().st_size < 1_000_000  # small on disk
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "FACECRM_DATA_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    ).stdout.split()
    outcome, peak_mb = out[0], int(out[-1])
    assert outcome == expected, out
    assert peak_mb <= BOUND_MB, f"{name}: {peak_mb} MB"
    if expected == "ok":  # reduced like a JPEG: between decode_max_side and twice that
        width, height = (int(v) for v in out[1].split("x"))
        assert 1024 <= max(width, height) < 2048


def test_reduced_sixteen_bit_and_float_keep_their_levels(settings: Settings) -> None:
    gray = np.full((3000, 3000), 32_768, np.uint16)
    image = decode_image(_encode(PILImage.fromarray(gray), "PNG"), settings)
    assert image.shape == (1500, 1500, 3) and int(image[10, 10, 0]) == 128
    floats = np.full((3000, 2200), 200.0, np.float32)
    floats[0, 0] = np.nan
    image = decode_image(
        _encode(PILImage.fromarray(floats), "TIFF", compression="tiff_lzw"), settings
    )
    assert image.shape == (1500, 1100, 3) and int(image[700, 500, 0]) == 200


def _scan_bomb(side: int, copies: int) -> bytes:
    """A progressive JPEG whose last scan is repeated: libjpeg runs each over the image."""
    data = _encode(PILImage.new("L", (side, side), 128), "JPEG", progressive=True)
    last = data.rfind(b"\xff\xda")
    return data[:-2] + data[last:-2] * copies + b"\xff\xd9"


def test_a_progressive_jpeg_with_too_many_scans_is_refused_at_once(settings: Settings) -> None:
    normal = _encode(PILImage.new("RGB", (800, 600), (90, 120, 150)), "JPEG", progressive=True)
    assert 1 < jpeg_scans(normal) <= 32 and decode_image(normal, settings).shape == (600, 800, 3)
    assert jpeg_scans(_encode(PILImage.new("RGB", (80, 60)), "JPEG")) == 1
    bomb = _scan_bomb(3000, 300)  # 42 KB; the decoder spent 2.6 s on it before the limit
    assert len(bomb) < 50_000 and jpeg_scans(bomb) > 300
    started = time.perf_counter()
    with pytest.raises(ImageError) as exc:
        decode_image(bomb, settings)
    assert exc.value.reason == "too_many_scans"
    assert time.perf_counter() - started < 0.5


def test_multi_page_tiff_is_refused(settings: Settings) -> None:
    pages = [PILImage.new("RGB", (32, 32), c) for c in ("red", "green")]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:])
    with pytest.raises(ImageError) as exc:
        decode_image(buf.getvalue(), settings)
    assert exc.value.reason == "multi_page"


def test_busy_decoder_answers_503_with_retry_after(
    settings: Settings, pipeline: FacePipeline
) -> None:
    """With one decode slot held, uploads wait briefly then get 503 `busy`, never 500."""
    settings.max_concurrent_decodes = 1
    settings.decode_wait_seconds = 0.3
    crm = FaceCRM(settings, pipeline=pipeline)
    with db.transaction(crm.sessions) as session:
        accounts.create_staff(session, "admin", PASSWORD, "admin", [], principal=SYSTEM)
    photo = _encode(PILImage.new("RGB", (320, 240), (128, 128, 128)), "JPEG")
    statuses: list[httpx.Response] = []
    try:
        with serve(create_app(crm)) as url:
            token = httpx.post(
                f"{url}/api/v1/auth/token", data={"username": "admin", "password": PASSWORD}
            ).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}

            def send() -> None:
                r = httpx.post(
                    f"{url}/api/v1/identify",
                    files={"image": ("p.jpg", photo, "image/jpeg")},
                    headers=headers,
                    timeout=30,
                )
                statuses.append(r)

            with decode_slot(settings):  # a decode in progress holds the only slot
                threads = [threading.Thread(target=send) for _ in range(4)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            assert [r.status_code for r in statuses] == [503] * 4
            for r in statuses:
                assert r.headers["retry-after"] == "1"
                assert r.headers["content-type"] == "application/problem+json"
                assert r.json()["reason"] == "busy"
            send()  # the slot is free again
            assert statuses[-1].status_code == 200, statuses[-1].text
    finally:
        crm.engine.dispose()
