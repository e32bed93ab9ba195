"""Retention rules: old visits, faces of customers not seen for long, expired consents."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from facecrm.crm import accounts, activity, customers, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.customers import ConsentGrant
from facecrm.crm.models import AuditEvent, Consent, CustomerKey, FaceTemplate, Purpose, Visit
from facecrm.crm.retention import purge
from facecrm.crm.service import FaceCRM, Photo
from facecrm.vision.types import Image

Load = Callable[[str], Image]


def test_purge(crm: FaceCRM, load: Load) -> None:
    now = datetime.now(UTC)
    long_ago = now - timedelta(days=800)
    rose = crm.enroll("Rose", [Photo("p", load("identities/rose_leslie/1.jpg"))], "v1", "kiosk")
    kit = crm.enroll("Kit", [Photo("p", load("identities/kit_harington/1.jpg"))], "v1", "kiosk")
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "A", "A")
        # Rose enrolled and last came 800 days ago; Kit came today
        session.execute(
            update(FaceTemplate)
            .where(FaceTemplate.customer_id == rose.id)
            .values(created_at=long_ago)
        )
        activity.record_visit(session, SYSTEM, rose.id, store.id, "manual", at=long_ago)
        activity.record_visit(session, SYSTEM, kit.id, store.id, "manual", at=now)
        marketing = customers.give_consent(
            session, SYSTEM, kit.id, ConsentGrant(Purpose.MARKETING, "v1", "kiosk")
        )
        marketing.given_at = now - timedelta(days=40 * 30)  # older than 36 months
    report = purge(crm, now=now)
    assert (report.visits, report.unseen_customers, report.expired_consents) == (1, 1, 1)
    with crm.sessions() as session:
        assert set(session.scalars(select(FaceTemplate.customer_id))) == {kit.id}
        assert session.get(CustomerKey, rose.id) is None
        assert [v.customer_id for v in session.scalars(select(Visit))] == [kit.id]
        assert (
            session.scalars(select(Consent).where(Consent.purpose == "marketing"))
            .one()
            .withdrawn_at
        )
        actions = set(session.scalars(select(AuditEvent.action)))
    assert {"purge", "forget_face"} <= actions
    (gone,) = crm.identify(load("identities/rose_leslie/2.jpg"))
    assert gone.match is None
    again = purge(crm, now=now)
    assert (again.visits, again.unseen_customers, again.expired_consents) == (0, 0, 0)
