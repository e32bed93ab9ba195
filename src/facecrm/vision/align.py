"""Alignment: cut a face into the canonical chip an embedder was trained on."""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np

from facecrm.vision.models import dlib_five_point_path
from facecrm.vision.types import Face, Image

# ArcFace / SFace reference positions of YuNet's five points in a 112x112 chip.
ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


class Aligner(Protocol):
    """Produces an aligned RGB chip for one detected face."""

    size: int

    def align(self, image: Image, face: Face) -> Image: ...


class FivePointAligner:
    """Similarity transform of YuNet's landmarks onto the ArcFace template."""

    def __init__(self, size: int = 112) -> None:
        self.size = size
        self._target = ARCFACE_112 * (size / 112.0)

    def align(self, image: Image, face: Face) -> Image:
        matrix, _ = cv2.estimateAffinePartial2D(face.landmarks, self._target, method=cv2.LMEDS)
        if matrix is None:  # degenerate landmarks: fall back to the box
            return _box_crop(image, face, self.size)
        chip = cv2.warpAffine(image, matrix, (self.size, self.size), flags=cv2.INTER_LINEAR)
        return np.asarray(chip, dtype=np.uint8)


class DlibAligner:
    """dlib's 5-point predictor inside the detector's box, then `get_face_chip`.

    This is exactly the chip dlib's ResNet was trained on (150 px, padding 0.25);
    the predictor costs about a millisecond.
    """

    size = 150

    def __init__(self) -> None:
        import dlib

        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(dlib_five_point_path()))

    def align(self, image: Image, face: Face) -> Image:
        b = face.box
        rect = self._dlib.rectangle(
            round(b.x), round(b.y), round(b.x + b.width), round(b.y + b.height)
        )
        shape = self._predictor(image, rect)
        return np.asarray(self._dlib.get_face_chip(image, shape, size=self.size, padding=0.25))


def _box_crop(image: Image, face: Face, size: int) -> Image:
    b = face.box
    h, w = image.shape[:2]
    x0, y0 = max(0, round(b.x)), max(0, round(b.y))
    x1, y1 = min(w, round(b.x + b.width)), min(h, round(b.y + b.height))
    crop = image[y0:y1, x0:x1] if x1 > x0 and y1 > y0 else image
    return np.asarray(cv2.resize(crop, (size, size)), dtype=np.uint8)
