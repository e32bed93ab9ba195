"""From agent events to visits and alerts; claiming and acknowledging alerts.

* Events carry the agent's idempotency key: a key this device sent before
  changes nothing (keys are per device: another device's key never suppresses it).
* A customer seen again in the same store within `visit_window_minutes` (by any
  camera of that store) is the same visit: no new visit, no new alert.
* A new visit runs the store's rules; an alert is stored, published to live
  consoles and sent to the store's webhook.
* An alert is about one store and goes to that store's staff, so it is built
  only from that store's activity (visits, interests, feedback, shifts) plus
  the chain-wide profile; another store's activity never leaks into it.
* One event never blocks the ones behind it: a rejected (malformed) event is
  reported and skipped, and a failure while raising the alert keeps the visit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from facecrm.alerts import rules, storeconfig, webhooks
from facecrm.alerts.bus import AlertBus
from facecrm.crm import accounts, activity, audit, db
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.errors import ConflictError, InvalidError, NotFoundError
from facecrm.crm.models import (
    AgentEvent,
    Alert,
    Customer,
    Feedback,
    Interest,
    Shift,
    StaffUser,
    StoreConfig,
    Visit,
    utcnow,
)
from facecrm.crm.service import FaceCRM
from facecrm.metrics import Registry

log = logging.getLogger("facecrm.alerts")
_UNAVAILABLE = (OperationalError, InterfaceError)  # the database, not the event: retry later


@dataclass(frozen=True, slots=True)
class VisitEvent:
    key: str
    customer_id: str
    at: datetime
    camera: str
    similarity: float


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class AlertView:
    """An alert as staff see it (the API's `AlertOut`, the live streams' payload)."""

    id: int
    store_id: str
    customer_id: str
    customer_name: str | None
    rule: str
    message: str
    assignee_id: str | None
    created_at: datetime
    claimed_by: str | None
    claimed_at: datetime | None
    acknowledged_at: datetime | None
    time_to_greet_s: float | None = None  # set once acknowledged

    @classmethod
    def of(
        cls, a: Alert, customer_name: str | None = None, greeted: float | None = None
    ) -> AlertView:
        return cls(
            a.id,
            a.store_id,
            a.customer_id,
            customer_name,
            a.rule,
            a.message,
            a.assignee_id,
            a.created_at,
            a.claimed_by,
            a.claimed_at,
            a.acknowledged_at,
            greeted,
        )

    def payload(self) -> dict[str, object]:
        """JSON-ready, for live streams and webhooks."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.time_to_greet_s is None:
            del data["time_to_greet_s"]
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in data.items()}


@dataclass(frozen=True, slots=True)
class StoreConfigView:
    """A store's rule overrides (`rules.model_dump(exclude_unset=True)` is what was set)
    and its webhook URL; never the webhook's secret."""

    store_id: str
    rules: rules.RuleSettings
    webhook_url: str | None


