"""The audit trail for auditors and administrators."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from facecrm.api.deps import allow, get_crm
from facecrm.api.schemas import Instant
from facecrm.crm import auditlog, db
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.service import FaceCRM

router = APIRouter(tags=["audit"])
Auditor = Depends(allow(Permission.AUDIT_READ))


@router.get("/audit")
def list_audit(
    customer_id: Annotated[str | None, Query(max_length=32)] = None,
    action: Annotated[str | None, Query(max_length=60)] = None,
    since: Instant | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Auditor,
) -> list[dict[str, object]]:
    """Audit events, oldest first (reading the trail is itself audited)."""
    with db.transaction(crm.sessions) as session:
        return auditlog.read(session, principal, "api", customer_id, action, since, limit, offset)


@router.get("/audit/verify")
def verify_audit(
    crm: FaceCRM = Depends(get_crm), principal: Principal = Auditor
) -> dict[str, object]:
    """Check the hash chain; lists every altered, inserted or deleted event."""
    report = crm.verify_audit()
    return {"ok": report.ok, "checked": report.checked, "problems": report.problems}
