"""Shared fixtures: the real face data, a configured pipeline, an isolated data dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from facecrm.config import Settings, configure
from facecrm.crm.service import FaceCRM
from facecrm.vision.image import read_image
from facecrm.vision.pipeline import FacePipeline, build_pipeline
from facecrm.vision.types import Image

REPO = Path(__file__).resolve().parents[1]
FACES = Path(os.environ.get("FACECRM_FACES_DIR", REPO.parent / "shared" / "faces"))


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """`../shared/faces` (or `$FACECRM_FACES_DIR`); tests using it skip when it is absent."""
    if not (FACES / "identities").is_dir():
        pytest.skip(f"real face photos not found at {FACES} (set FACECRM_FACES_DIR)")
    return FACES


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


def fresh_settings(data_dir: Path, model_cache: Path) -> Settings:
    """Settings over an empty data dir that shares the converted-model cache."""
    s = configure(data_dir=data_dir)
    (s.data_dir / "cache").mkdir(parents=True)
    (s.data_dir / "cache" / "models").symlink_to(model_cache, target_is_directory=True)
    return s


@pytest.fixture()
def settings(tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings with a fresh data dir (the converted model cache is shared)."""
    monkeypatch.setenv("FACECRM_DATA_DIR", str(tmp_path / "data"))
    return fresh_settings(tmp_path / "data", model_cache)


@pytest.fixture(scope="session")
def pipeline(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> FacePipeline:
    """The default pipeline, built once for the whole session."""
    data_dir = tmp_path_factory.mktemp("pipeline-data")
    (data_dir / "cache").mkdir()
    (data_dir / "cache" / "models").symlink_to(model_cache, target_is_directory=True)
    return build_pipeline(configure(data_dir=data_dir))


@pytest.fixture()
def crm(settings: Settings, pipeline: FacePipeline) -> FaceCRM:
    return FaceCRM(settings, pipeline=pipeline)


@pytest.fixture(scope="session")
def load(faces_dir: Path):  # type: ignore[no-untyped-def]
    """Read a photo of the shared set by its relative path."""

    def _load(relative: str) -> Image:
        return read_image(faces_dir / relative)

    return _load


BACKENDS = ["sqlite"]


@pytest.fixture(scope="module", params=BACKENDS)
def module_settings(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    model_cache: Path,
) -> Settings:
    """Settings for a module's shared server, once per database backend."""
    s = fresh_settings(tmp_path_factory.mktemp("module-data"), model_cache)
    if request.param == "postgresql":
        s.database_url = request.getfixturevalue("postgres_database")
    return s
