"""The tamper-evident audit trail: an HMAC chain over every audit event.

Each event's `hash` is HMAC-SHA256(key, prev_hash + canonical content), with a
key derived from the server secret, so someone who can only write to the
database cannot forge a consistent chain.

Sealing happens *inside* the transaction that records the events, at commit
(`seal_pending`, a `before_commit` hook of `FaceCRM.sessions`): under a lock
that orders every audited commit (PostgreSQL: an advisory transaction lock;
SQLite: the database's single write lock), the events get the next ids, the
commit time, and their hashes, and are inserted. So:

* only the events the sealing transaction wrote itself are ever sealed: a row
  whose hash was removed, or that was inserted without one, stays unsealed and
  `verify` reports it (there is no legitimate unsealed row: events and hashes
  commit together, and a crash before the commit loses both);
* ids are allocated as max(id)+1 under that lock, never from a sequence, so a
  rolled-back transaction burns no id (on PostgreSQL a sequence would, making
  gaps ambiguous): every gap is a deletion;
* chain order is id order and `at` never decreases along it.

Retention (`prune`, run by `crm.retention.purge`) deletes a prefix of the chain and
records, in the same transaction, a sealed `audit_checkpoint` event naming the last
pruned id and its hash: `verify` starts from the newest checkpoint, so the kept events
still verify, and deleting more of the start than a checkpoint names is reported.

The newest sealed event is also kept beside the database (`audit-head.json`).
`verify` uses it to show deletions at the end; the sealer uses it too: if the
anchored event is gone or changed, new events chain from the anchored hash, so
a truncation stays visible after later writes instead of being papered over.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import String, Text, func, select, text, type_coerce
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Select

from facecrm import private
from facecrm.crm.models import AuditEvent

GENESIS = "0" * 64
CHECKPOINT = "audit_checkpoint"  # the action of the event that anchors a pruned chain
PENDING = "audit_pending"  # session.info: events recorded, not yet sealed
SEALER = "audit_sealer"  # session.info: this session's factory seals at commit
QUERY_KEY = "audit_query_key"  # session.info: the key of `audit.fingerprint`
_SEALED = "audit_sealed"  # session.info: (id, hash) of the newest event sealed
_ADVISORY_LOCK = 7354201
# clocks of several PostgreSQL clients (or an NTP step) may disagree a little;
# a back-dated event is off by far more than this
CLOCK_SKEW = timedelta(seconds=5)
_head_lock = threading.Lock()


def _utc(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is not None:  # SQLite hands back naive UTC, PostgreSQL aware
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat()


def canonical(event: AuditEvent | StoredEvent) -> bytes:
    content = {
        "id": event.id,
        "at": _utc(event.at),
        "actor": event.actor,
        "store_id": event.store_id,
        "action": event.action,
        "customer_id": event.customer_id,
        "detail": event.detail,
        "note": event.note,
    }
    return json.dumps(content, sort_keys=True, separators=(",", ":"), default=str).encode()


def link(key: bytes, prev_hash: str, event: AuditEvent | StoredEvent) -> str:
    return hmac.new(key, prev_hash.encode() + canonical(event), hashlib.sha256).hexdigest()


def _read_head(head: Path | None) -> tuple[int, str] | None:
    if head is None or not head.is_file():
        return None
    anchor = json.loads(head.read_text())
    return int(anchor["id"]), str(anchor["hash"])


def _lock_chain(session: Session) -> None:
    """Order audited commits: whoever holds this lock appends next."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK})"))
    else:
        # a write statement takes SQLite's write lock (held to the commit) before the
        # chain's end is read; it changes nothing
        session.execute(text("UPDATE audit_events SET id = id WHERE 0 = 1"))


def seal_pending(session: Session, key: bytes, head: Path | None) -> None:
    """Append the events this transaction recorded to the chain (runs at its commit)."""
    events: list[AuditEvent] = session.info.pop(PENDING, [])
    if not events:
        return
    _lock_chain(session)
    last_id = session.scalar(select(func.max(AuditEvent.id))) or 0
    prev = session.scalar(
        select(AuditEvent.hash)
        .where(AuditEvent.hash.is_not(None))
        .order_by(AuditEvent.id.desc())
        .limit(1)
    )
    prev = prev or GENESIS
    anchor = _read_head(head)
    if anchor is not None:
        anchored = session.scalar(select(AuditEvent.hash).where(AuditEvent.id == anchor[0]))
        if anchored != anchor[1]:
            prev = anchor[1]  # the anchored event was deleted or changed: keep the break
    now = datetime.now(UTC)
    for offset, event in enumerate(events, start=1):
        event.id = last_id + offset
        event.at = now
        event.prev_hash = prev
        event.hash = prev = link(key, prev, event)
    session.add_all(events)
    session.info[_SEALED] = (events[-1].id, events[-1].hash)


