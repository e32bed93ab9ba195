"""A user-supplied ONNX embedder, configured through settings, end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from facecrm.config import Settings, configure
from facecrm.gallery.threshold import load_calibration
from facecrm.vision.embed import DLIB_ONNX
from facecrm.vision.image import read_image
from facecrm.vision.pipeline import FacePipeline, build_pipeline

if TYPE_CHECKING:
    from conftest import Cli


@pytest.fixture()
def user_model(pipeline: FacePipeline, model_cache: Path, tmp_path: Path) -> Path:
    """An ONNX file the user 'owns': here, a copy of the converted dlib network."""
    target = tmp_path / "my_embedder.onnx"
    target.write_bytes((model_cache / DLIB_ONNX).read_bytes())
    return target


def test_configured_onnx_embedder(settings: Settings, user_model: Path, faces_dir: Path) -> None:
    s = configure(
        data_dir=settings.data_dir,
        embedder="onnx",
        onnx_model=user_model,
        onnx_input_size=150,
        onnx_mean=0.0,
        onnx_std=1.0,
    )
    pipeline = build_pipeline(s)
    assert pipeline.model_id.startswith("onnx-")
    (face,) = pipeline.faces(read_image(faces_dir / "identities/rose_leslie/1.jpg", s))
    assert face.template is not None and face.template.shape == (128,)
    with pytest.raises(LookupError):  # a new vector space has no threshold until calibrated
        load_calibration(pipeline.model_id, s.data_dir)


def test_eval_calibrates_a_new_embedder(
    cli: Cli, settings: Settings, user_model: Path, faces_dir: Path
) -> None:
    env = {
        "FACECRM_EMBEDDER": "onnx",
        "FACECRM_ONNX_MODEL": str(user_model),
        "FACECRM_ONNX_INPUT_SIZE": "150",
        "FACECRM_ONNX_MEAN": "0",
        "FACECRM_ONNX_STD": "1",
    }
    identities = faces_dir / "identities"
    args = ("eval", str(identities), "--format", "json", "--workers", "1")
    missing = cli(settings.data_dir, *args, env=env)
    assert missing.returncode == 1 and "calibrat" in missing.stderr
    done = cli(settings.data_dir, *args, "--calibrate", env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["model_id"].startswith("onnx-")
    assert report["faces_found"] == len([p for p in identities.rglob("*") if p.is_file()])
