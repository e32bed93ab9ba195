"""Server side of the store agent's anonymous analytics (issue 13).

* `agent_settings`: what a store's agent needs to run them: its cameras' zones, the
  demographics/sentiment switches and the `checkout_queue` rule (N/M/K).
* `queue_alert`: a checkout queue alert reported by the agent, raised through
  `AlertService.raise_alert` (kind `queue`: SSE, webhooks, claim/ack like any alert). It
  carries the zone, queue length, waiting time and confidence, never a face. The agent
  may say which opted-in customer the unhappy track was; the alert names them only if
  they have an active `experience_analytics` consent, otherwise the id is dropped here
  and nothing about them is stored.
* `ingest`: the agent's hourly aggregates into `footfall_aggregates` (added to what is
  there). The store is the device's, never the body's. Every row is checked first (hour on
  the hour and not in the future, a zone the store has drawn, a known metric and bucket,
  count >= `footfall.MIN_COUNT`, demographics/sentiment only with their switch on, no key
  twice); one bad row refuses the whole body with a 422 and its `reason`, nothing written.

Aggregates are not audited, like heartbeats: they are counters about no one; the queue
alert is audited by `raise_alert` ("alert").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from facecrm.alerts import footfall, storeconfig
from facecrm.alerts.service import AlertService, AlertView
from facecrm.crm import db
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.errors import ConflictError, InvalidError
from facecrm.crm.models import Customer, FootfallAggregate, Purpose, StoreAnalytics, utcnow

QUEUE_KIND = "queue"
MAX_ROWS = 5000  # one hour of a large store: 4 metrics x ~20 buckets x a few zones
MAX_AGE = timedelta(days=35)  # an agent keeps unsent hours in memory: older is not ours
MAX_COUNT = 1_000_000


def _store_of(device: Principal) -> str:
    device.require(Permission.AGENT)
    store_id = next(iter(device.stores or []), None)
    if store_id is None:
        raise ConflictError("the device has no store")
    return store_id


def _analytics(session: Session, store_id: str) -> StoreAnalytics:
    row = session.get(StoreAnalytics, store_id)
    return row or StoreAnalytics(
        store_id=store_id, zones={}, demographics_enabled=False, sentiment_enabled=False
    )


def agent_settings(session: Session, device: Principal) -> dict[str, Any]:
    """The device's store's zones (per camera), switches and checkout queue rule."""
    store_id = _store_of(device)
    row = _analytics(session, store_id)
    rules, _ = storeconfig.rules_in_force(session, store_id)
    return {
        "zones": dict(row.zones or {}),
        "demographics_enabled": bool(row.demographics_enabled),
        "sentiment_enabled": bool(row.sentiment_enabled),
        "checkout_queue": rules.checkout_queue.model_dump(mode="json"),
    }


@dataclass(frozen=True, slots=True)
class QueueReport:
    """What the agent saw in one checkout zone when its rule fired."""

    camera: str
    zone: str  # checkout_queue:<n>
    trigger: str  # "unhappy" (waited and looks unhappy) or "length" (queue too long)
    queue_length: int
    waiting_seconds: float  # the longest wait in the queue (the unhappy one's for "unhappy")
    unhappy_seconds: float
    confidence: float  # 0..1: share of frontal samples above the track's baseline
    customer_id: str | None = None  # the unhappy track's opted-in customer, if the agent knew


def _zone_names(row: StoreAnalytics, camera: str | None = None) -> set[str]:
    zones: dict[str, Any] = dict(row.zones or {})
    cameras = [zones.get(camera) or []] if camera is not None else list(zones.values())
    return {str(z.get("name")) for zs in cameras for z in zs if isinstance(z, dict)}


def _consenting(session: Session, customer_id: str | None) -> str | None:
    """The customer id if they may be named in a queue alert (experience_analytics)."""
    if not customer_id:
        return None
    customer = session.get(Customer, customer_id)
    if customer is None or customer.active_consent(Purpose.EXPERIENCE_ANALYTICS) is None:
        return None
    return customer.id


def _message(report: QueueReport) -> tuple[str, list[str]]:
    till = report.zone.split(":", 1)[1]
    minutes = max(1, round(report.waiting_seconds / 60))
    if report.trigger == "unhappy":
        head = f"Checkout {till}: a customer has waited {minutes} min and looks unhappy"
    else:
        head = f"Checkout {till}: {report.queue_length} people are queuing"
    reasons = [
        f"Zone {report.zone} on camera {report.camera}: {report.queue_length} in the queue,"
        f" the longest wait {minutes} min.",
        f"Confidence {report.confidence:.0%}"
        + (
            f" (looked unhappy for {report.unhappy_seconds:.0f} s against their own baseline)."
            if report.trigger == "unhappy"
            else "."
        ),
    ]
    return f"{head} — open a till / send someone", reasons


def queue_alert(alerts: AlertService, device: Principal, report: QueueReport) -> AlertView:
    """Raise a checkout queue alert for the device's store (see the module doc)."""
    store_id = _store_of(device)
    if not footfall_zone_is_checkout(report.zone):
        raise InvalidError("a queue alert is about a checkout_queue:<n> zone", reason="bad_zone")
    if report.trigger not in {"unhappy", "length"}:
        raise InvalidError("trigger is 'unhappy' or 'length'", reason="bad_trigger")
    with alerts.crm.sessions() as session:
        row = _analytics(session, store_id)
        rule = storeconfig.rules_in_force(session, store_id)[0].checkout_queue
        if report.zone not in _zone_names(row, report.camera):
            raise InvalidError(
                f"{report.zone} is not a zone of camera {report.camera[:100]!r}",
                reason="unknown_zone",
            )
        if not rule.enabled:
            raise ConflictError("the store's checkout_queue rule is off", reason="rule_off")
        if report.trigger == "unhappy" and not row.sentiment_enabled:
            raise ConflictError("the store's sentiment switch is off", reason="analytics_off")
        named = _consenting(session, report.customer_id)
    message, reasons = _message(report)
    return alerts.raise_alert(
        device, store_id, QUEUE_KIND, message, customer_id=named, reasons=reasons
    )


