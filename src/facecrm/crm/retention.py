"""Retention: old visits go, unused templates go, old consents expire. Every purge is audited.

* visits older than `retain_visits_days`;
* templates (and the data key) of customers enrolled but not seen in any store
  for `retain_templates_unseen_months` — they re-enroll if they come back;
* consents given more than `reconfirm_consent_months` ago expire (recorded as
  withdrawn, history kept); an expired recognition consent deletes the templates;
* templates (and photo, data key) of anyone without an active recognition
  consent, whatever the cause, are deleted too;
* audit events older than `retain_audit_days` are pruned, at most once a day and only
  from a chain that verifies (pruning must never destroy the evidence of tampering),
  leaving a sealed checkpoint that anchors the rest (see `auditchain`);
* erasure-log entries older than `backup_retention_days` are forgotten (`erasures`);
* payment sessions that expired more than `pay_retain_sessions_days` ago go (the
  purchases they confirmed stay on the customer);
* alerts older than `retain_alerts_days` go: who claimed each one and how fast the
  customer was greeted is data about staff, kept only as long as running the store needs.

Everything happens in one transaction: a consent never expires without its
templates going with it, even if the process dies half-way.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import delete, exists, func, select, union
from sqlalchemy.orm import Session

from facecrm.crm import audit, auditchain, db, erasures, payments, sync
from facecrm.crm.authz import SYSTEM, Principal
from facecrm.crm.models import (
    Alert,
    AuditEvent,
    Consent,
    CustomerPhoto,
    FaceTemplate,
    Purpose,
    Visit,
)
from facecrm.crm.service import FaceCRM

if TYPE_CHECKING:
    from sqlalchemy import CursorResult

log = logging.getLogger("facecrm.retention")
MONTH = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class PurgeReport:
    visits: int
    unseen_customers: int
    expired_consents: int
    audit_events: int = 0  # pruned from the start of the audit trail
    alerts: int = 0
    erasure_entries: int = 0  # erasure-log entries older than the backups
    pay_sessions: int = 0


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _without_consent(session: Session) -> set[str]:
    """Customers holding a template or kept photo but no active recognition consent."""
    holders = union(select(FaceTemplate.customer_id), select(CustomerPhoto.customer_id)).subquery()
    consenting = exists().where(  # NOT EXISTS, not NOT IN: an anti-join at any size
        Consent.customer_id == holders.c.customer_id,
        Consent.purpose == Purpose.IN_STORE_RECOGNITION,
        Consent.withdrawn_at.is_(None),
    )
    return set(session.scalars(select(holders.c.customer_id).where(~consenting)))


def purge(crm: FaceCRM, principal: Principal, now: datetime | None = None) -> PurgeReport:
    """Apply every retention rule once, audited under `principal` (the operator, or SYSTEM
    for the server's hourly run)."""
    settings = crm.settings
    now = now or datetime.now(UTC)
    visits = expired = pruned = alerts = pay = 0
    unseen: list[str] = []
    audit_cutoff = _audit_cutoff(crm, now)
    with db.transaction(crm.sessions) as session:
        if settings.retain_visits_days:
            cutoff = now - timedelta(days=settings.retain_visits_days)
            deleted = session.execute(delete(Visit).where(Visit.at < cutoff))
            visits = cast("CursorResult[Any]", deleted).rowcount or 0  # a DELETE's result
        if settings.retain_alerts_days:
            cutoff = now - timedelta(days=settings.retain_alerts_days)
            deleted = session.execute(delete(Alert).where(Alert.created_at < cutoff))
            alerts = cast("CursorResult[Any]", deleted).rowcount or 0
        payments.drop_stale_authorisations(session, settings, now)
        if settings.pay_retain_sessions_days:
            pay = payments.purge_sessions(session, settings.pay_retain_sessions_days, now)
        if settings.reconfirm_consent_months:
            cutoff = now - settings.reconfirm_consent_months * MONTH
            stale = session.scalars(
                select(Consent).where(Consent.withdrawn_at.is_(None), Consent.given_at < cutoff)
            ).all()
            for consent in stale:
                consent.withdrawn_at = now
                consent.withdrawn_by, consent.withdrawn_channel = principal.label, "expired"
                expired += 1
            session.flush()
        if settings.retain_templates_unseen_months:
            cutoff = now - settings.retain_templates_unseen_months * MONTH
            enrolled = dict(
                session.execute(
                    select(FaceTemplate.customer_id, func.max(FaceTemplate.created_at)).group_by(
                        FaceTemplate.customer_id
                    )
                ).all()
            )
            seen = dict(
                session.execute(
                    select(Visit.customer_id, func.max(Visit.at))
                    .where(Visit.customer_id.in_(enrolled), Visit.disputed.is_(False))
                    .group_by(Visit.customer_id)
                ).all()
            )
            unseen = [
                customer_id
                for customer_id, newest in enrolled.items()
                if max(_aware(newest), _aware(seen.get(customer_id, newest))) < cutoff
            ]
        if audit_cutoff is not None:
            pruned = _prune_audit(session, principal, audit_cutoff)
        entries = erasures.prune(session, settings, now)
        sync.prune(session, settings.sync_log_days, now)  # older agents sync in full
        if visits or expired or unseen or entries or alerts or pay:
            audit.record(
                session,
                principal,
                "purge",
                visits=visits,
                expired_consents=expired,
                unseen_customers=len(unseen),
                erasure_entries=entries,
                alerts=alerts,
                pay_sessions=pay,
            )
        # expired consents, and whoever else holds templates without consent
        forget = sorted(_without_consent(session) | set(unseen))
        for customer_id in forget:
            crm._forget_face(session, customer_id)
            audit.record(session, principal, "forget_face", customer_id, reason="retention")
    if forget or visits or pay:
        crm.scrub_erased()
    return PurgeReport(visits, len(unseen), expired, pruned, alerts, entries, pay)


def _audit_cutoff(crm: FaceCRM, now: datetime) -> datetime | None:
    """The audit retention cutoff, when a prune is due and the chain verifies.

    Due once the oldest event is a day past the cutoff, so the chain (walked whole by
    the check) is pruned about once a day rather than at every hourly purge. A chain
    that does not verify is left whole for the investigation (docs/privacy.md).
    """
    days = crm.settings.retain_audit_days
    if not days:
        return None
    cutoff = now - timedelta(days=days)
    with crm.sessions() as session:
        oldest = session.scalar(select(func.min(AuditEvent.at)))
    if oldest is None or _aware(oldest) >= cutoff - timedelta(days=1):
        return None
    report = crm.verify_audit()
    if not report.ok:
        log.warning(
            "audit trail not pruned: it does not verify (%d problems); run facecrm audit verify",
            len(report.problems),
        )
        return None
    return cutoff


def _prune_audit(session: Session, principal: Principal, cutoff: datetime) -> int:
    """Delete the audit events older than `cutoff` and seal a checkpoint naming the last
    one (in this transaction: the chain is never left without its anchor)."""
    last = auditchain.prunable(session, cutoff)
    if last is None:
        return 0
    through, sealed = last
    deleted = session.execute(delete(AuditEvent).where(AuditEvent.id <= through))
    count = cast("CursorResult[Any]", deleted).rowcount or 0
    audit.record(
        session,
        principal,
        "audit_checkpoint",  # auditchain.CHECKPOINT, written out for the audit-action table
        through=through,
        hash=sealed,
        events=count,
        before=cutoff.isoformat(),
    )
    return count


def start_scheduler(crm: FaceCRM, stop: threading.Event) -> threading.Thread:
    """Run `purge` every `purge_interval_minutes` until `stop` is set."""

    def loop() -> None:
        while not stop.wait(crm.settings.purge_interval_minutes * 60):
            try:
                report = purge(crm, SYSTEM)
                log.info(
                    "retention purge: %d visits, %d unseen customers, %d consents expired",
                    report.visits,
                    report.unseen_customers,
                    report.expired_consents,
                )
            except Exception:  # the scheduler must survive a failed run
                log.exception("retention purge failed")

    thread = threading.Thread(target=loop, daemon=True, name="retention")
    thread.start()
    return thread
