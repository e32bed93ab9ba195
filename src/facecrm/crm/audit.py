"""The audit trail: every identification, lookup, export, consent change and admin action.

Entries name the principal, the customer (by id) and the store; they never hold
a template, a photo, a customer's name or contact details, or anything about a
face that matched no customer (so erasing a customer leaves nothing personal
in the trail but their random id).
"""

from __future__ import annotations

import hashlib
import hmac

from sqlalchemy.orm import Session

from facecrm.crm import auditchain
from facecrm.crm.authz import Principal
from facecrm.crm.models import AuditEvent

QUERY_KEY_PURPOSE = "audit-query"  # `keys.derived_key` purpose of `fingerprint`'s key


def normalise(text: str) -> str:
    """What a search means, whatever the spacing and case it was typed with."""
    return " ".join(text.split()).casefold()


def fingerprint(session: Session, text: str) -> str:
    """A keyed fingerprint of free text someone searched for, to audit instead of the text.

    A search is often a name or an e-mail address, and a sealed audit event can never be
    redacted: the text itself would outlive the customer's erasure. The fingerprint
    (HMAC-SHA256 under a key derived from the server secret, 128 bits) lets an auditor
    check whether a given text was searched (`facecrm audit fingerprint TEXT`), while
    someone holding only the database cannot test guesses against it.
    """
    key = session.info.get(auditchain.QUERY_KEY)
    if not isinstance(key, bytes):
        raise RuntimeError("audit fingerprints need a session of FaceCRM.sessions")
    return hmac.new(key, normalise(text).encode(), hashlib.sha256).hexdigest()[:32]


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
