"""Retention rules: old visits, faces of customers not seen for long, expired consents."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from facecrm.crm import accounts, activity, consent_text, customers, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.customers import ConsentGrant
from facecrm.crm.models import (
    AuditEvent,
    Consent,
    CustomerKey,
    CustomerPhoto,
    FaceTemplate,
    Purpose,
    Visit,
)
from facecrm.crm.retention import purge
from facecrm.crm.service import FaceCRM, Photo
from facecrm.vision.types import Image

Load = Callable[[str], Image]


def test_purge(crm: FaceCRM, load: Load) -> None:
    now = datetime.now(UTC)
    long_ago = now - timedelta(days=800)
    rose = crm.enroll(
        "Rose", [Photo("p", load("identities/rose_leslie/1.jpg"))], CURRENT, "kiosk", SYSTEM
    )
    kit = crm.enroll(
        "Kit", [Photo("p", load("identities/kit_harington/1.jpg"))], CURRENT, "kiosk", SYSTEM
    )
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "A", "A", SYSTEM)
        # Rose enrolled and last came 800 days ago; Kit came today
        session.execute(
            update(FaceTemplate)
            .where(FaceTemplate.customer_id == rose.id)
            .values(created_at=long_ago)
        )
        activity.record_visit(session, SYSTEM, rose.id, store.id, "manual", at=long_ago)
        activity.record_visit(session, SYSTEM, kit.id, store.id, "manual", at=now)
        consent_text.create_version(session, SYSTEM, Purpose.MARKETING, "en", "Offers by e-mail.")
        marketing = customers.give_consent(
            session, SYSTEM, kit.id, ConsentGrant(Purpose.MARKETING, None, "kiosk")
        )
        marketing.given_at = now - timedelta(days=40 * 30)  # older than 36 months
    report = purge(crm, SYSTEM, now=now)
    assert (report.visits, report.unseen_customers, report.expired_consents) == (1, 1, 1)
    with crm.sessions() as session:
        assert set(session.scalars(select(FaceTemplate.customer_id))) == {kit.id}
        assert session.get(CustomerKey, rose.id) is None
        assert [v.customer_id for v in session.scalars(select(Visit))] == [kit.id]
        expired = session.scalars(select(Consent).where(Consent.purpose == "marketing")).one()
        assert expired.withdrawn_at and expired.withdrawn_channel == "expired"
        assert expired.withdrawn_by == SYSTEM.label
        actions = set(session.scalars(select(AuditEvent.action)))
    assert {"purge", "forget_face"} <= actions
    (gone,) = crm.identify(load("identities/rose_leslie/2.jpg"), SYSTEM)
    assert gone.match is None
    again = purge(crm, SYSTEM, now=now)
    assert (again.visits, again.unseen_customers, again.expired_consents) == (0, 0, 0)


def _expire_recognition_consents(crm: FaceCRM, *customer_ids: str) -> None:
    with db.transaction(crm.sessions) as session:
        session.execute(
            update(Consent)
            .where(Consent.customer_id.in_(customer_ids))
            .values(given_at=datetime.now(UTC) - timedelta(days=40 * 30))
        )


def _state(crm: FaceCRM, customer_id: str) -> tuple[bool, int]:
    """(recognition consent active, number of templates: one per photo and model)."""
    with crm.sessions() as session:
        consent = session.scalars(
            select(Consent).where(
                Consent.customer_id == customer_id,
                Consent.purpose == Purpose.IN_STORE_RECOGNITION,
            )
        ).one()
        templates = session.scalars(
            select(FaceTemplate.id).where(FaceTemplate.customer_id == customer_id)
        ).all()
    return consent.withdrawn_at is None, len(templates)


def test_a_purge_that_dies_half_way_expires_nothing(
    crm: FaceCRM, load: Load, monkeypatch: pytest.MonkeyPatch
) -> None:
    rose = crm.enroll(
        "Rose", [Photo("p", load("identities/rose_leslie/1.jpg"))], CURRENT, "kiosk", SYSTEM
    )
    kit = crm.enroll(
        "Kit", [Photo("p", load("identities/kit_harington/1.jpg"))], CURRENT, "kiosk", SYSTEM
    )
    _expire_recognition_consents(crm, rose.id, kit.id)
    forget = crm._forget_face
    calls = []

    def dies_on_the_second(session: Session, customer_id: str) -> None:
        calls.append(customer_id)
        if len(calls) == 2:
            raise SystemExit("the process dies")
        forget(session, customer_id)

    monkeypatch.setattr(crm, "_forget_face", dies_on_the_second)
    with pytest.raises(SystemExit):
        purge(crm, SYSTEM)
    # no consent expired without its templates going: nothing happened at all
    assert _state(crm, rose.id) == (True, 2) and _state(crm, kit.id) == (True, 2)
    monkeypatch.undo()
    report = purge(crm, SYSTEM)
    assert report.expired_consents == 2
    assert _state(crm, rose.id) == (False, 0) and _state(crm, kit.id) == (False, 0)


def test_purge_removes_templates_left_without_consent(crm: FaceCRM, load: Load) -> None:
    rose = crm.enroll(
        "Rose",
        [Photo("p", load("identities/rose_leslie/1.jpg"))],
        CURRENT,
        "kiosk",
        SYSTEM,
        profile={"show_photo": True},
    )
    kit = crm.enroll(
        "Kit", [Photo("p", load("identities/kit_harington/1.jpg"))], CURRENT, "kiosk", SYSTEM
    )
    # e.g. left behind by an older version that crashed between expiry and deletion
    with db.transaction(crm.sessions) as session:
        session.execute(
            update(Consent)
            .where(Consent.customer_id == rose.id)
            .values(withdrawn_at=datetime.now(UTC))
        )
    purge(crm, SYSTEM)
    assert _state(crm, rose.id) == (False, 0) and _state(crm, kit.id) == (True, 2)
    with crm.sessions() as session:
        assert session.get(CustomerPhoto, rose.id) is None
        assert session.get(CustomerKey, rose.id) is None
        forgotten = session.scalars(
            select(AuditEvent.customer_id).where(AuditEvent.action == "forget_face")
        ).all()
    assert forgotten == [rose.id]
    (gone,) = crm.identify(load("identities/rose_leslie/2.jpg"), SYSTEM)
    assert gone.match is None
