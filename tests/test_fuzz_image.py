"""Fuzzing the image decoder: any bytes give an RGB image or an `ImageError`, nothing else."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from facecrm.config import load
from facecrm.vision.image import ImageError, decode_image


def _seed(fmt: str) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    PILImage.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


LIMITS = load()  # the documented defaults (no FACECRM_* limits are set in tests)
SEEDS = [_seed(f) for f in ("JPEG", "PNG", "WEBP", "BMP", "TIFF")]


def _check(data: bytes) -> None:
    try:
        image = decode_image(data, LIMITS)
    except ImageError as exc:
        assert exc.reason and exc.message
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] * image.shape[1] <= LIMITS.max_image_pixels


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    _check(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=12),
    cut=st.integers(0, 10_000),
)
def test_mutated_images(seed: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(seed)
    for position, value in edits:
        data[position % len(data)] = value
    _check(bytes(data[: max(1, len(data) - cut % len(data))]))
