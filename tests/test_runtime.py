"""The split of the face service: runtime, template vault, face service.

* Opening the database never upgrades it: an outdated schema is refused with one clear
  error until `facecrm migrate` (which also seals templates from before encryption).
* Master keys come through the `KeyProvider` protocol only: a KMS works without any
  special case in the services.
* Every operation takes its principal explicitly; the CLI holds no session of its own.
"""

from __future__ import annotations

import ast
import inspect
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, select, text

import facecrm
from facecrm.config import Settings
from facecrm.crm import db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.models import AuditEvent, CustomerKey, FaceTemplate
from facecrm.crm.runtime import Runtime
from facecrm.crm.service import FaceCRM, Photo
from facecrm.crm.vault import TemplateVault
from facecrm.crypto import KeyProvider
from facecrm.errors import SchemaOutdatedError
from facecrm.vision.pipeline import FacePipeline
from facecrm.vision.types import Image

if TYPE_CHECKING:
    from conftest import Cli

Load = Callable[[str], Image]
SRC = Path(facecrm.__file__).resolve().parent


def _previous() -> str:
    """The revision before head (Alembic's own graph)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(db._alembic_config()).get_revision(db.head_revision())
    assert script is not None and isinstance(script.down_revision, str)
    return script.down_revision


def _rose(crm: FaceCRM, load: Load) -> str:
    photo = Photo("p", load("identities/rose_leslie/1.jpg"))
    return crm.enroll("Rose", [photo], CURRENT, "kiosk", SYSTEM).id


# -- migrations only where they belong -----------------------------------------------------


def test_the_cheap_head_is_alembics_head() -> None:
    from alembic.script import ScriptDirectory

    alembic_head = ScriptDirectory.from_config(db._alembic_config()).get_current_head()
    assert db.head_revision() == alembic_head


def test_an_empty_database_is_created_at_head(settings: Settings, database_url: str) -> None:
    """A brand-new database has nothing to convert: any process may create the schema."""
    settings.database_url = database_url
    runtime = Runtime(settings)
    assert db.is_current(runtime.engine)
    runtime.close()


@pytest.fixture()
def outdated(
    settings: Settings, pipeline: FacePipeline, database_url: str, load: Load
) -> Iterator[tuple[Settings, str]]:
    """A database one schema behind, holding Rose's template as written before encryption
    at rest (plain bytes, no data key): what an upgrade from an old version meets."""
    settings.database_url = database_url
    crm = FaceCRM(settings, pipeline=pipeline)
    rose = _rose(crm, load)
    with db.transaction(crm.sessions) as session:
        ((_, _, plain),) = crm.plain_templates(session, rose)
        # versions before the cascade stored the first model's template only
        session.execute(delete(FaceTemplate).where(FaceTemplate.model_id != crm.model_id))
        template = session.scalars(select(FaceTemplate)).one()
        template.vector = plain.tobytes()
        session.query(CustomerKey).delete()
    db.downgrade(crm.engine, _previous())
    crm.close()
    yield settings, rose


def test_an_outdated_schema_is_refused_until_facecrm_migrate(
    outdated: tuple[Settings, str], pipeline: FacePipeline, cli: Cli, load: Load
) -> None:
    settings, rose = outdated
    previous = _previous()
    env = {"FACECRM_DATABASE_URL": settings.resolved_database_url}

    with pytest.raises(SchemaOutdatedError) as refused:
        FaceCRM(settings, pipeline=pipeline)  # a worker, a script: never upgrades
    assert refused.value.reason == "schema_outdated" and refused.value.exit_code == 1
    assert "facecrm migrate" in str(refused.value)
    listing = cli(settings.data_dir, "customers", "list", env=env)
    assert listing.returncode == 1, listing.stderr
    assert listing.stderr.count("\n") == 1 and "(schema_outdated)" in listing.stderr
    engine = db.make_engine(settings.resolved_database_url)
    assert db.current_revision(engine) == previous  # the refusal changed nothing
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM customer_keys")) == 0

    done = cli(settings.data_dir, "migrate", env=env)
    assert done.returncode == 0, done.stderr
    assert f"{previous} → {db.head_revision()}" in done.stdout
    assert "Encrypted 1 template" in done.stdout
    assert db.is_current(engine)
    engine.dispose()

    crm = FaceCRM(settings, pipeline=pipeline)
    with crm.sessions() as session:
        sealed = session.scalars(select(FaceTemplate.vector)).one()
        ((_, _, plain),) = crm.plain_templates(session, rose)
    assert plain.tobytes() not in sealed  # sealed by the migration
    (face,) = crm.identify(load("identities/rose_leslie/2.jpg"), SYSTEM)
    assert face.match is not None and face.match.customer_id == rose
    assert _migrations(crm) == [(previous, db.head_revision())]  # audited, as the CLI
    crm.close()
    again = cli(settings.data_dir, "migrate", env=env)
    assert again.returncode == 0 and "up to date" in again.stdout
    reopened = FaceCRM(settings, pipeline=pipeline, migrate=True)  # a server's start
    assert _migrations(reopened) == [(previous, db.head_revision())]  # at head: no event
    assert reopened.verify_audit().ok
    reopened.close()


def _migrations(crm: FaceCRM) -> list[tuple[object, object]]:
    """The `schema_migrated` events: (from, to) revisions, by the operator."""
    with crm.sessions() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "schema_migrated")
        ).all()
    assert all(e.actor == SYSTEM.label for e in events)
    return [(e.detail["from_revision"], e.detail["to_revision"]) for e in events]


def test_cli_commands_without_faces_start_without_alembic_or_the_models(tmp_path: Path) -> None:
    """The start-up the split buys: an account command imports neither Alembic (the schema
    check is one query) nor OpenCV and the models (the runtime loads them on first use)."""
    probe = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from facecrm.cli import app\n"
        "for args in (['stores', 'add', 'A', 'Alpha'], ['stores', 'list']):\n"
        "    result = CliRunner().invoke(app, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in ('alembic', 'cv2', 'onnxruntime') if m in sys.modules))\n"
    )
    data = tmp_path / "data"
    Runtime(Settings(data_dir=data)).close()  # created at head (an empty database)
    env = {**os.environ, "FACECRM_DATA_DIR": str(data)}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- key providers: an interface, no isinstance ---------------------------------------------


class FakeKms:
    """A mock KMS (outside our system): master keys that never leave it, an alias that
    moves to a new key when the operator rotates, and keys that can be disabled."""

    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}
        self._alias = self.create_key()
        self.disabled: set[str] = set()
        self.calls: list[str] = []

    def create_key(self) -> str:
        key_id = f"kms-{secrets.token_hex(4)}"
        self._keys[key_id] = AESGCM.generate_key(bit_length=256)
        return key_id

    def move_alias(self, key_id: str) -> None:
        self._pending = key_id

    # -- the KeyProvider protocol --

    @property
    def current_id(self) -> str:
        return self._alias

    def wrap(self, dek: bytes) -> tuple[str, bytes]:
        self.calls.append("wrap")
        nonce = secrets.token_bytes(12)
        return self._alias, nonce + AESGCM(self._keys[self._alias]).encrypt(nonce, dek, None)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        self.calls.append("unwrap")
        if key_id in self.disabled:
            raise PermissionError(f"KMS key {key_id} is disabled")
        return AESGCM(self._keys[key_id]).decrypt(wrapped[:12], wrapped[12:], None)

    def refresh(self) -> None:
        self.calls.append("refresh")
        self._alias = getattr(self, "_pending", self._alias)


def test_a_kms_enrolls_rotates_and_identifies_through_the_protocol(
    settings: Settings, pipeline: FacePipeline, database_url: str, load: Load
) -> None:
    settings.database_url = database_url
    kms = FakeKms()
    provider: KeyProvider = kms  # structurally: no subclass, no registration
    crm = FaceCRM(settings, pipeline=pipeline, keys=provider)
    old = kms.current_id
    rose = _rose(crm, load)
    assert crm.master_keys_in_use() == {old}
    assert not (settings.data_dir / "master.keys").exists()  # no local key was ever made

    new = kms.create_key()
    kms.move_alias(new)  # the KMS operator rotates; facecrm learns it from refresh()
    assert crm.rotate_keys(SYSTEM) == 1
    assert "refresh" in kms.calls and crm.master_keys_in_use() == {new}
    kms.disabled.add(old)  # retiring the old key loses nothing
    crm.close()

    fresh = FaceCRM(settings, pipeline=pipeline, keys=kms)
    (face,) = fresh.identify(load("identities/rose_leslie/2.jpg"), SYSTEM)
    assert face.match is not None and face.match.customer_id == rose
    assert fresh.verify(rose, load("identities/rose_leslie/2.jpg"), SYSTEM).match
    fresh.close()


# -- explicit principals; the CLI only translates ------------------------------------------


@pytest.mark.parametrize("cls", [FaceCRM, TemplateVault, Runtime])
def test_no_operation_defaults_its_principal(cls: type) -> None:
    defaulted = [
        name
        for name, method in inspect.getmembers(cls, inspect.isfunction)
        if "principal" in inspect.signature(method).parameters
        and inspect.signature(method).parameters["principal"].default is not inspect.Parameter.empty
    ]
    assert defaulted == []


def test_the_cli_opens_no_session_or_transaction_itself() -> None:
    tree = ast.parse((SRC / "cli.py").read_text())
    calls = [
        f"{ast.unparse(node)} (line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in {"transaction", "sessions", "begin"}
    ]
    assert calls == []


def test_the_vault_and_runtime_share_one_database(crm: FaceCRM, load: Load) -> None:
    """`FaceCRM` keeps its old surface (the API uses it) over the split parts."""
    rose = _rose(crm, load)
    assert crm.sessions is crm.runtime.sessions and crm.engine is crm.runtime.engine
    assert crm.keys is crm.vault.keys
    with crm.sessions() as session:
        ((_, owner, vector),) = crm.vault.plain_templates(session, rose)
    assert owner == rose and np.isclose(np.linalg.norm(vector), 1.0, atol=1e-3)