def footfall_zone_is_checkout(zone: str) -> bool:
    return zone.startswith("checkout_queue:") and zone[15:].isdigit()


@dataclass(frozen=True, slots=True)
class AggregateRow:
    hour: datetime
    zone: str
    metric: str
    bucket: str
    count: int


def _refuse(index: int, message: str, reason: str) -> InvalidError:
    return InvalidError(f"rows[{index}]: {message}", reason=reason)


def check_rows(row: StoreAnalytics, rows: Sequence[AggregateRow], now: datetime) -> None:
    """Raise `InvalidError` for the first row that may not be stored (module doc)."""
    if len(rows) > MAX_ROWS:
        raise InvalidError(f"at most {MAX_ROWS} rows per report", reason="too_many_rows")
    zones = _zone_names(row)
    seen: set[tuple[datetime, str, str, str]] = set()
    people = {  # the k count of each queue hour in this report
        (r.hour, r.zone): r.count
        for r in rows
        if r.metric == footfall.QUEUE_METRIC and r.bucket == footfall.QUEUE_PEOPLE
    }
    for i, r in enumerate(rows):
        hour = r.hour
        if hour.tzinfo is None or hour.minute or hour.second or hour.microsecond:
            raise _refuse(i, "hour must be a UTC time on the hour", "bad_hour")
        if hour > now or hour < now - MAX_AGE:
            raise _refuse(i, "hour is in the future or too old", "bad_hour")
        if r.zone not in zones:
            raise _refuse(i, f"zone {r.zone[:40]!r} is not drawn in this store", "unknown_zone")
        if not footfall.known_bucket(r.metric, r.bucket):
            raise _refuse(i, f"unknown metric/bucket {r.metric[:20]}/{r.bucket[:20]}", "bad_bucket")
        off = (r.metric in footfall.DEMOGRAPHIC_METRICS and not row.demographics_enabled) or (
            r.metric in footfall.SENTIMENT_METRICS and not row.sentiment_enabled
        )
        if off:
            raise _refuse(i, f"{r.metric} is switched off in this store", "analytics_off")
        if r.metric == footfall.QUEUE_METRIC:
            _check_queue_row(i, r, people)
        elif not footfall.MIN_COUNT <= r.count <= MAX_COUNT:
            raise _refuse(i, f"a count is {footfall.MIN_COUNT}..{MAX_COUNT}", "k_anonymity")
        key = (hour.astimezone(UTC), r.zone, r.metric, r.bucket)
        if key in seen:
            raise _refuse(i, "the same counter twice", "duplicate_row")
        seen.add(key)


