"""The audit trail's hash chain reports altered, inserted and deleted events."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, select, text

from facecrm.crm import customers, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.models import AuditEvent
from facecrm.crm.service import FaceCRM


def _activity(crm: FaceCRM, n: int = 5) -> list[int]:
    for i in range(n):
        with db.transaction(crm.sessions) as session:
            customers.create(session, SYSTEM, {"name": f"Customer {i}"})
    with crm.sessions() as session:
        return list(session.scalars(select(AuditEvent.id).order_by(AuditEvent.id)))


def _sql(crm: FaceCRM, statement: str, **params: object) -> None:
    with crm.engine.begin() as connection:
        connection.execute(text(statement), params)


def test_untouched_chain_verifies(crm: FaceCRM) -> None:
    ids = _activity(crm)
    report = crm.verify_audit()
    assert report.ok, report.problems
    assert report.checked == len(ids) == 5
    with crm.sessions() as session:
        assert session.scalar(select(func.count()).where(AuditEvent.hash.is_(None))) == 0


def _tampered(crm: FaceCRM, tamper: Callable[[FaceCRM, list[int]], None]) -> list[str]:
    ids = _activity(crm)
    tamper(crm, ids)
    report = crm.verify_audit()
    assert not report.ok
    return report.problems


def test_altered_event(crm: FaceCRM) -> None:
    problems = _tampered(
        crm,
        lambda c, ids: _sql(
            c, "UPDATE audit_events SET actor = 'someone else' WHERE id = :i", i=ids[2]
        ),
    )
    assert len(problems) == 1 and "content altered" in problems[0]


def test_deleted_event(crm: FaceCRM) -> None:
    problems = _tampered(
        crm, lambda c, ids: _sql(c, "DELETE FROM audit_events WHERE id = :i", i=ids[1])
    )
    assert any("does not follow" in p for p in problems)


def test_inserted_event(crm: FaceCRM) -> None:
    def forge(c: FaceCRM, ids: list[int]) -> None:
        with c.engine.begin() as connection:
            row = (
                connection.execute(text("SELECT * FROM audit_events WHERE id = :i"), {"i": ids[-1]})
                .mappings()
                .one()
            )
        _sql(
            c,
            "INSERT INTO audit_events (at, actor, action, detail, note, prev_hash, hash)"
            " VALUES (:at, 'intruder', 'lookup', '{}', '', :prev, :hash)",
            at=row["at"],
            prev=row["hash"],
            hash="f" * 64,
        )

    problems = _tampered(crm, forge)
    assert any("content altered" in p for p in problems)
    assert any("newest event" in p for p in problems)


def test_truncated_tail(crm: FaceCRM) -> None:
    problems = _tampered(
        crm, lambda c, ids: _sql(c, "DELETE FROM audit_events WHERE id >= :i", i=ids[-2])
    )
    assert any("newest event" in p for p in problems)
