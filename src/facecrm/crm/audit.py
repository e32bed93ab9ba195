"""The audit trail: every identification, lookup, export, consent change and admin action.

Entries name the principal, the customer (by id) and the store; they never hold
a template, a photo, a customer's name or contact details, or anything about a
face that matched no customer (so erasing a customer leaves nothing personal
in the trail but their random id).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from facecrm.crm import auditchain
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
    """Add an audit event to the session's transaction (it commits with the action).

    The event is inserted and sealed into the hash chain when the transaction
    commits (`auditchain.seal_pending`); a rollback drops it with the action.
    """
    if not session.info.get(auditchain.SEALER):
        raise RuntimeError("audit events need a session of FaceCRM.sessions (it seals them)")
    session.info.setdefault(auditchain.PENDING, []).append(
        AuditEvent(
            actor=principal.label[:100],
            action=action,
            customer_id=customer_id,
            store_id=store_id,
            detail=detail,
            note="",
        )
    )
