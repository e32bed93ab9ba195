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
* One alert per customer and visit, and none for `alert_cooldown_minutes` after the
  last one in that store (a long stay that becomes a second visit does not alert again).
* A disputed visit ("not this person", `crm.disputes`) still makes later sightings in
  the window the same visit (the look-alike is still in the store), but it is no visit of
  the customer's for the rules: neither their last visit nor one of their visit count.
* Staff close an alert as greeted, dismissed or disputed; closed alerts are the history.
* `raise_alert` is the API for alerts that are not about an arrival; a silent camera's
  (`alerts.cameras`) is stored with `add_alert` in the transaction that notices it, and
  closed as `resolved` when its frames return. Some kinds are for some roles only
  (`AUDIENCE`: camera alerts go to the store's managers and admins): the others neither
  list, stream nor act on them.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from facecrm.alerts import rules, storeconfig, webhooks
from facecrm.alerts.bus import AlertBus
from facecrm.crm import accounts, activity, audit, db, disputes
from facecrm.crm.authz import SYSTEM, Permission, Principal
from facecrm.crm.errors import ConflictError, InvalidError, NotFoundError
from facecrm.crm.models import (
    AgentEvent,
    Alert,
    AlertOutcome,
    Customer,
    CustomerPhoto,
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


# alert kinds only some roles receive (the others never see them): kind -> roles
AUDIENCE: dict[str, tuple[str, ...]] = {
    "camera_silent": ("admin", "manager"),
    "payment_locked": ("admin", "manager"),  # face checkout (crm.payflow): a security matter
}


def hidden_kinds(principal: Principal) -> list[str]:
    """The alert kinds this principal's role does not receive."""
    return [kind for kind, roles in AUDIENCE.items() if principal.role not in roles]


@dataclass(frozen=True, slots=True)
class AlertView:
    """An alert as staff see it (the API's `AlertOut`, the live streams' payload)."""

    id: int
    store_id: str
    customer_id: str | None  # None: an alert about something else (a silent camera)
    customer_name: str | None
    rule: str
    message: str
    assignee_id: str | None
    created_at: datetime
    claimed_by: str | None
    claimed_at: datetime | None
    acknowledged_at: datetime | None
    time_to_greet_s: float | None = None  # set once acknowledged
    kind: str = "arrival"
    reasons: tuple[str, ...] = ()  # why, in plain words (one sentence per fired rule)
    camera: str | None = None  # the camera that saw the customer (no credentials)
    seen_at: datetime | None = None  # when the visit began (UTC)
    local_time: str | None = None  # seen_at (or created_at) in the store's time zone, ISO
    time_zone: str = "UTC"  # the store's (StoreConfig.time_zone)
    has_photo: bool = False  # the enrollment photo may be shown (the customer agreed)
    outcome: str | None = None  # greeted, dismissed or disputed once closed
    closed_at: datetime | None = None
    closed_by: str | None = None

    @classmethod
    def of(
        cls, a: Alert, customer_name: str | None = None, greeted: float | None = None, **more: Any
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
            kind=a.kind or "arrival",
            reasons=tuple(a.reasons or ()),
            outcome=a.outcome,
            closed_at=a.closed_at,
            closed_by=a.closed_by,
            **more,
        )

    def payload(self) -> dict[str, object]:
        """JSON-ready, for live streams and webhooks."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.time_to_greet_s is None:
            del data["time_to_greet_s"]
        data["reasons"] = list(self.reasons)
        if self.kind in AUDIENCE:  # the live streams give it to these roles only
            data["roles"] = list(AUDIENCE[self.kind])
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in data.items()}


def zone(name: str | None) -> ZoneInfo:
    """A store's time zone (UTC when unset or unknown to this machine's tz database)."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def check_time_zone(name: str) -> str:
    """An IANA time zone name this server knows (e.g. Europe/Paris), or `InvalidError`."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidError(
            f"unknown time zone {name[:64]!r}; use an IANA name such as Europe/Paris",
            reason="bad_time_zone",
        ) from exc
    return name


def _alert_rows() -> Select[Alert, str, bool, str | None, datetime, str]:
    """Alerts with what staff see beside them: name, photo, camera, visit time, time zone."""
    return (
        select(
            Alert,
            Customer.name,
            Customer.show_photo & CustomerPhoto.customer_id.is_not(None),
            Visit.camera,
            Visit.at,
            StoreConfig.time_zone,
        )
        .outerjoin(Customer, Customer.id == Alert.customer_id)
        .outerjoin(CustomerPhoto, CustomerPhoto.customer_id == Alert.customer_id)
        .outerjoin(Visit, Visit.id == Alert.visit_id)
        .outerjoin(StoreConfig, StoreConfig.store_id == Alert.store_id)
    )


def _view(row: Any, greeted: float | None = None) -> AlertView:
    alert, name, photo, camera, seen_at, tz = row
    when = seen_at or alert.created_at
    return AlertView.of(
        alert,
        name,
        greeted,
        camera=camera or alert.camera,
        seen_at=seen_at,
        local_time=_aware(when).astimezone(zone(tz)).isoformat(),
        time_zone=zone(tz).key,
        has_photo=bool(photo),
    )


def alert_view(session: Session, alert_id: int, greeted: float | None = None) -> AlertView | None:
    """One alert as staff see it (the live streams' payload in every server process)."""
    row = session.execute(_alert_rows().where(Alert.id == alert_id)).first()
    return None if row is None else _view(row, greeted)


KIND = re.compile(r"^[a-z][a-z0-9_]{1,39}\Z")


@dataclass(frozen=True, slots=True)
class StoreConfigView:
    """A store's rule overrides (`rules.model_dump(exclude_unset=True)` is what was set)
    and its webhook URL; never the webhook's secret."""

    store_id: str
    rules: rules.RuleSettings
    webhook_url: str | None
    time_zone: str = "UTC"


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
        store_id = accounts.device_store(device)
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
                self.publish(store, payload)
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
        here = select(Visit).where(Visit.customer_id == customer.id, Visit.store_id == store_id)
        previous = session.scalars(here.order_by(Visit.at.desc()).limit(1)).first()
        if previous is not None and at - _aware(previous.at) < window:
            return "same_visit"  # a disputed visit too: its look-alike is still in the store
        undisputed = here.where(Visit.disputed.is_(False))
        last = session.scalars(undisputed.order_by(Visit.at.desc()).limit(1)).first()
        count = session.scalar(select(func.count()).select_from(undisputed.subquery()))
        visit = activity.record_visit(
            session,
            device,
            customer.id,
            store_id,
            "agent",
            event.similarity,
            at,
            camera=disputes.camera_label(event.camera),
        )
        previous_at = _aware(last.at) if last is not None else None
        # Evaluation only reads; whatever goes wrong in it costs the alert, never the visit.
        # (No savepoint: releasing one would fire the audit seal before the visit commits.)
        try:
            context = self._context(session, customer, store_id, at, previous_at)
            draft = rules.evaluate(
                dataclasses.replace(context, visits_here=int(count or 0)),
                self._rules(session, store_id),
            )
        except _UNAVAILABLE:
            raise
        except Exception as exc:  # a broken rule must not lose the visit
            log.warning("store %s: no alert, the visit is kept (%s)", store_id, type(exc).__name__)
            self.metrics.inc("facecrm_alert_failures_total", help="alerts that failed to be raised")
            draft = None
        if draft is not None and self._cooling_down(session, customer.id, store_id, at):
            self.metrics.inc(
                "facecrm_alerts_cooldown_total", help="arrival alerts held back by the cooldown"
            )
            draft = None
        if draft is not None:
            alert = Alert(
                store_id=store_id,
                customer_id=customer.id,
                visit_id=visit.id,
                rule=",".join(draft.rules),  # every name fits: see migration 0007
                message=draft.message,
                assignee_id=draft.assignee_id,
                kind="arrival",
                reasons=list(draft.reasons),
            )
            session.add(alert)
            session.flush()
            audit.record(session, device, "alert", customer.id, store_id, rules=list(draft.rules))
            published.append((store_id, self._one(session, alert.id).payload()))
        return "visit"

    def _cooling_down(
        self, session: Session, customer_id: str, store_id: str, at: datetime
    ) -> bool:
        """Whether an arrival alert for this customer and store began within the cooldown."""
        minutes = self.crm.settings.alert_cooldown_minutes
        if not minutes:
            return False
        recent = session.scalar(
            select(Alert.id)
            .join(Visit, Visit.id == Alert.visit_id)
            .where(
                Alert.customer_id == customer_id,
                Alert.store_id == store_id,
                Visit.at > at - timedelta(minutes=minutes),
                Visit.at <= at,
            )
            .limit(1)
        )
        return recent is not None

    def _one(self, session: Session, alert_id: int, greeted: float | None = None) -> AlertView:
        view = alert_view(session, alert_id, greeted)
        if view is None:
            raise NotFoundError(f"no alert with id {alert_id}")
        return view

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

    def publish(self, store_id: str, payload: dict[str, object]) -> None:
        """A committed new alert to live consoles and to the store's webhook."""
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

    def raise_alert(
        self,
        principal: Principal,
        store_id: str,
        kind: str,
        message: str,
        *,
        customer_id: str | None = None,
        reasons: Sequence[str] = (),
        assignee_id: str | None = None,
    ) -> AlertView:
        """Raise an alert that is not an arrival (e.g. `camera_silent`) to a store's staff.

        Stored, audited, published to live consoles and sent to the store's webhook, like
        an arrival's. For store agents and the server's own checks (`SYSTEM`).
        """
        with db.transaction(self.crm.sessions) as session:
            view = self.add_alert(
                session,
                principal,
                store_id,
                kind,
                message,
                customer_id=customer_id,
                reasons=reasons,
                assignee_id=assignee_id,
            )
            audit.record(session, principal, "alert", customer_id, store_id, rules=[kind])
        self.publish(store_id, view.payload())
        return view

    def add_alert(
        self,
        session: Session,
        principal: Principal,
        store_id: str,
        kind: str,
        message: str,
        *,
        customer_id: str | None = None,
        reasons: Sequence[str] = (),
        assignee_id: str | None = None,
        camera: str | None = None,
    ) -> AlertView:
        """Store a non-arrival alert in the caller's transaction, which audits it and, once
        committed, `publish`es the view (a silent camera's is raised in the transaction
        that claims the camera, so it is stored once however many processes notice)."""
        principal.require(Permission.AGENT)
        principal.require_store(store_id)
        if not KIND.match(kind) or kind == "arrival":
            raise InvalidError("an alert kind is a lower-case word other than 'arrival'")
        message = message.strip()
        if not 0 < len(message) <= 1000 or len(reasons) > 10:
            raise InvalidError("an alert needs a message of at most 1000 characters")
        accounts.get_store(session, store_id)
        alert = Alert(
            store_id=store_id,
            customer_id=customer_id,
            rule=kind,
            message=message,
            assignee_id=assignee_id,
            kind=kind,
            reasons=[r[:500] for r in reasons],
            camera=camera,
        )
        session.add(alert)
        session.flush()
        return self._one(session, alert.id)

    def resolve(
        self, session: Session, principal: Principal, alert_id: int, at: datetime
    ) -> AlertView | None:
        """Close an alert whose cause ended by itself (a camera gives frames again), in the
        caller's transaction; None when staff had closed it already. The caller audits it
        and announces the view as `closed` once committed."""
        principal.require(Permission.AGENT)
        alert = session.get(Alert, alert_id)
        if alert is None or alert.closed_at is not None:
            return None
        principal.require_store(alert.store_id)
        self._close(alert, principal, AlertOutcome.RESOLVED, at)
        session.flush()
        return self._one(session, alert.id)

    def open_alerts(self, principal: Principal, limit: int = 50) -> list[AlertView]:
        """The live list: alerts not yet greeted, dismissed or disputed, newest first."""
        principal.require(Permission.ALERTS)
        with self.crm.sessions() as session:
            stmt = (
                _alert_rows()
                .where(Alert.closed_at.is_(None))
                .order_by(Alert.created_at.desc(), Alert.id.desc())
                .limit(limit)
            )
            if principal.stores is not None:
                stmt = stmt.where(Alert.store_id.in_(principal.stores))
            if hidden := hidden_kinds(principal):
                stmt = stmt.where(Alert.kind.not_in(hidden))
            return [_view(row) for row in session.execute(stmt)]

    def history(
        self,
        principal: Principal,
        store_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[AlertView]:
        """Closed alerts (greeted, dismissed, disputed), the last closed first; a page."""
        principal.require(Permission.ALERTS)
        if store_id is not None:
            principal.require_store(store_id)
        with self.crm.sessions() as session:
            stmt = (
                _alert_rows()
                .where(Alert.closed_at.is_not(None))
                .order_by(Alert.closed_at.desc(), Alert.id.desc())
                .limit(limit)
                .offset(offset)
            )
            if principal.stores is not None:
                stmt = stmt.where(Alert.store_id.in_(principal.stores))
            if store_id is not None:
                stmt = stmt.where(Alert.store_id == store_id)
            if hidden := hidden_kinds(principal):
                stmt = stmt.where(Alert.kind.not_in(hidden))
            return [_view(row) for row in session.execute(stmt)]

    def claim(self, principal: Principal, alert_id: int) -> AlertView:
        principal.require(Permission.ALERTS)
        with db.transaction(self.crm.sessions, write_lock=True) as session:
            alert = self._alert(session, principal, alert_id)
            if alert.claimed_by is not None and alert.claimed_by != principal.id:
                raise ConflictError("another staff member has claimed this alert")
            alert.claimed_by, alert.claimed_at = principal.id, alert.claimed_at or utcnow()
            audit.record(session, principal, "alert_claim", alert.customer_id, alert.store_id)
            session.flush()
            view = self._one(session, alert.id)
        self.bus.publish(view.store_id, {"type": "claimed", **view.payload()})
        return view

    def acknowledge(self, principal: Principal, alert_id: int) -> AlertView:
        """The customer has been greeted: records the time to greet; closes the alert."""
        principal.require(Permission.ALERTS)
        with db.transaction(self.crm.sessions, write_lock=True) as session:
            alert = self._alert(session, principal, alert_id)
            if alert.outcome not in (None, AlertOutcome.GREETED):
                raise ConflictError(f"this alert was {alert.outcome}", reason="alert_closed")
            alert.acknowledged_at = alert.acknowledged_at or utcnow()
            alert.claimed_by = alert.claimed_by or principal.id
            alert.claimed_at = alert.claimed_at or alert.acknowledged_at
            self._close(alert, principal, AlertOutcome.GREETED, alert.acknowledged_at)
            seconds = (alert.acknowledged_at - _aware(alert.created_at)).total_seconds()
            audit.record(
                session,
                principal,
                "alert_ack",
                alert.customer_id,
                alert.store_id,
                time_to_greet_s=round(seconds, 1),
            )
            session.flush()
            view = self._one(session, alert.id, greeted=round(seconds, 1))
        self.bus.publish(view.store_id, {"type": "acknowledged", **view.payload()})
        return view

    def dismiss(self, principal: Principal, alert_id: int) -> AlertView:
        """Close an alert nobody will act on (the customer left, a camera came back)."""
        principal.require(Permission.ALERTS)
        with db.transaction(self.crm.sessions, write_lock=True) as session:
            alert = self._alert(session, principal, alert_id)
            if alert.closed_at is not None:
                raise ConflictError(f"this alert was {alert.outcome}", reason="alert_closed")
            self._close(alert, principal, AlertOutcome.DISMISSED)
            audit.record(session, principal, "alert_dismiss", alert.customer_id, alert.store_id)
            session.flush()
            view = self._one(session, alert.id)
        self.bus.publish(view.store_id, {"type": "closed", **view.payload()})
        return view

    def dispute(self, principal: Principal, alert_id: int) -> AlertView:
        """ "Not this person": close the alert, dispute its visit, record it for the report.

        Also after a greeting or a dismissal (staff may find out late); once only.
        """
        principal.require(Permission.ALERTS)
        with db.transaction(self.crm.sessions, write_lock=True) as session:
            alert = self._alert(session, principal, alert_id)
            if alert.outcome == AlertOutcome.DISPUTED:
                raise ConflictError("this alert is already disputed", reason="already_disputed")
            disputes.dispute_visit(session, principal, alert, self.crm.threshold)
            self._close(alert, principal, AlertOutcome.DISPUTED)
            session.flush()
            view = self._one(session, alert.id)
        self.bus.publish(view.store_id, {"type": "closed", **view.payload()})
        return view

    @staticmethod
    def _close(
        alert: Alert, principal: Principal, outcome: AlertOutcome, at: datetime | None = None
    ) -> None:
        alert.outcome = outcome
        alert.closed_at = at or utcnow()
        alert.closed_by = principal.id if principal.kind == "staff" else None

    def _alert(self, session: Session, principal: Principal, alert_id: int) -> Alert:
        """The alert to change, locked until the transaction ends (in a `write_lock`
        transaction: two staff claiming at once both got "claimed" before)."""
        alert = session.get(Alert, alert_id, with_for_update=True, populate_existing=True)
        if (
            alert is None
            or not principal.may_act_in(alert.store_id)
            or alert.kind in hidden_kinds(principal)
        ):
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
        time_zone: str | None = None,
    ) -> StoreConfigView:
        """Set the store's rule overrides and signed webhook; all checked before any write.

        Bad rules and a URL the server must not call (`webhooks.WebhookRefused`, with a
        reason) are `InvalidError`s: nothing is written. `time_zone` (an IANA name; alerts
        show the store's local time) is kept as it is when None, UTC until first set.
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
        values: dict[str, object] = {
            "rules": overrides,
            "webhook_url": webhook_url,
            "webhook_secret": webhook_secret,
        }
        if time_zone is not None:
            values["time_zone"] = check_time_zone(time_zone)
        with db.transaction(self.crm.sessions) as session:
            accounts.get_store(session, store_id)
            storeconfig.write(session, store_id, **values)
            audit.record(session, principal, "store_config", None, store_id)
            zone_name = session.scalar(
                select(StoreConfig.time_zone).where(StoreConfig.store_id == store_id)
            )
        return StoreConfigView(store_id, rule_settings, webhook_url, zone_name or "UTC")


def payment_lock_alert(alerts: AlertService) -> Callable[[str, str, str], None]:
    """`crm.payflow`'s `on_lock`: tell the store's managers a customer's face payment was
    locked after wrong step-up digits. The alert names the customer as any staff alert
    does (its id; the console shows the card), carries the till and no image or digits."""

    def alert(store_id: str, customer_id: str, till: str) -> None:
        minutes = alerts.crm.settings.pay_lock_minutes
        message = (
            f"Face payment locked for {minutes} minutes after wrong phone digits at "
            f"till {till}: the customer pays another way; check who was at the till."
        )
        alerts.raise_alert(
            SYSTEM,
            store_id,
            "payment_locked",
            message,
            customer_id=customer_id,
            reasons=["wrong step-up digits"],
        )

    return alert
