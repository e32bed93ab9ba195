"""Erasure leaves nothing on disk; the data directory is private to the service account."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text

from facecrm.config import Settings
from facecrm.crm import accounts, activity, customers, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.models import CustomerKey, CustomerPhoto, FaceTemplate, Purpose
from facecrm.crm.service import FaceCRM, Photo
from facecrm.keys import server_secret
from facecrm.server import create_app
from facecrm.vision.pipeline import FacePipeline
from facecrm.vision.types import Image

from server import serve

Load = Callable[[str], Image]

PROFILE = {
    "name": "Zephyrine Quillfeather",
    "loyalty_id": "LOYQX9Z7714",
    "email": "zq.quill@quillfeather-mail.com",
    "phone": "+44 7700 900877",
    "notes": "prefers-marigold-silk-QX",
}
FEEDBACK = "the-velvet-fitting-room-QX was cold"
PRODUCT = "Moonstone brooch QX-221"
DISTINCTIVE = [*PROFILE.values(), FEEDBACK, PRODUCT]


def _files(data_dir: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(data_dir):  # symlinks (the shared model cache) skipped
        dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink()]
        yield from (Path(root) / f for f in files)


def _found(data_dir: Path, needles: list[bytes]) -> list[tuple[str, bytes]]:
    hits = []
    for path in _files(data_dir):
        data = path.read_bytes()
        hits += [(path.name, n) for n in needles if n in data]
    return hits


def _customer(crm: FaceCRM) -> str:
    """A customer with distinctive profile, feedback and interest text; returns the id."""
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "S1", "Store 1", SYSTEM)
        customer = customers.create(session, SYSTEM, PROFILE)
        activity.add_feedback(session, SYSTEM, customer.id, store.id, FEEDBACK, 2)
        activity.add_interest(session, SYSTEM, customer.id, store.id, PRODUCT)
    needles = [s.encode() for s in DISTINCTIVE]
    assert _found(crm.settings.data_dir, needles)  # it is on disk before the erasure
    return customer.id


@pytest.fixture()
def sqlite_crm(settings: Settings, pipeline: FacePipeline) -> Iterator[FaceCRM]:
    crm = FaceCRM(settings, pipeline=pipeline)
    yield crm
    crm.engine.dispose()


def test_erasure_by_service_leaves_nothing_in_the_files(sqlite_crm: FaceCRM) -> None:
    customer_id = _customer(sqlite_crm)
    with sqlite_crm.sessions() as session:  # an idle pooled connection must not block it
        session.execute(text("SELECT 1"))
    sqlite_crm.delete_customer(customer_id, SYSTEM)
    assert _found(sqlite_crm.settings.data_dir, [s.encode() for s in DISTINCTIVE]) == []


def test_erasure_by_cli_leaves_nothing_in_the_files(sqlite_crm: FaceCRM) -> None:
    customer_id = _customer(sqlite_crm)
    data_dir = sqlite_crm.settings.data_dir
    env = {**os.environ, "FACECRM_DATA_DIR": str(data_dir)}
    erased = subprocess.run(
        [sys.executable, "-m", "facecrm", "customers", "delete", customer_id, "--yes"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert erased.returncode == 0, erased.stderr
    # the server process (here: this one) still has the database open
    assert _found(data_dir, [s.encode() for s in DISTINCTIVE]) == []


def test_erasure_by_api_leaves_nothing_in_the_files(sqlite_crm: FaceCRM) -> None:
    customer_id = _customer(sqlite_crm)
    with db.transaction(sqlite_crm.sessions) as session:
        accounts.create_staff(
            session, "boss", "correct horse battery", "admin", [], principal=SYSTEM
        )
    with serve(create_app(sqlite_crm)) as url:
        token = httpx.post(
            f"{url}/api/v1/auth/token",
            data={"username": "boss", "password": "correct horse battery"},
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{url}/api/v1/customers/{customer_id}", headers=headers).is_success
        for text in (PROFILE["name"], PROFILE["email"]):  # searches are audited too
            found = httpx.get(f"{url}/api/v1/customers", params={"q": text}, headers=headers)
            assert [c["id"] for c in found.json()] == [customer_id]
        r = httpx.delete(f"{url}/api/v1/customers/{customer_id}", headers=headers)
        assert r.status_code == 204, r.text
        assert _found(sqlite_crm.settings.data_dir, [s.encode() for s in DISTINCTIVE]) == []


def test_withdrawal_leaves_no_key_template_or_photo_in_the_files(
    sqlite_crm: FaceCRM, load: Load
) -> None:
    customer = sqlite_crm.enroll(
        "Rose",
        [Photo("p", load("identities/rose_leslie/1.jpg"))],
        CURRENT,
        "kiosk",
        SYSTEM,
        profile={"show_photo": True},
    )
    with sqlite_crm.sessions() as session:
        blobs = [
            session.get(CustomerKey, customer.id).wrapped,  # type: ignore[union-attr]
            session.get(CustomerPhoto, customer.id).jpeg,  # type: ignore[union-attr]
            *session.scalars(
                select(FaceTemplate.vector).where(FaceTemplate.customer_id == customer.id)
            ),
        ]
    assert len(blobs) == 4  # key, photo, and a template of each model (dlib and SFace)
    # pieces from the start, middle and end of each (a photo spans several pages)
    needles = [b[i : i + 40] for b in blobs for i in (0, len(b) // 2, len(b) - 40)]
    assert _found(sqlite_crm.settings.data_dir, needles)
    sqlite_crm.withdraw(customer.id, Purpose.IN_STORE_RECOGNITION, SYSTEM)
    assert _found(sqlite_crm.settings.data_dir, needles) == []


def test_erasure_vacuums_on_postgresql(crm: FaceCRM) -> None:
    if crm.engine.dialect.name != "postgresql":
        pytest.skip("SQLite: the files are checked above")
    customer_id = _customer_pg(crm)
    started = datetime.now(UTC)
    crm.delete_customer(customer_id, SYSTEM)
    with crm.engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT relname, last_vacuum, n_dead_tup FROM pg_stat_user_tables"
                " WHERE relname IN ('customers', 'feedback', 'interests')"
            )
        ).all()
    assert len(rows) == 3
    for name, last_vacuum, dead in rows:
        assert last_vacuum is not None and last_vacuum >= started, name
        assert dead == 0, name


def _customer_pg(crm: FaceCRM) -> str:
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "S1", "Store 1", SYSTEM)
        customer = customers.create(session, SYSTEM, PROFILE)
        activity.add_feedback(session, SYSTEM, customer.id, store.id, FEEDBACK, 2)
        activity.add_interest(session, SYSTEM, customer.id, store.id, PRODUCT)
    return customer.id


def test_audit_trail_holds_no_personal_data(sqlite_crm: FaceCRM) -> None:
    customer_id = _customer(sqlite_crm)
    with db.transaction(sqlite_crm.sessions) as session:
        customers.update(session, SYSTEM, customer_id, {"email": "new.quill@quillfeather-mail.com"})
    sqlite_crm.customer(customer_id, SYSTEM)
    sqlite_crm.delete_customer(customer_id, SYSTEM)
    with sqlite_crm.engine.connect() as connection:
        trail = str(connection.execute(text("SELECT * FROM audit_events")).all())
    assert customer_id in trail  # the random id only
    for value in [*DISTINCTIVE, "new.quill@quillfeather-mail.com"]:
        assert value not in trail


# -- item 17: file permissions ---------------------------------------------------------


def test_data_dir_is_private_whatever_the_umask(
    settings: Settings, pipeline: FacePipeline, load: Load
) -> None:
    settings.ann_min_size = 1  # so the HNSW index file is written too
    old = os.umask(0o022)
    try:
        crm = FaceCRM(settings, pipeline=pipeline)
        crm.enroll(
            "Rose", [Photo("p", load("identities/rose_leslie/1.jpg"))], CURRENT, "kiosk", SYSTEM
        )
        server_secret(settings)
        crm.engine.dispose()
        again = FaceCRM(settings, pipeline=pipeline)  # loads the gallery: saves the index
        again.identify(load("identities/rose_leslie/2.jpg"), SYSTEM)
        with again.engine.connect():  # the WAL and SHM exist while connected
            names = {p.name for p in _files(settings.data_dir)}
            assert {
                "facecrm.db",
                "facecrm.db-wal",
                "facecrm.db-shm",
                "audit-head.json",
                "master.keys",
                "secret.key",
            } <= names
            assert any(n.startswith("hnsw-") and n.endswith(".bin") for n in names)
            for path in _files(settings.data_dir):
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
            for root, dirs, _ in os.walk(settings.data_dir):
                for d in [Path(root), *(Path(root) / d for d in dirs)]:
                    if not d.is_symlink():
                        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
        again.engine.dispose()
    finally:
        os.umask(old)


@pytest.mark.parametrize("how", ["withdraw", "forget_face", "erase"])
def test_both_models_templates_are_deleted(crm: FaceCRM, load: Load, how: str) -> None:
    """Each enrollment photo stores a dlib and an SFace template: every way out removes both
    (and the searchable copy), for this customer only."""
    rose, kit = (
        crm.enroll(name, [Photo("p", load(path))], CURRENT, "kiosk", SYSTEM).id
        for name, path in (
            ("Rose", "identities/rose_leslie/1.jpg"),
            ("Kit", "identities/kit_harington/1.jpg"),
        )
    )

    def models(customer_id: str) -> list[str]:
        with crm.sessions() as session:
            query = select(FaceTemplate.model_id).where(FaceTemplate.customer_id == customer_id)
            return sorted(session.scalars(query))

    assert models(rose) == models(kit) == ["dlib-resnet-v1", "sface-2021dec"]
    if how == "withdraw":
        crm.withdraw(rose, Purpose.IN_STORE_RECOGNITION, SYSTEM)
    elif how == "forget_face":
        crm.forget_face(rose, "retention", SYSTEM)
    else:
        crm.delete_customer(rose, SYSTEM)
    assert models(rose) == [] and models(kit) == ["dlib-resnet-v1", "sface-2021dec"]
    with crm.sessions() as session:
        assert session.get(CustomerKey, rose) is None
    (face,) = crm.identify(load("identities/rose_leslie/2.jpg"), SYSTEM)
    assert face.match is None
