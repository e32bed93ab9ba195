"""The audit trail's hash chain reports altered, inserted and deleted events."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from facecrm.crm import auditlog, customers, db
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
            "INSERT INTO audit_events (id, at, actor, action, detail, note, prev_hash, hash)"
            " VALUES (:id, :at, 'intruder', 'lookup', '{}', '', :prev, :hash)",
            id=ids[-1] + 1,
            at=row["at"],
            prev=row["hash"],
            hash="f" * 64,
        )

    problems = _tampered(crm, forge)
    assert problems == ["event 6: content altered"]


def test_truncated_tail(crm: FaceCRM) -> None:
    problems = _tampered(
        crm, lambda c, ids: _sql(c, "DELETE FROM audit_events WHERE id >= :i", i=ids[-2])
    )
    assert any("newest sealed one, is missing" in p for p in problems)


# -- an intruder with write access to the database ---------------------------------


def _hashes(crm: FaceCRM) -> dict[int, str | None]:
    with crm.sessions() as session:
        return dict(session.execute(select(AuditEvent.id, AuditEvent.hash)).all())  # type: ignore[arg-type]


def _attack(crm: FaceCRM, *statements: str, **params: object) -> list[str]:
    """Run the intruder's SQL, then a normal audited request, then verify."""
    for statement in statements:
        _sql(crm, statement, **params)
    _activity(crm, 1)  # the next request must not seal the intruder's rows
    report = crm.verify_audit()
    assert not report.ok
    return report.problems


def test_null_out_and_reseal_after_delete(crm: FaceCRM) -> None:
    ids = _activity(crm)
    problems = _attack(
        crm,
        "DELETE FROM audit_events WHERE id = :i",
        "UPDATE audit_events SET hash = NULL, prev_hash = NULL WHERE id > :i",
        i=ids[1],
    )
    assert f"events {ids[1]}: missing (deleted)" in problems
    assert all(f"event {i}: not sealed" in " ".join(problems) for i in ids[2:])
    assert all(_hashes(crm)[i] is None for i in ids[2:])  # never re-sealed


def test_null_out_and_reseal_after_alter(crm: FaceCRM) -> None:
    ids = _activity(crm)
    problems = _attack(
        crm,
        "UPDATE audit_events SET actor = 'someone else' WHERE id = :i",
        "UPDATE audit_events SET hash = NULL, prev_hash = NULL WHERE id >= :i",
        i=ids[2],
    )
    assert all(f"event {i}: not sealed" in " ".join(problems) for i in ids[2:])
    assert all(_hashes(crm)[i] is None for i in ids[2:])


def test_backdated_insert_with_null_hash(crm: FaceCRM) -> None:
    ids = _activity(crm)
    forged = ids[-1] + 1
    problems = _attack(
        crm,
        "INSERT INTO audit_events (id, at, actor, action, customer_id, detail, note)"
        " VALUES (:i, :at, 'clerk', 'lookup', NULL, '{}', '')",
        i=forged,
        at=datetime.now(UTC) - timedelta(days=30),
    )
    text_ = " ".join(problems)
    assert f"event {forged}: not sealed" in text_
    assert f"event {forged}: dated" in text_ and "out of order" in text_
    assert _hashes(crm)[forged] is None


def test_id_gap(crm: FaceCRM) -> None:
    ids = _activity(crm)
    problems = _attack(crm, "DELETE FROM audit_events WHERE id IN (:a, :b)", a=ids[1], b=ids[2])
    assert f"events {ids[1]}..{ids[2]}: missing (deleted)" in problems


def test_out_of_order_at(crm: FaceCRM) -> None:
    ids = _activity(crm)
    problems = _attack(
        crm,
        "UPDATE audit_events SET at = :at, hash = NULL WHERE id = :i",
        i=ids[3],
        at=datetime.now(UTC) - timedelta(hours=1),
    )
    assert any(p.startswith(f"event {ids[3]}: dated") for p in problems)


def test_truncation_stays_visible_after_later_writes(crm: FaceCRM) -> None:
    ids = _activity(crm)
    problems = _attack(crm, "DELETE FROM audit_events WHERE id >= :i", i=ids[-2])
    # the next event reuses the id but chains from the anchored (deleted) event
    assert f"event {ids[-2]}: does not follow the previous event" in " ".join(problems)


def test_rollback_leaves_no_gap(crm: FaceCRM) -> None:
    _activity(crm, 2)
    with pytest.raises(RuntimeError), db.transaction(crm.sessions) as session:
        customers.create(session, SYSTEM, {"name": "Rolled back"})
        raise RuntimeError("the action failed")
    ids = _activity(crm, 1)
    assert ids == [1, 2, 3]
    assert crm.verify_audit().ok


def test_concurrent_writers_keep_one_chain(crm: FaceCRM) -> None:
    def work(_: int) -> None:
        for i in range(5):
            with db.transaction(crm.sessions) as session:
                customers.create(session, SYSTEM, {"name": f"Customer {i}"})

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(4)))
    report = crm.verify_audit()
    assert report.ok, report.problems
    assert report.checked == 20


def test_audit_needs_a_sealing_session(crm: FaceCRM) -> None:
    from sqlalchemy.orm import Session

    with Session(crm.engine) as session, pytest.raises(RuntimeError):
        customers.create(session, SYSTEM, {"name": "Unsealed"})


@pytest.mark.parametrize(
    "column, garbage", [("at", "garbage"), ("detail", "{not json"), ("at", "9999-99-99")]
)
def test_a_garbled_row_is_reported_not_a_crash(crm: FaceCRM, column: str, garbage: str) -> None:
    """A value the ORM cannot parse is tampering to report, and the trail stays listable."""
    if crm.engine.dialect.name == "postgresql":
        pytest.skip("PostgreSQL's timestamptz and json columns refuse such values")
    ids = _activity(crm)
    _sql(crm, f"UPDATE audit_events SET {column} = :v WHERE id = :i", v=garbage, i=ids[2])
    _activity(crm, 1)  # an audited write after the tampering
    report = crm.verify_audit()
    assert any(f"event {ids[2]}:" in p and "cannot be read" in p for p in report.problems)
    assert report.checked == len(ids) + 1
    with db.transaction(crm.sessions) as session:
        listed = auditlog.read(session, SYSTEM, "test", limit=100)
    assert [e.id for e in listed][: len(ids) + 1] == [*ids, ids[-1] + 1]
