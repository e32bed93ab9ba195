"""Face quality: size, sharpness, pose and detector confidence.

The enrollment gate rejects a photo with a specific reason, because a poor
template is the seed of both missed customers and wrong names on strangers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from facecrm.config import Settings
from facecrm.vision.types import Face, Image, Quality

REASONS = {
    "no_face": "no face was found in the photo",
    "multiple_faces": "more than one face is in the photo; enroll one person at a time",
    "face_too_small": "the face is too small; move closer or use a larger photo",
    "blurred": "the face is blurred; hold the camera still and refocus",
    "extreme_pose": "the face is turned too far; look straight at the camera",
    "low_confidence": "the face is not clearly visible (low detector confidence)",
}


@dataclass(frozen=True, slots=True)
class QualityGate:
    """Thresholds for enrollment photos (see `Settings`)."""

    min_face_px: float
    min_blur: float
    max_yaw: float
    max_roll_deg: float
    min_detector_score: float

    @classmethod
    def from_settings(cls, s: Settings) -> QualityGate:
        return cls(s.min_face_px, s.min_blur, s.max_yaw, s.max_roll_deg, s.min_detector_score)

    def assess(self, face: Face, chip: Image) -> Quality:
        """Measure `face` (with its aligned `chip`) and list what fails the gate."""
        right_eye, left_eye, nose = face.landmarks[0], face.landmarks[1], face.landmarks[2]
        eye_vec = left_eye - right_eye
        eye_dist = float(np.hypot(*eye_vec)) or 1e-6
        midpoint = (right_eye + left_eye) / 2.0
        # project the nose onto the eye line: 0 when frontal, +-0.5 at profile
        yaw = float(np.dot(nose - midpoint, eye_vec) / (eye_dist * eye_dist))
        roll = math.degrees(math.atan2(float(eye_vec[1]), float(eye_vec[0])))
        gray = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY)
        blur = float(cv2.Laplacian(gray, cv2.CV_64F).var())
        issues = []
        if face.box.width < self.min_face_px:
            issues.append("face_too_small")
        if blur < self.min_blur:
            issues.append("blurred")
        if abs(yaw) > self.max_yaw or abs(roll) > self.max_roll_deg:
            issues.append("extreme_pose")
        if face.score < self.min_detector_score:
            issues.append("low_confidence")
        return Quality(
            face_px=face.box.width,
            blur=blur,
            yaw=yaw,
            roll_deg=roll,
            detector_score=face.score,
            issues=tuple(issues),
        )
