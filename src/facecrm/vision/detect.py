"""Face detection: image in, `Face` values with a box and 5 landmarks out."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from facecrm.vision.models import yunet_path
from facecrm.vision.onnx_models import cached_model, dequantize, ort_session
from facecrm.vision.types import Box, Face, Image


class Detector(Protocol):
    """Finds faces in an RGB image."""

    def detect(self, image: Image) -> list[Face]: ...


class YuNetDetector:
    """YuNet (OpenCV zoo, 2023mar): fast, 5 landmarks, finds small and turned faces.

    The shipped int8 model is folded to float32 once and run by onnxruntime;
    the anchor-free decoding and NMS follow OpenCV's `FaceDetectorYN`. Images
    larger than `max_side` are downscaled for detection only; boxes and
    landmarks are mapped back to the original pixels, so later stages align
    from full resolution.
    """

    STRIDES = (8, 16, 32)

    def __init__(
        self,
        cache_dir: Path,
        max_side: int = 640,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        threads: int = 1,
    ) -> None:
        self.max_side = max_side
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        path = cached_model(
            cache_dir,
            "face_detection_yunet_2023mar_fp32.onnx",
            lambda target: dequantize(yunet_path(), target, dynamic_hw=True),
        )
        self._session = ort_session(path, threads)
        self._outputs = [o.name for o in self._session.get_outputs()]

    def detect(self, image: Image) -> list[Face]:
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        small = image if scale >= 1.0 else _downscale(image, scale)
        h, w = small.shape[:2]
        blob = np.zeros((1, 3, -(-h // 32) * 32, -(-w // 32) * 32), dtype=np.float32)
        blob[0, :, :h, :w] = small[:, :, ::-1].transpose(2, 0, 1)  # RGB -> BGR planes
        out = dict(zip(self._outputs, self._session.run(None, {"input": blob}), strict=True))
        boxes, scores, points = [], [], []
        for stride in self.STRIDES:
            cols = blob.shape[3] // stride
            score = np.sqrt(
                np.clip(out[f"cls_{stride}"][0, :, 0], 0, 1)
                * np.clip(out[f"obj_{stride}"][0, :, 0], 0, 1)
            )
            idx = np.nonzero(score >= self.score_threshold)[0]
            if len(idx) == 0:
                continue
            col, row = (idx % cols).astype(np.float32), (idx // cols).astype(np.float32)
            bbox = out[f"bbox_{stride}"][0, idx]
            cx, cy = (col + bbox[:, 0]) * stride, (row + bbox[:, 1]) * stride
            bw, bh = np.exp(bbox[:, 2]) * stride, np.exp(bbox[:, 3]) * stride
            boxes.append(np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1))
            kps = out[f"kps_{stride}"][0, idx].reshape(-1, 5, 2)
            kps = (kps + np.stack([col, row], axis=1)[:, None, :]) * stride
            points.append(kps)
            scores.append(score[idx])
        if not boxes:
            return []
        all_boxes, all_scores = np.concatenate(boxes), np.concatenate(scores)
        all_points = np.concatenate(points)
        keep = cv2.dnn.NMSBoxes(
            all_boxes.tolist(), all_scores.tolist(), self.score_threshold, self.nms_threshold
        )
        faces = []
        for k in np.asarray(keep, dtype=int).reshape(-1):
            x, y, bw, bh = (float(v) / scale for v in all_boxes[k])
            landmarks = (all_points[k] / scale).astype(np.float32)
            faces.append(Face(Box(x, y, bw, bh), landmarks, float(all_scores[k])))
        faces.sort(key=lambda f: f.box.width * f.box.height, reverse=True)
        return faces


def _downscale(image: Image, scale: float) -> Image:
    """`image` at `scale` (< 1) for the detector: an integer box reduction, then bilinear.

    `INTER_AREA` at a fractional factor cost as much as YuNet itself; the integer box
    average is OpenCV's fast path and leaves a factor between 1/2 and 1, where bilinear
    does not alias (timings: benchmarks/README.md, "Per stage"). The detector's landmarks
    move by a fraction of a pixel against a single `INTER_AREA`, which moves the cascade's
    g by preprocessing noise; the cascade's floor margin is sized for that noise
    (`gallery.cascade.CASCADE_FLOOR_MARGIN_Z`).
    """
    height, width = image.shape[:2]
    # never more than the short side: a 2000x1 upload must not be cropped to nothing
    factor = min(int(1.0 / scale), height, width)
    if factor >= 2:
        # cropped to whole blocks (< `factor` pixels off the right and bottom edges, under
        # one pixel of the detector's image) so OpenCV takes its exact-integer fast path;
        # the rest keeps `scale`, by which boxes are mapped back
        height, width = height // factor * factor, width // factor * factor
        reduced = (width // factor, height // factor)
        image = np.asarray(
            cv2.resize(image[:height, :width], reduced, interpolation=cv2.INTER_AREA), np.uint8
        )
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR), np.uint8)


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
