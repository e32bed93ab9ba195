"""The tamper-evident audit trail: an HMAC chain over every audit event.

Events are written in the transaction of the action they record, then sealed
right after it commits: in id order, each event's `hash` is
HMAC-SHA256(key, prev_hash + canonical content), with a key derived from the
server secret, so someone who can only write to the database cannot forge a
consistent chain. The newest sealed hash is also kept beside the database
(`audit-head.json`), so truncating the tail or rewriting the whole table shows
too. `verify()` reports every altered, inserted or deleted event.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from facecrm.crm.models import AuditEvent

_seal_lock = threading.Lock()
GENESIS = "0" * 64


def canonical(event: AuditEvent) -> bytes:
    at = event.at.isoformat() if isinstance(event.at, datetime) else str(event.at)
    content = {
        "id": event.id,
        "at": at,
        "actor": event.actor,
        "store_id": event.store_id,
        "action": event.action,
        "customer_id": event.customer_id,
        "detail": event.detail,
        "note": event.note,
    }
    return json.dumps(content, sort_keys=True, separators=(",", ":"), default=str).encode()


def link(key: bytes, prev_hash: str, event: AuditEvent) -> str:
    return hmac.new(key, prev_hash.encode() + canonical(event), hashlib.sha256).hexdigest()


def seal(sessions: sessionmaker[Session], key: bytes, head: Path | None = None) -> int:
    """Chain every unsealed event; returns how many were sealed."""
    with _seal_lock, sessions() as session, session.begin():
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(7354201)"))
        last = session.scalars(
            select(AuditEvent).where(AuditEvent.hash.is_not(None)).order_by(AuditEvent.id.desc())
        ).first()
        prev = last.hash if last is not None and last.hash else GENESIS
        pending = session.scalars(
            select(AuditEvent).where(AuditEvent.hash.is_(None)).order_by(AuditEvent.id)
        ).all()
        for event in pending:
            event.prev_hash = prev
            event.hash = prev = link(key, prev, event)
            last = event
        if pending and head is not None and last is not None:
            head.parent.mkdir(parents=True, exist_ok=True)
            tmp = head.with_suffix(".tmp")
            tmp.write_text(json.dumps({"id": last.id, "hash": last.hash}))
            tmp.replace(head)
        return len(pending)


@dataclass
class Report:
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(sessions: sessionmaker[Session], key: bytes, head: Path | None = None) -> Report:
    """Walk the chain; every altered, inserted or deleted event becomes a problem."""
    report = Report()
    prev, last = GENESIS, None
    with sessions() as session:
        for event in session.scalars(select(AuditEvent).order_by(AuditEvent.id)).yield_per(1000):
            report.checked += 1
            if event.hash is None:
                report.problems.append(f"event {event.id}: not sealed")
                continue
            if event.prev_hash != prev:
                report.problems.append(
                    f"event {event.id}: does not follow the previous event "
                    "(an event before it was deleted or inserted)"
                )
            elif event.hash != link(key, prev, event):
                report.problems.append(f"event {event.id}: content altered")
            prev, last = event.hash, event
    if head is not None and head.is_file():
        anchor = json.loads(head.read_text())
        if last is None or last.id != anchor["id"] or last.hash != anchor["hash"]:
            found = f"event {last.id}" if last is not None else "no event"
            report.problems.append(
                f"the newest event should be {anchor['id']} but is {found}: "
                "events were deleted from the end or the table was rewritten"
            )
    return report