def _check_queue_row(index: int, r: AggregateRow, people: dict[tuple[datetime, str], int]) -> None:
    """Queue length rows: checkout zones only, and only about an hour at least
    `footfall.MIN_COUNT` people queued in, said by its `people` row in the same report."""
    if not footfall_zone_is_checkout(r.zone):
        raise _refuse(index, "queue length is about a checkout_queue:<n> zone", "bad_zone")
    if people.get((r.hour, r.zone), 0) < footfall.MIN_COUNT:
        raise _refuse(
            index,
            f"queue numbers need at least {footfall.MIN_COUNT} people in the same hour's"
            " people row",
            "k_anonymity",
        )
    if not 0 <= r.count <= MAX_COUNT:
        raise _refuse(index, f"a queue number is 0..{MAX_COUNT}", "bad_count")


def ingest(
    crm_sessions: sessionmaker[Session],
    device: Principal,
    rows: Sequence[AggregateRow],
    now: datetime | None = None,
) -> int:
    """Add the agent's aggregates to the store's counters; all rows or none (module doc)."""
    store_id = _store_of(device)
    moment = now or datetime.now(UTC)
    with db.transaction(crm_sessions) as session:
        check_rows(_analytics(session, store_id), rows, moment)
        if not rows:
            return 0
        values = [
            {
                "store_id": store_id,
                "hour": r.hour.astimezone(UTC),
                "zone": r.zone,
                "metric": r.metric,
                "bucket": r.bucket,
                "count": r.count,
                "updated_at": utcnow(),
            }
            for r in rows
        ]
        dialect = session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = insert(FootfallAggregate).values(values)
        agg = FootfallAggregate
        # a queue's `max` is merged by max (an hour sent in two parts), everything else added
        larger = func.greatest if dialect == "postgresql" else func.max
        is_max = and_(agg.metric == footfall.QUEUE_METRIC, agg.bucket == footfall.QUEUE_MAX)
        stmt = stmt.on_conflict_do_update(
            index_elements=["store_id", "hour", "zone", "metric", "bucket"],
            set_={
                "count": case(
                    (is_max, larger(agg.count, stmt.excluded.count)),
                    else_=agg.count + stmt.excluded.count,
                ),
                "updated_at": stmt.excluded.updated_at,
            },
        )
        session.execute(stmt)
    return len(rows)


def stored(session: Session, store_id: str) -> list[tuple[datetime, str, str, str, int]]:
    """A store's counters, oldest first (tests and, later, the dashboard)."""
    found = session.execute(
        select(
            FootfallAggregate.hour,
            FootfallAggregate.zone,
            FootfallAggregate.metric,
            FootfallAggregate.bucket,
            FootfallAggregate.count,
        )
        .where(FootfallAggregate.store_id == store_id)
        .order_by(
            FootfallAggregate.hour,
            FootfallAggregate.zone,
            FootfallAggregate.metric,
            FootfallAggregate.bucket,
        )
    )
    return [(h, z, m, b, n) for h, z, m, b, n in found]
