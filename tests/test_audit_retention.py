"""Audit-trail retention: old events go, the rest still verifies from a sealed checkpoint."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select, update

from conftest import Cli
from facecrm.crm import accounts, auditchain, customers, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.models import Alert, AuditEvent
from facecrm.crm.retention import purge
from facecrm.crm.service import FaceCRM


def _events(crm: FaceCRM, n: int) -> None:
    """`n` audited commits (one event each)."""
    for _ in range(n):
        with db.transaction(crm.sessions) as session:
            code = f"S{len(accounts.list_stores(session, SYSTEM))}"
            accounts.create_store(session, code, code, SYSTEM)


def _age(crm: FaceCRM, through: int, days: int) -> None:
    """Date the events up to `through` `days` back (the chain is resealed: as if written
    then; `at` is part of each event's hash)."""
    then = datetime.now(UTC) - timedelta(days=days)
    with db.transaction(crm.sessions) as session:
        session.execute(update(AuditEvent).where(AuditEvent.id <= through).values(at=then))
        prev = auditchain.GENESIS
        for event in session.scalars(select(AuditEvent).order_by(AuditEvent.id)):
            event.prev_hash = prev
            event.hash = prev = auditchain.link(crm.runtime.audit_key, prev, event)
    crm.runtime.audit_head.unlink()  # the head's hash changed with the reseal


def _ids(crm: FaceCRM) -> list[int]:
    with crm.sessions() as session:
        return list(session.scalars(select(AuditEvent.id).order_by(AuditEvent.id)))


def test_old_events_are_pruned_and_the_rest_verifies(crm: FaceCRM, cli: Cli) -> None:
    _events(crm, 6)
    _age(crm, 4, crm.settings.retain_audit_days + 2)
    assert crm.verify_audit().ok
    report = purge(crm, SYSTEM)
    assert report.audit_events == 4
    ids = _ids(crm)
    assert ids[:2] == [5, 6]
    with crm.sessions() as session:
        checkpoint = session.scalars(
            select(AuditEvent).where(AuditEvent.action == auditchain.CHECKPOINT)
        ).one()
    assert checkpoint.detail["through"] == 4 and checkpoint.detail["events"] == 4
    verified = crm.verify_audit()
    assert verified.ok, verified.problems
    env = {"FACECRM_DATABASE_URL": crm.engine.url.render_as_string(hide_password=False)}
    done = cli(crm.settings.data_dir, "audit", "verify", env=env)
    assert done.returncode == 0, done.stderr
    assert "Audit trail intact" in done.stdout
    _events(crm, 1)  # the chain goes on from the kept events
    assert crm.verify_audit().ok
    assert purge(crm, SYSTEM).audit_events == 0  # nothing more is old enough


def test_deleting_past_the_checkpoint_is_reported(crm: FaceCRM) -> None:
    _events(crm, 6)
    _age(crm, 4, crm.settings.retain_audit_days + 2)
    purge(crm, SYSTEM)
    with db.transaction(crm.sessions) as session:
        session.execute(delete(AuditEvent).where(AuditEvent.id == 5))  # the first kept one
    report = crm.verify_audit()
    assert any("events 5: missing" in p for p in report.problems), report.problems


def test_a_forged_checkpoint_is_reported(crm: FaceCRM) -> None:
    _events(crm, 6)
    with db.transaction(crm.sessions) as session:
        first_kept = session.get(AuditEvent, 4)
        assert first_kept is not None
        session.execute(delete(AuditEvent).where(AuditEvent.id < 4))
        session.add(
            AuditEvent(
                id=100,
                at=datetime.now(UTC),
                actor="system:cli",
                action=auditchain.CHECKPOINT,
                detail={"through": 3, "hash": first_kept.prev_hash},
                note="",
                prev_hash="x",
                hash="y",
            )
        )
    report = crm.verify_audit()
    assert any("event 100" in p for p in report.problems), report.problems


def test_a_chain_that_does_not_verify_is_not_pruned(crm: FaceCRM) -> None:
    _events(crm, 6)
    _age(crm, 4, crm.settings.retain_audit_days + 2)
    with db.transaction(crm.sessions) as session:
        session.execute(update(AuditEvent).where(AuditEvent.id == 2).values(note="altered"))
    assert purge(crm, SYSTEM).audit_events == 0
    with crm.sessions() as session:
        assert session.scalar(select(func.min(AuditEvent.id))) == 1


def test_retention_zero_keeps_everything(crm: FaceCRM) -> None:
    _events(crm, 3)
    _age(crm, 2, 5000)
    crm.settings.retain_audit_days = 0
    assert purge(crm, SYSTEM).audit_events == 0
    assert _ids(crm)[0] == 1


def test_alerts_past_their_retention_go(crm: FaceCRM) -> None:
    """Alerts carry who claimed them and the time to greet: staff data, kept 90 days."""
    now = datetime.now(UTC)
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "A", "A", SYSTEM)
        rose = customers.create(session, SYSTEM, {"name": "Rose"})
        for days in (crm.settings.retain_alerts_days + 1, 1):
            session.add(
                Alert(
                    store_id=store.id,
                    customer_id=rose.id,
                    rule="vip",
                    message="VIP",
                    created_at=now - timedelta(days=days),
                )
            )
    assert purge(crm, SYSTEM, now=now).alerts == 1
    with crm.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Alert)) == 1
