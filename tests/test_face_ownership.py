"""A face joins a customer only if it is theirs: 1:1 on adding, 1:N against everyone else.

Real faces, real models, SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import func, select

from facecrm.crm.authz import SYSTEM, Forbidden, Principal
from facecrm.crm.cards import enrolled_photos
from facecrm.crm.errors import AlreadyEnrolledError, FaceMismatchError, InvalidError
from facecrm.crm.models import AuditEvent, Customer, FaceTemplate
from facecrm.crm.service import FaceCRM, Photo
from facecrm.vision.types import Image

if TYPE_CHECKING:
    from conftest import Cli, CliResult

Load = Callable[[str], Image]
VERSION = "2026-11-v1"
MANAGER = Principal("staff", "m1", "manager", "manager", frozenset({"s1"}))
ASSOCIATE = Principal("staff", "a1", "associate", "associate", frozenset({"s1"}))


def _photo(load: Load, path: str) -> Photo:
    return Photo(path, load(path))


def _count(crm: FaceCRM, model: type) -> int:
    """Rows of `model`; for templates, the enrolled photos (each stores one per model)."""
    with crm.sessions() as session:
        query = select(func.count()).select_from(model)
        if model is FaceTemplate:
            query = query.where(FaceTemplate.model_id == crm.model_id)
        return int(session.scalar(query) or 0)


def _events(crm: FaceCRM, action: str) -> list[AuditEvent]:
    with crm.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def test_another_persons_photo_is_refused(crm: FaceCRM, load: Load) -> None:
    rose = crm.enroll(
        "Rose", [_photo(load, "identities/rose_leslie/1.jpg")], VERSION, "kiosk", SYSTEM
    )
    with pytest.raises(FaceMismatchError) as exc:
        crm.add_photos(rose.id, [_photo(load, "identities/kit_harington/1.jpg")], ASSOCIATE)
    assert exc.value.reason == "face_mismatch"
    assert _count(crm, FaceTemplate) == 1
    (refused,) = _events(crm, "enroll_mismatch")
    assert refused.customer_id == rose.id
    (face,) = crm.identify(load("identities/kit_harington/2.jpg"), SYSTEM)
    assert face.match is None  # Kit is not recognised as Rose


def test_same_persons_second_photo_is_accepted(crm: FaceCRM, load: Load) -> None:
    rose = crm.enroll(
        "Rose", [_photo(load, "identities/rose_leslie/1.jpg")], VERSION, "kiosk", SYSTEM
    )
    crm.add_photos(rose.id, [_photo(load, "identities/rose_leslie/2.jpg")], ASSOCIATE)
    assert _count(crm, FaceTemplate) == 2
    assert _events(crm, "face_override") == []


def test_manager_override_is_audited_and_associate_may_not(crm: FaceCRM, load: Load) -> None:
    rose = crm.enroll(
        "Rose", [_photo(load, "identities/rose_leslie/1.jpg")], VERSION, "kiosk", SYSTEM
    )
    kit = [_photo(load, "identities/kit_harington/1.jpg")]
    with pytest.raises(Forbidden):
        crm.add_photos(rose.id, kit, ASSOCIATE, override_reason="new look")
    with pytest.raises(InvalidError):
        crm.add_photos(rose.id, kit, MANAGER, override_reason="   ")
    assert _count(crm, FaceTemplate) == 1
    crm.add_photos(rose.id, kit, MANAGER, override_reason="heavy make-up for a show")
    assert _count(crm, FaceTemplate) == 2
    (event,) = _events(crm, "face_override")
    assert event.customer_id == rose.id and event.actor == "staff:manager"
    assert event.detail["reason"] == "heavy make-up for a show"
    assert event.detail["similarity"] < crm.threshold


def test_a_face_enrolled_under_another_customer_is_refused(crm: FaceCRM, load: Load) -> None:
    rose = crm.enroll(
        "Rose", [_photo(load, "identities/rose_leslie/1.jpg")], VERSION, "kiosk", SYSTEM
    )
    customers_before = _count(crm, Customer)
    with pytest.raises(AlreadyEnrolledError) as exc:
        crm.enroll(
            "Not Rose", [_photo(load, "identities/rose_leslie/2.jpg")], VERSION, "kiosk", ASSOCIATE
        )
    assert exc.value.reason == "already_enrolled"
    assert "Rose" not in str(exc.value) and rose.id not in str(exc.value)
    # all or nothing: no customer row, no consent, no template
    assert _count(crm, Customer) == customers_before
    assert _count(crm, FaceTemplate) == 1
    (event,) = _events(crm, "enroll_duplicate")
    assert event.customer_id == rose.id and event.detail["target"] is None
    assert event.actor == "staff:associate"


def test_no_override_lets_another_customers_face_in(crm: FaceCRM, load: Load) -> None:
    rose = crm.enroll(
        "Rose", [_photo(load, "identities/rose_leslie/1.jpg")], VERSION, "kiosk", SYSTEM
    )
    kit = crm.enroll(
        "Kit", [_photo(load, "identities/kit_harington/1.jpg")], VERSION, "kiosk", SYSTEM
    )
    with pytest.raises(AlreadyEnrolledError):
        crm.add_photos(
            kit.id, [_photo(load, "identities/rose_leslie/2.jpg")], MANAGER, override_reason="x"
        )
    assert _count(crm, FaceTemplate) == 2
    (event,) = _events(crm, "enroll_duplicate")
    assert event.customer_id == rose.id and event.detail["target"] == kit.id


def test_photos_of_one_enrollment_are_one_person(crm: FaceCRM, load: Load) -> None:
    photos = [
        _photo(load, "identities/rose_leslie/1.jpg"),
        _photo(load, "identities/kit_harington/1.jpg"),
    ]
    with pytest.raises(FaceMismatchError):
        crm.enroll("Rose", photos, VERSION, "kiosk", SYSTEM)
    assert _count(crm, Customer) == 0 and _count(crm, FaceTemplate) == 0
    both = [
        _photo(load, "identities/kit_harington/1.jpg"),
        _photo(load, "identities/kit_harington/2.jpg"),
    ]
    assert enrolled_photos(crm.enroll("Kit", both, VERSION, "kiosk", SYSTEM).templates) == 2


def test_cli_refuses_a_face_enrolled_under_another_customer(
    cli: Cli, tmp_path: Path, model_cache: Path, faces_dir: Path
) -> None:
    """The command line goes through the same check (SQLite)."""
    data = tmp_path / "data"
    (data / "cache").mkdir(parents=True)
    (data / "cache" / "models").symlink_to(model_cache, target_is_directory=True)

    def enroll(name: str, photo: str) -> CliResult:
        return cli(data, "enroll", name, str(faces_dir / photo), "--consent")

    assert enroll("Rose Leslie", "identities/rose_leslie/1.jpg").returncode == 0
    again = enroll("Someone Else", "identities/rose_leslie/2.jpg")
    assert again.returncode == 1  # refused (2 is a usage error)
    assert "already enrolled" in again.stderr and "Rose" not in again.stderr
    listed = cli(data, "customers", "list")
    assert "Rose Leslie" in listed.stdout and "Someone Else" not in listed.stdout
