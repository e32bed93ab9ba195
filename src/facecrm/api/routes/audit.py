"""The audit trail for auditors and administrators."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from facecrm.api.deps import Auditor, CrmDep, SessionDep
from facecrm.api.schemas import PROBLEMS, AuditEventOut, AuditReportOut, Instant
from facecrm.crm import auditlog

router = APIRouter(tags=["audit"], responses=PROBLEMS)


@router.get("/audit", response_model=list[AuditEventOut])
def list_audit(
    session: SessionDep,
    principal: Auditor,
    customer_id: Annotated[str | None, Query(max_length=32)] = None,
    action: Annotated[str | None, Query(max_length=60)] = None,
    since: Instant | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[AuditEventOut]:
    """Audit events, oldest first (reading the trail is itself audited)."""
    rows = auditlog.read(session, principal, "api", customer_id, action, since, limit, offset)
    return [AuditEventOut.model_validate(e) for e in rows]


@router.get("/audit/verify", response_model=AuditReportOut)
def verify_audit(crm: CrmDep, principal: Auditor) -> AuditReportOut:
    """Check the hash chain; lists every altered, inserted or deleted event."""
    return AuditReportOut.model_validate(crm.verify_audit())
