"""Face detection: image in, `Face` values with a box and 5 landmarks out."""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np

from facecrm.vision.models import yunet_path
from facecrm.vision.types import Box, Face, Image


class Detector(Protocol):
    """Finds faces in an RGB image."""

    def detect(self, image: Image) -> list[Face]: ...


class YuNetDetector:
    """OpenCV's YuNet: fast, 5 landmarks, finds small and turned faces.

    Images larger than `max_side` are downscaled for detection only; boxes and
    landmarks are mapped back to the original pixels, so later stages align
    from full resolution.
    """

    def __init__(self, max_side: int = 640, score_threshold: float = 0.6) -> None:
        self.max_side = max_side
        self._net = cv2.FaceDetectorYN.create(
            str(yunet_path()), "", (320, 320), score_threshold, 0.3, 5000
        )

    def detect(self, image: Image) -> list[Face]:
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        small = image
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
        self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, rows = self._net.detect(bgr)
        if rows is None:
            return []
        faces = []
        for row in rows:
            x, y, w, h = (float(v) / scale for v in row[:4])
            landmarks = (row[4:14].reshape(5, 2) / scale).astype(np.float32)
            faces.append(Face(box=Box(x, y, w, h), landmarks=landmarks, score=float(row[14])))
        faces.sort(key=lambda f: f.box.width * f.box.height, reverse=True)
        return faces


class DlibHogDetector:
    """dlib's HOG detector, as used by `face_recognition`; the speed baseline.

    It has no 5-point landmarks of YuNet's kind, so `landmarks` holds the box
    corners' centre repeated; use it with `DlibAligner`, which finds its own.
    """

    def __init__(self, upsample: int = 1) -> None:
        import dlib

        self.upsample = upsample
        self._detector = dlib.get_frontal_face_detector()

    def detect(self, image: Image) -> list[Face]:
        faces = []
        for rect in self._detector(image, self.upsample):
            box = Box(rect.left(), rect.top(), rect.width(), rect.height())
            centre = np.array([[rect.center().x, rect.center().y]] * 5, dtype=np.float32)
            faces.append(Face(box=box, landmarks=centre, score=1.0))
        return faces
