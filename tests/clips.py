"""Video clips for Chromium's fake camera (`--use-file-for-fake-video-capture`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np


def write_y4m(frames: Sequence[np.ndarray], path: Path, fps: int) -> None:
    """Write RGB uint8 frames (all one even-sided size) as YUV4MPEG2 4:2:0, the raw format
    Chromium's fake camera plays (it loops the file at `fps`)."""
    if not frames:
        raise ValueError("a clip needs at least one frame")
    height, width = frames[0].shape[:2]
    if width % 2 or height % 2:
        raise ValueError(f"4:2:0 needs even sides, not {width}x{height}")
    with path.open("wb") as fh:
        fh.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420\n".encode())
        for frame in frames:
            if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
                raise ValueError(f"every frame must be {width}x{height} RGB uint8")
            fh.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())