@contextmanager
def _process_lock(head: Path) -> Iterator[None]:
    """Several server processes may share the data directory (`serve --workers`): the
    read-compare-replace of the head file is one at a time across them too."""
    fd = os.open(head.with_name(head.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor is closed
        yield
    finally:
        os.close(fd)


def write_head(session: Session, head: Path | None) -> None:
    """After the commit: move `audit-head.json` forward to the newest sealed event."""
    sealed = session.info.pop(_SEALED, None)
    if sealed is None or head is None:
        return
    with _head_lock, _process_lock(head):
        current = _read_head(head)
        if current is not None and current[0] >= sealed[0]:
            return  # another transaction already sealed a newer event
        private.write_file(head, json.dumps({"id": sealed[0], "hash": sealed[1]}).encode())


def forget_pending(session: Session) -> None:
    """After a rollback: nothing was sealed."""
    session.info.pop(PENDING, None)
    session.info.pop(_SEALED, None)


def install(
    sessions: sessionmaker[Session], key: bytes, head: Path | None, query_key: bytes
) -> None:
    """Make every session of `sessions` seal its audit events at commit."""
    from sqlalchemy import event

    info = sessions.kw.setdefault("info", {})
    info[SEALER] = True
    info[QUERY_KEY] = query_key
    event.listen(sessions, "before_commit", lambda s: seal_pending(s, key, head))
    event.listen(sessions, "after_commit", lambda s: write_head(s, head))
    event.listen(
        sessions,
        "after_soft_rollback",
        lambda s, t: forget_pending(s) if t.parent is None else None,
    )


@dataclass
class StoredEvent:
    """An audit row as stored, read without trusting it.

    `at` and `detail` are parsed here rather than by the ORM, so that a row someone
    garbled in the database (`at = 'garbage'`, `detail = '{not json'`) is reported
    as tampering instead of crashing `verify` and every page listing the trail;
    `unreadable` says what could not be parsed (the raw text is kept in its place).
    """

    id: int
    at: datetime | str
    actor: str
    store_id: str | None
    action: str
    customer_id: str | None
    detail: object
    note: str
    prev_hash: str | None
    hash: str | None
    unreadable: str | None = None


def stored_events(session: Session, stmt: Select[AuditEvent]) -> list[StoredEvent]:
    """The rows `stmt` selects (its filters, order, limit), as `StoredEvent`s."""
    c = AuditEvent.__table__.c
    raw = stmt.with_only_columns(
        c.id,
        type_coerce(c.at, String),
        c.actor,
        c.store_id,
        c.action,
        c.customer_id,
        type_coerce(c.detail, Text),
        c.note,
        c.prev_hash,
        c.hash,
    )
    return [_parse(row) for row in session.execute(raw)]


def _parse(row: tuple[object, ...]) -> StoredEvent:
    event_id, at, actor, store, action, customer, detail, note, prev, sealed = row
    problems = []
    if isinstance(at, str):  # SQLite: text in UTC; PostgreSQL hands back a datetime
        try:
            at = datetime.fromisoformat(at).replace(tzinfo=UTC)
        except ValueError:
            problems.append("time")
    if isinstance(detail, str):
        try:
            detail = json.loads(detail)
        except ValueError:
            problems.append("detail")
    return StoredEvent(
        int(event_id),  # type: ignore[call-overload]
        at,  # type: ignore[arg-type]
        str(actor),
        store,  # type: ignore[arg-type]
        str(action),
        customer,  # type: ignore[arg-type]
        detail,
        str(note or ""),
        prev,  # type: ignore[arg-type]
        sealed,  # type: ignore[arg-type]
        " and ".join(problems) or None,
    )


@dataclass
class Report:
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(sessions: sessionmaker[Session], key: bytes, head: Path | None = None) -> Report:
    """Walk the chain in id order; every sign of tampering becomes a problem.

    Reported: unsealed events (none exist legitimately, see the module doc), gaps
    in the ids (deletions), `at` going backwards (back-dating), events that do not
    follow their predecessor (deleted or inserted events), altered content, and an
    anchored newest event that is gone or changed (deletions at the end).
    """
    report = Report()
    prev_hash, prev_id, prev_at = GENESIS, 0, None
    anchor = _read_head(head)
    anchor_seen = False
    with sessions() as session:
        checkpoint = newest_checkpoint(session)
        if checkpoint is not None:  # the chain was pruned up to here (its event is checked)
            prev_id, prev_hash = checkpoint
        for event in _all_events(session):
            report.checked += 1
            if checkpoint is not None and event.id <= checkpoint[0]:
                report.problems.append(
                    f"event {event.id}: older than the audit checkpoint that pruned it"
                )
                continue
            if event.id != prev_id + 1:
                missing = (
                    f"{prev_id + 1}"
                    if event.id == prev_id + 2
                    else f"{prev_id + 1}..{event.id - 1}"
                )
                report.problems.append(f"events {missing}: missing (deleted)")
            if event.unreadable is not None:
                report.problems.append(
                    f"event {event.id}: its {event.unreadable} cannot be read "
                    "(garbled in the database)"
                )
                prev_id, prev_hash = event.id, event.hash or prev_hash
                continue
            at = datetime.fromisoformat(_utc(event.at))
            if prev_at is not None and at < prev_at - CLOCK_SKEW:
                report.problems.append(
                    f"event {event.id}: dated {at.isoformat()} before the event before it "
                    f"({prev_at.isoformat()}): out of order (back-dated?)"
                )
            prev_id, prev_at = event.id, at
            if anchor is not None and event.id == anchor[0]:
                anchor_seen = event.hash == anchor[1]
            if event.hash is None:
                report.problems.append(
                    f"event {event.id}: not sealed (written outside the audit trail, "
                    "or its seal was removed)"
                )
                continue
            if event.prev_hash != prev_hash:
                report.problems.append(
                    f"event {event.id}: does not follow the previous event "
                    "(an event before it was deleted, inserted or unsealed)"
                )
            if event.hash != link(key, event.prev_hash or "", event):
                report.problems.append(f"event {event.id}: content altered")
            prev_hash = event.hash
    if anchor is not None and not anchor_seen:
        report.problems.append(
            f"event {anchor[0]}, the newest sealed one, is missing or changed: "
            "events were deleted from the end or the table was rewritten"
        )
    return report


def newest_checkpoint(session: Session) -> tuple[int, str] | None:
    """(last pruned id, its hash) of the newest checkpoint event, if the chain was pruned.

    Taken on trust here; the checkpoint is itself a sealed event of the kept chain, so
    `verify` reports it if it was forged or altered.
    """
    stmt = select(AuditEvent).where(AuditEvent.action == CHECKPOINT)
    best: tuple[int, str] | None = None
    for event in stored_events(session, stmt):
        detail = event.detail if isinstance(event.detail, dict) else {}
        through, sealed = detail.get("through"), detail.get("hash")
        if not isinstance(through, int) or not isinstance(sealed, str):
            continue
        if best is None or through > best[0]:
            best = (through, sealed)
    return best


def prunable(session: Session, cutoff: datetime) -> tuple[int, str] | None:
    """(id, hash) of the last event of the prefix older than `cutoff`, if any.

    The newest event is always kept: the next one chains from it, and ids must not
    start again at 1.
    """
    newest = session.scalar(select(func.max(AuditEvent.id)))
    through = session.scalar(select(func.max(AuditEvent.id)).where(AuditEvent.at < cutoff))
    if newest is None or through is None:
        return None
    through = min(through, newest - 1)
    sealed = session.scalar(select(AuditEvent.hash).where(AuditEvent.id == through))
    return None if sealed is None else (through, sealed)


def _all_events(session: Session, batch: int = 1000) -> Iterator[StoredEvent]:
    """Every event in id order, a batch at a time (the trail only grows)."""
    after = -1
    while True:
        stmt = select(AuditEvent).where(AuditEvent.id > after).order_by(AuditEvent.id)
        rows = stored_events(session, stmt.limit(batch))
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1].id
