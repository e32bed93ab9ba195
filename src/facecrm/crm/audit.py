"""The audit trail: every identification, lookup, export, consent change and admin action.

Entries name the principal, the customer (by id) and the store; they never hold
a template, a photo, or anything about a face that matched no customer.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from facecrm.crm.authz import Principal
from facecrm.crm.models import AuditEvent


def record(
    session: Session,
    principal: Principal,
    action: str,
    customer_id: str | None = None,
    store_id: str | None = None,
    **detail: object,
) -> None:
    """Add an audit event to the session's transaction (it commits with the action)."""
    session.info["audited"] = True  # sealed into the hash chain after the commit
    session.add(
        AuditEvent(
            actor=principal.label[:100],
            action=action,
            customer_id=customer_id,
            store_id=store_id,
            detail=detail,
        )
    )
