"""The face pipeline on real faces: detection, alignment, embeddings, quality gate."""

from __future__ import annotations

import io
from collections.abc import Callable

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage

from facecrm.config import load
from facecrm.vision.embed import DlibResNetEmbedder
from facecrm.vision.image import decode_image
from facecrm.vision.pipeline import FacePipeline, QualityError
from facecrm.vision.quality import QualityGate
from facecrm.vision.types import Box, Face, Image

Load = Callable[[str], Image]


def test_face_values_are_complete(pipeline: FacePipeline, load: Load) -> None:
    (face,) = pipeline.faces(load("identities/barack_obama/1.jpg"))
    assert face.landmarks.shape == (5, 2)
    assert face.chip is not None and face.chip.shape == (150, 150, 3)
    assert face.template is not None and face.template.shape == (128,)
    assert abs(float(np.linalg.norm(face.template)) - 1.0) < 1e-5
    assert face.quality is not None and face.quality.ok
    # landmarks lie inside the box: eyes above the mouth
    assert face.landmarks[0, 1] < face.landmarks[3, 1]
    assert face.box.x <= face.landmarks[2, 0] <= face.box.x + face.box.width


def test_group_scene_finds_every_face(pipeline: FacePipeline, load: Load) -> None:
    faces = pipeline.faces(load("scenes/multiface.jpg"))
    assert len(faces) == 6
    areas = [f.box.width * f.box.height for f in faces]
    assert areas == sorted(areas, reverse=True)


@pytest.mark.parametrize("shape", [(1, 2000), (2000, 1), (2, 3000), (3000, 2), (5, 4000)])
def test_a_thin_image_finds_no_face_and_no_error(pipeline: FacePipeline, shape) -> None:  # type: ignore[no-untyped-def]
    """The detector's box reduction never crops an image to nothing (a 2000x1 upload was
    an OpenCV error, i.e. a 500, once the reduction cropped to whole blocks)."""
    image = np.full((*shape, 3), 128, np.uint8)
    assert pipeline.detector.detect(image) == []


def test_same_person_is_closer_than_strangers(pipeline: FacePipeline, load: Load) -> None:
    def template(path: str) -> np.ndarray:
        return pipeline.faces(load(path))[0].template

    obama = [template(f"identities/barack_obama/{n}.jpg") for n in (1, 2, 3)]
    others = [template(p) for p in ("identities/joe_biden/1.jpg", "distractors/paul_rudd.jpg")]
    genuine = min(float(a @ b) for i, a in enumerate(obama) for b in obama[i + 1 :])
    impostor = max(float(a @ b) for a in obama for b in others)
    assert genuine > impostor + 0.02


def test_onnx_embedder_matches_dlib(pipeline: FacePipeline, load: Load) -> None:
    """The converted network gives dlib's own descriptors (same model id, same templates)."""
    chips = [
        pipeline.faces(load(p), embed=False)[0].chip
        for p in ("identities/kit_harington/1.jpg", "identities/rose_leslie/2.jpg")
    ]
    native = DlibResNetEmbedder()
    assert native.model_id == pipeline.model_id
    diff = np.abs(native.embed(chips) - pipeline.embedder.embed(chips)).max()
    assert diff < 1e-4


def test_exif_rotated_phone_photo_is_upright(pipeline: FacePipeline, faces_dir) -> None:  # type: ignore[no-untyped-def]
    upright = PILImage.open(faces_dir / "identities/barack_obama/1.jpg").convert("RGB")
    stored = upright.transpose(PILImage.Transpose.ROTATE_90)
    exif = PILImage.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    image = decode_image(buf.getvalue(), load())
    assert image.shape[:2] == (upright.height, upright.width)
    (face,) = pipeline.faces(image)
    assert face.quality is not None and abs(face.quality.roll_deg) < 15


class TestQualityGate:
    def test_accepts_a_good_portrait(self, pipeline: FacePipeline, load: Load) -> None:
        face = pipeline.enrollment_face(load("identities/rose_leslie/1.jpg"))
        assert face.template is not None

    def test_no_face(self, pipeline: FacePipeline) -> None:
        blank = np.full((480, 640, 3), 128, dtype=np.uint8)
        with pytest.raises(QualityError) as exc:
            pipeline.enrollment_face(blank)
        assert exc.value.reason == "no_face"

    def test_more_than_one_face(self, pipeline: FacePipeline, load: Load) -> None:
        with pytest.raises(QualityError) as exc:
            pipeline.enrollment_face(load("scenes/two_people.jpg"))
        assert exc.value.reason == "multiple_faces"

    def test_face_too_small(self, pipeline: FacePipeline, load: Load) -> None:
        image = load("identities/barack_obama/1.jpg")
        small = cv2.resize(image, (image.shape[1] // 6, image.shape[0] // 6))
        with pytest.raises(QualityError) as exc:
            pipeline.enrollment_face(small)
        assert exc.value.reason == "face_too_small"

    def test_blurred(self, pipeline: FacePipeline, load: Load) -> None:
        image = cv2.GaussianBlur(load("identities/barack_obama/1.jpg"), (0, 0), 6)
        with pytest.raises(QualityError) as exc:
            pipeline.enrollment_face(image)
        assert exc.value.reason == "blurred"

    def test_extreme_pose(self, pipeline: FacePipeline, load: Load) -> None:
        # in this photo the man on the far left is seen nearly in profile
        faces = pipeline.faces(load("identities/joe_biden/2.jpg"), embed=False)
        (profile,) = [f for f in faces if f.box.x < 100 and f.box.y > 200]
        assert profile.quality is not None and "extreme_pose" in profile.quality.issues
        frontal = max(faces, key=lambda f: f.box.width * f.box.height)
        assert frontal.quality is not None and "extreme_pose" not in frontal.quality.issues

    def test_pose_measures(self, pipeline: FacePipeline) -> None:
        """Yaw and roll from landmarks: frontal passes, a turned or tilted face fails."""
        frontal = np.array([[40, 50], [80, 50], [60, 70], [45, 90], [75, 90]], np.float32)
        turned = frontal.copy()
        turned[2, 0] = 83  # the nose beyond the left eye: a profile
        angle = np.radians(50)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        tilted = (frontal @ rotation.T).astype(np.float32)
        chip = np.random.default_rng(0).integers(0, 255, (150, 150, 3), dtype=np.uint8)
        box = Box(0, 0, 120, 140)
        assess = pipeline.gate.assess
        assert assess(Face(box, frontal, 0.95), chip).ok
        assert "extreme_pose" in assess(Face(box, turned, 0.95), chip).issues
        assert "extreme_pose" in assess(Face(box, tilted, 0.95), chip).issues

    def test_low_detector_score(self, pipeline: FacePipeline, load: Load) -> None:
        strict = FacePipeline(
            pipeline.detector,
            pipeline.aligner,
            pipeline.embedder,
            QualityGate(60, 25.0, 0.45, 35.0, min_detector_score=0.999),
        )
        with pytest.raises(QualityError) as exc:
            strict.enrollment_face(load("identities/rose_leslie/1.jpg"))
        assert exc.value.reason == "low_confidence"
