"""The face pipeline: image → detect → align → quality → embed → `Face` values."""

from __future__ import annotations

import dataclasses
import threading

import cv2

from facecrm.config import Settings
from facecrm.errors import ConfigError, FacecrmError
from facecrm.vision.align import Aligner, DlibAligner, FivePointAligner
from facecrm.vision.detect import Detector, YuNetDetector
from facecrm.vision.embed import (
    DlibResNetEmbedder,
    Embedder,
    OnnxEmbedder,
    dlib_resnet_onnx,
    sface_onnx,
)
from facecrm.vision.quality import REASONS, QualityGate
from facecrm.vision.types import Face, Image


class QualityError(FacecrmError, ValueError):
    """An enrollment photo rejected by the quality gate (422); `reason` is in `REASONS`."""

    status = 422
    reason = "low_quality"

    def __init__(self, reason: str, face: Face | None = None) -> None:
        super().__init__(REASONS[reason], reason=reason)
        self.face = face


class FacePipeline:
    """Runs the stages in order; each stage is swappable."""

    def __init__(
        self, detector: Detector, aligner: Aligner, embedder: Embedder, gate: QualityGate
    ) -> None:
        self.detector = detector
        self.aligner = aligner
        self.embedder = embedder
        self.gate = gate

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    def faces(self, image: Image, embed: bool = True) -> list[Face]:
        """Every face in `image`, largest first, with chip, quality and template."""
        faces = []
        for face in self.detector.detect(image):
            chip = self.aligner.align(image, face)
            quality = self.gate.assess(face, chip)
            faces.append(dataclasses.replace(face, chip=chip, quality=quality))
        return self.embed(faces) if embed else faces

    def embed(self, faces: list[Face]) -> list[Face]:
        """Fill in the template of every face (one batched embedder call)."""
        if not faces:
            return faces
        vectors = self.embedder.embed([f.chip for f in faces if f.chip is not None])
        return [dataclasses.replace(f, template=v) for f, v in zip(faces, vectors, strict=True)]

    def enrollment_face(self, image: Image) -> Face:
        """The single face of an enrollment photo, or `QualityError` with the reason."""
        faces = self.faces(image, embed=False)
        if not faces:
            raise QualityError("no_face")
        if len(faces) > 1:
            raise QualityError("multiple_faces")
        face = faces[0]
        assert face.quality is not None
        if face.quality.issues:
            raise QualityError(face.quality.issues[0], face)
        return self.embed([face])[0]


def build_embedder(settings: Settings) -> Embedder:
    """The embedder named by the settings."""
    if settings.embedder == "sface":  # onnxruntime: same descriptors as OpenCV, 10% faster
        return sface_onnx(settings.cache_dir, settings.threads)
    if settings.embedder == "onnx":
        if settings.onnx_model is None:
            raise ConfigError("FACECRM_EMBEDDER=onnx needs FACECRM_ONNX_MODEL=/path/to/model.onnx")
        return OnnxEmbedder(
            settings.onnx_model,
            input_size=settings.onnx_input_size,
            mean=settings.onnx_mean,
            std=settings.onnx_std,
            threads=settings.threads,
        )
    if settings.embedder == "dlib-native":
        return DlibResNetEmbedder()
    return dlib_resnet_onnx(settings.cache_dir, settings.threads)


def build_pipeline(settings: Settings) -> FacePipeline:
    """A pipeline configured from the settings (YuNet + the configured embedder)."""
    cv2.setNumThreads(settings.threads)
    embedder = build_embedder(settings)
    aligner: Aligner = (
        DlibAligner() if embedder.aligner_kind == "dlib" else FivePointAligner(embedder.chip_size)
    )
    detector = YuNetDetector(
        settings.cache_dir,
        settings.detect_max_side,
        settings.detect_score,
        threads=settings.threads,
    )
    return FacePipeline(detector, aligner, embedder, QualityGate.from_settings(settings))


_pipelines: dict[str, FacePipeline] = {}
_pipelines_lock = threading.Lock()


def default_pipeline(settings: Settings) -> FacePipeline:
    """A process-wide pipeline per distinct `settings` (models load once, not per caller)."""
    key = settings.model_dump_json()
    with _pipelines_lock:
        if key not in _pipelines:
            _pipelines[key] = build_pipeline(settings)
        return _pipelines[key]
