"""Camera clips built from real photos, for the liveness stage and the till's kiosk page.

A till films a customer who holds still-ish: the face drifts a few pixels, turns a degree,
comes a little closer. `burst_from_photos` imitates that with a small random similarity
transform per frame on two real photos of one person (neutral before the smile, smiling
after), `still_burst` moves one photo rigidly (what a printed photo or a phone held up to
the camera does), and `write_y4m` writes frames as the raw video Chromium's
`--use-file-for-fake-video-capture` plays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

Frame = npt.NDArray[np.uint8]
WIDTH, HEIGHT = 640, 480
FACE_HEIGHT = 360  # a customer at a till's camera fills most of the picture's height


@dataclass(frozen=True, slots=True)
class ClipFrame:
    """One RGB frame and its capture time on the till's clock."""

    at_ms: int
    image: Frame = field(repr=False)


@dataclass(frozen=True, slots=True)
class Jitter:
    """Standard deviations of the per-frame similarity motion (a hand-held face's drift)."""

    shift_px: float = 4.0
    rotate_deg: float = 1.5
    scale: float = 0.02
    noise: float = 3.0  # grey levels of sensor noise


STEADY = Jitter(0.0, 0.0, 0.0, 0.0)


def place(photo: Frame, height: int = FACE_HEIGHT) -> Frame:
    """`photo` (RGB or grey) scaled to `height` px, centred on a 640x480 frame.

    The surround is a soft vertical gradient (a wall behind the customer), not flat black:
    a hard black border is no real camera's picture. An enlarged photo is blurred to its own
    resolution: the resampler's periodic pattern is what a recaptured picture shows (the
    screen/print cue's signal), not what a camera filming a person does.
    """
    if photo.ndim == 2:
        photo = cv2.cvtColor(photo, cv2.COLOR_GRAY2RGB)
    scale = min(height / photo.shape[0], WIDTH / photo.shape[1])
    size = (round(photo.shape[1] * scale), round(photo.shape[0] * scale))
    resized = cv2.resize(photo, size, interpolation=cv2.INTER_CUBIC)
    if scale > 1:  # the lens, not the resampler, limits the detail of an enlarged photo
        resized = cv2.GaussianBlur(resized, (0, 0), 0.5 * scale)
    ramp = np.linspace(150, 110, HEIGHT, dtype=np.float32)[:, None, None]
    wall = np.broadcast_to(ramp * np.array([1.0, 0.97, 0.92], np.float32), (HEIGHT, WIDTH, 3))
    y0, x0 = (HEIGHT - size[1]) // 2, (WIDTH - size[0]) // 2
    picture = wall.copy()
    picture[y0 : y0 + size[1], x0 : x0 + size[0]] = resized
    alpha = np.zeros((HEIGHT, WIDTH), np.float32)
    alpha[y0 : y0 + size[1], x0 : x0 + size[0]] = 1.0
    edge = max(4.0, 0.04 * size[0])  # a feathered edge: a pasted rectangle is a print's edge
    alpha = cv2.GaussianBlur(alpha, (0, 0), edge) * alpha
    out = alpha[..., None] * picture + (1 - alpha[..., None]) * wall
    return np.clip(out, 0, 255).astype(np.uint8)


def moved(frame: Frame, rng: np.random.Generator, jitter: Jitter) -> Frame:
    """`frame` under one random similarity transform about its centre (edges replicated)."""
    angle = float(rng.normal(0.0, jitter.rotate_deg))
    scale = 1.0 + float(rng.normal(0.0, jitter.scale))
    matrix = cv2.getRotationMatrix2D((WIDTH / 2, HEIGHT / 2), angle, scale)
    matrix[:, 2] += rng.normal(0.0, jitter.shift_px, 2)
    warped = cv2.warpAffine(
        frame, matrix, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    # a camera's sensor noise, fresh per frame: without it the resampled photo keeps the
    # periodic interpolation pattern a recaptured picture has (the screen/print cue's signal)
    noisy = warped.astype(np.float32) + rng.normal(0.0, jitter.noise, warped.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def burst_from_photos(
    neutral: Frame,
    smiling: Frame,
    prompt_at_ms: int,
    fps: int = 10,
    jitter: Jitter = Jitter(),
    *,
    smile_after_ms: int = 400,
    duration_ms: int | None = None,
    seed: int = 0,
) -> list[ClipFrame]:
    """A challenge burst: `neutral` until `smile_after_ms` after the prompt (a customer's
    reaction time), `smiling` from then on; by default until 2.5 s after the prompt, as the
    till's protocol asks (docs/face-checkout.md)."""
    rng = np.random.default_rng(seed)
    end = prompt_at_ms + 2500 if duration_ms is None else duration_ms
    before, after = place(neutral), place(smiling)
    step = 1000 / fps
    return [
        ClipFrame(at, moved(after if at >= prompt_at_ms + smile_after_ms else before, rng, jitter))
        for at in (round(i * step) for i in range(int(end / step) + 1))
    ]


def still_burst(
    photo: Frame,
    prompt_at_ms: int = 1000,
    fps: int = 10,
    jitter: Jitter = Jitter(),
    *,
    seed: int = 0,
    duration_ms: int | None = None,
) -> list[ClipFrame]:
    """One photo held up to the camera and moved about rigidly, for the whole burst."""
    return burst_from_photos(
        photo, photo, prompt_at_ms, fps, jitter, duration_ms=duration_ms, seed=seed
    )


def write_y4m(frames: Sequence[Frame], path: Path, fps: int) -> None:
    """Write RGB uint8 frames (all one size, even width and height) as YUV4MPEG2 4:2:0.

    The colour conversion is OpenCV's (BT.601, full range), which Chromium's file camera
    reads back; `C420jpeg` is the chroma siting OpenCV's I420 downsampling produces.
    """
    if not frames:
        raise ValueError("a y4m file needs at least one frame")
    height, width = frames[0].shape[:2]
    if width % 2 or height % 2:
        raise ValueError(f"4:2:0 needs even dimensions, not {width}x{height}")
    with Path(path).open("wb") as fh:
        fh.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
                raise ValueError(f"frame {frame.shape} {frame.dtype} is not {height}x{width} RGB")
            fh.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())


def read_y4m(path: Path) -> list[Frame]:
    """The RGB frames of a YUV4MPEG2 4:2:0 file (the inverse of `write_y4m`, for tests)."""
    data = Path(path).read_bytes()
    header, _, body = data.partition(b"\n")
    fields = {token[:1]: token[1:] for token in header.split()[1:]}
    width, height = int(fields[b"W"]), int(fields[b"H"])
    size = width * height * 3 // 2
    frames, at = [], 0
    while at < len(body):  # frame data may contain b"FRAME" itself: walk by sizes
        at = body.index(b"\n", at) + 1  # past "FRAME" and its (unused) parameters
        yuv = np.frombuffer(body[at : at + size], np.uint8).reshape(height * 3 // 2, width)
        frames.append(np.asarray(cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB_I420), dtype=np.uint8))
        at += size
    return frames