class AlertService:
    """Visit ingestion and alert handling over a `FaceCRM`'s database."""

    def __init__(
        self, crm: FaceCRM, bus: AlertBus | None = None, metrics: Registry | None = None
    ) -> None:
        self.crm = crm
        self.bus = bus or AlertBus()
        self.metrics = metrics or Registry()

    def ingest(self, device: Principal, events: Sequence[VisitEvent | None]) -> list[str]:
        """Apply events in order; each one's outcome: visit, same_visit, duplicate, ignored,
        or rejected (None: an event the caller could not parse; or one that failed here).

        A database outage still fails the whole batch (the agent retries it; applied keys
        are duplicates then); anything else about one event is that event's outcome only.
        """
        device.require(Permission.AGENT)
        store_id = next(iter(device.stores or []), None)
        if store_id is None:
            raise ConflictError("the device has no store")
        outcomes = []
        for index, event in enumerate(events):
            published: list[tuple[str, dict[str, object]]] = []
            if event is None:
                outcome = "rejected"
            else:
                try:
                    outcome = self._ingest_one(device, store_id, event, published)
                except _UNAVAILABLE:
                    raise
                except Exception as exc:  # one poisoned event must not stall
                    log.warning("visit event %d rejected: %s", index, type(exc).__name__)
                    published.clear()
                    outcome = "rejected"
            outcomes.append(outcome)
            self.metrics.inc(
                "facecrm_agent_events_total",
                outcome=outcome,
                help="visit events received from agents",
            )
            for store, payload in published:  # only once committed
                self._publish(store, payload)
        return outcomes

    def _ingest_one(
        self,
        device: Principal,
        store_id: str,
        event: VisitEvent,
        published: list[tuple[str, dict[str, object]]],
    ) -> str:
        try:
            with db.transaction(self.crm.sessions) as session:
                if session.get(AgentEvent, (device.id, event.key)) is not None:
                    return "duplicate"
                outcome = self._apply(session, device, store_id, event, published)
                session.add(AgentEvent(key=event.key, device_id=device.id, outcome=outcome))
                session.flush()
                return outcome
        except IntegrityError:  # the same key delivered twice at once
            published.clear()
            return "duplicate"
        except InvalidError:  # e.g. dated in the future: nothing stored, never retried
            published.clear()
            return "rejected"

    def _apply(
        self,
        session: Session,
        device: Principal,
        store_id: str,
        event: VisitEvent,
        published: list[tuple[str, dict[str, object]]],
    ) -> str:
        customer = session.get(Customer, event.customer_id)
        if customer is None:
            return "ignored"  # erased between the agent's decision and delivery
        at = _aware(event.at)
        window = timedelta(minutes=self.crm.settings.visit_window_minutes)
        previous = session.scalars(
            select(Visit)
            .where(Visit.customer_id == customer.id, Visit.store_id == store_id)
            .order_by(Visit.at.desc())
            .limit(1)
        ).first()
        if previous is not None and at - _aware(previous.at) < window:
            return "same_visit"
        visit = activity.record_visit(
            session, device, customer.id, store_id, "agent", event.similarity, at
        )
        previous_at = _aware(previous.at) if previous is not None else None
        # Evaluation only reads; whatever goes wrong in it costs the alert, never the visit.
        # (No savepoint: releasing one would fire the audit seal before the visit commits.)
        try:
            draft = rules.evaluate(
                self._context(session, customer, store_id, at, previous_at),
                self._rules(session, store_id),
            )
        except _UNAVAILABLE:
            raise
        except Exception as exc:  # a broken rule must not lose the visit
            log.warning("store %s: no alert, the visit is kept (%s)", store_id, type(exc).__name__)
            self.metrics.inc("facecrm_alert_failures_total", help="alerts that failed to be raised")
            draft = None
        if draft is not None:
            alert = Alert(
                store_id=store_id,
                customer_id=customer.id,
                visit_id=visit.id,
                rule=",".join(draft.rules),  # every name fits: see migration 0007
                message=draft.message,
                assignee_id=draft.assignee_id,
            )
            session.add(alert)
            session.flush()
            audit.record(session, device, "alert", customer.id, store_id, rules=list(draft.rules))
            published.append((store_id, AlertView.of(alert, customer.name).payload()))
        return "visit"

    def _context(
        self,
        session: Session,
        customer: Customer,
        store_id: str,
        at: datetime,
        previous: datetime | None,
    ) -> rules.VisitContext:
        """The customer's profile plus this store's activity only (see the module doc)."""
        wanted = session.execute(
            select(Interest.product, Interest.out_of_stock)
            .where(
                Interest.customer_id == customer.id,
                Interest.store_id == store_id,
                Interest.resolved.is_(False),
            )
            .order_by(Interest.id)
        ).all()
        feedback = session.scalars(
            select(Feedback.text)
            .where(
                Feedback.customer_id == customer.id,
                Feedback.store_id == store_id,
                Feedback.resolved.is_(False),
            )
            .order_by(Feedback.id)
        ).all()
        advisor = None
        if customer.preferred_advisor_id:
            on_shift = session.scalar(
                select(Shift.id).where(
                    Shift.staff_id == customer.preferred_advisor_id,
                    Shift.store_id == store_id,
                    Shift.ended_at.is_(None),
                )
            )
            advisor = session.get(StaffUser, customer.preferred_advisor_id) if on_shift else None
        return rules.VisitContext(
            name=customer.preferred_name or customer.name,
            tier=customer.tier,
            at=at,
            previous_visit=previous,
            wanted=[(p, bool(o)) for p, o in wanted],
            open_feedback=[f or "(no text)" for f in feedback],
            advisor_on_shift=advisor.id if advisor else None,
            advisor_name=advisor.display_name if advisor else None,
        )

    def _rules(self, session: Session, store_id: str) -> rules.RuleSettings:
        """The store's rules; a row written before validation never breaks a visit.

        The column is read as text and parsed here, so even malformed JSON only
        falls back to the defaults (and is logged, without the stored values).
        """
        settings, problems = storeconfig.rules_in_force(session, store_id)
        for problem in problems:
            log.warning("store %s: invalid alert rule setting: %s", store_id, problem)
        return settings

    def _publish(self, store_id: str, payload: dict[str, object]) -> None:
        self.bus.publish(store_id, {"type": "alert", **payload})
        self.metrics.inc("facecrm_alerts_sent_total", help="alerts raised and published")
        with self.crm.sessions() as session:
            hook = session.execute(
                select(StoreConfig.webhook_url, StoreConfig.webhook_secret).where(
                    StoreConfig.store_id == store_id
                )
            ).first()
        if hook is not None and hook.webhook_url and hook.webhook_secret:
            policy = webhooks.Policy.from_settings(self.crm.settings)
            log_it = storeconfig.recorder(self.crm.sessions, store_id, f"alert:{payload['id']}")
            webhooks.deliver(hook.webhook_url, hook.webhook_secret, payload, policy, report=log_it)

    # -- staff side ------------------------------------------------------------------

    def open_alerts(self, principal: Principal, limit: int = 50) -> list[AlertView]:
        principal.require(Permission.ALERTS)
        with self.crm.sessions() as session:
            stmt = (
                select(Alert, Customer.name)
                .join(Customer, Customer.id == Alert.customer_id)
                .where(Alert.acknowledged_at.is_(None))
                .order_by(Alert.created_at.desc())
                .limit(limit)
            )
            if principal.stores is not None:
                stmt = stmt.where(Alert.store_id.in_(principal.stores))
            return [AlertView.of(a, name) for a, name in session.execute(stmt)]

    def claim(self, principal: Principal, alert_id: int) -> AlertView:
        principal.require(Permission.ALERTS)
        with db.transaction(self.crm.sessions) as session:
            alert = self._alert(session, principal, alert_id)
            if alert.claimed_by is not None and alert.claimed_by != principal.id:
                raise ConflictError("another staff member has claimed this alert")
            alert.claimed_by, alert.claimed_at = principal.id, alert.claimed_at or utcnow()
            audit.record(session, principal, "alert_claim", alert.customer_id, alert.store_id)
            view = AlertView.of(alert)
        self.bus.publish(view.store_id, {"type": "claimed", **view.payload()})
        return view

    def acknowledge(self, principal: Principal, alert_id: int) -> AlertView:
        """The customer has been greeted: records the time to greet."""
        principal.require(Permission.ALERTS)
        with db.transaction(self.crm.sessions) as session:
            alert = self._alert(session, principal, alert_id)
            alert.acknowledged_at = alert.acknowledged_at or utcnow()
            alert.claimed_by = alert.claimed_by or principal.id
            alert.claimed_at = alert.claimed_at or alert.acknowledged_at
            seconds = (alert.acknowledged_at - _aware(alert.created_at)).total_seconds()
            audit.record(
                session,
                principal,
                "alert_ack",
                alert.customer_id,
                alert.store_id,
                time_to_greet_s=round(seconds, 1),
            )
            view = AlertView.of(alert, greeted=round(seconds, 1))
        self.bus.publish(view.store_id, {"type": "acknowledged", **view.payload()})
        return view

    def _alert(self, session: Session, principal: Principal, alert_id: int) -> Alert:
        alert = session.get(Alert, alert_id)
        if alert is None or not principal.may_act_in(alert.store_id):
            raise NotFoundError(f"no alert with id {alert_id}")
        return alert

    # -- shifts and store rules ------------------------------------------------------

    def start_shift(self, principal: Principal, store_id: str) -> Shift:
        principal.require(Permission.ALERTS)
        principal.require_store(store_id)
        with db.transaction(self.crm.sessions) as session:
            accounts.get_store(session, store_id)
            shift = Shift(staff_id=principal.id, store_id=store_id)
            session.add(shift)
            session.flush()
            audit.record(session, principal, "shift_start", None, store_id)
            return shift

    def end_shift(self, principal: Principal, store_id: str) -> None:
        principal.require(Permission.ALERTS)
        principal.require_store(store_id)  # like starting one: 403, not a silent 204
        with db.transaction(self.crm.sessions) as session:
            open_shifts = session.scalars(
                select(Shift).where(
                    Shift.staff_id == principal.id,
                    Shift.store_id == store_id,
                    Shift.ended_at.is_(None),
                )
            )
            for shift in open_shifts:
                shift.ended_at = utcnow()
            audit.record(session, principal, "shift_end", None, store_id)

    def configure_store(
        self,
        principal: Principal,
        store_id: str,
        rule_settings: rules.RuleSettings | dict[str, object],
        webhook_url: str | None,
        webhook_secret: str | None,
    ) -> StoreConfigView:
        """Set the store's rule overrides and signed webhook; all checked before any write.

        Bad rules and a URL the server must not call (`webhooks.WebhookRefused`, with a
        reason) are `InvalidError`s: nothing is written.
        """
        principal.require(Permission.DEVICES_MANAGE)
        principal.require_store(store_id)
        if not isinstance(rule_settings, rules.RuleSettings):
            rule_settings = rules.checked(rule_settings)
        overrides = rule_settings.model_dump(mode="json", exclude_unset=True)
        if (webhook_url is None) != (webhook_secret is None):
            raise InvalidError("a webhook needs both a URL and a secret")
        if webhook_url is not None:
            webhooks.check_url(webhook_url, webhooks.Policy.from_settings(self.crm.settings))
        values = {"rules": overrides, "webhook_url": webhook_url, "webhook_secret": webhook_secret}
        with db.transaction(self.crm.sessions) as session:
            accounts.get_store(session, store_id)
            storeconfig.write(session, store_id, **values)
            audit.record(session, principal, "store_config", None, store_id)
        return StoreConfigView(store_id, rule_settings, webhook_url)
