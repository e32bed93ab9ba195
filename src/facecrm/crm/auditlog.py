"""Reading the audit trail (for auditors: API, console, export)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from facecrm.crm import audit
from facecrm.crm.auditchain import StoredEvent, stored_events
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.models import AuditEvent


def events(
    session: Session,
    customer_id: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    limit: int | None = 200,
    offset: int = 0,
) -> Sequence[StoredEvent]:
    """Audit events, oldest first, filtered (a garbled row is listed, never a crash)."""
    stmt = select(AuditEvent).order_by(AuditEvent.id).offset(offset)
    if limit is not None:
        stmt = stmt.limit(limit)
    if customer_id is not None:
        stmt = stmt.where(AuditEvent.customer_id == customer_id)
    if action is not None:
        stmt = stmt.where(AuditEvent.action == action)
    if since is not None:
        stmt = stmt.where(AuditEvent.at >= since)
    return stored_events(session, stmt)


def count(session: Session) -> int:
    """How many events the trail holds (a COUNT, not a load: the trail only grows)."""
    return int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def read(
    session: Session,
    principal: Principal,
    channel: str,
    customer_id: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    limit: int = 200,
    offset: int = 0,
) -> list[StoredEvent]:
    """Audit events for an auditor or admin; reading the trail is itself audited (here, so
    that every page or route that shows the trail is)."""
    principal.require(Permission.AUDIT_READ)
    rows = list(events(session, customer_id, action, since, limit, offset))
    audit.record(session, principal, "audit_read", customer_id, results=len(rows), channel=channel)
    return rows


def latest(
    session: Session, principal: Principal, channel: str, limit: int = 200
) -> list[StoredEvent]:
    """The newest `limit` events, newest first (the console's page); audited like `read`."""
    offset = max(0, count(session) - limit)
    return read(session, principal, channel, limit=limit, offset=offset)[::-1]


def event_dict(e: StoredEvent) -> dict[str, object]:
    """An event as JSON-ready data, for the CLI's `--json` (the API shapes `AuditEventOut`)."""
    return {
        "id": e.id,
        "at": e.at if isinstance(e.at, str) else e.at.isoformat(),
        "actor": e.actor,
        "store_id": e.store_id,
        "action": e.action,
        "customer_id": e.customer_id,
        "detail": e.detail,
        "note": e.note,
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    }
