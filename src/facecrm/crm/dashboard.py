"""Read side of the anonymous analytics (issue 13, item 4): the dashboard's series.

Three reads, each over a store (or the principal's whole scope) and a [since, until) window,
summed per period (`hour` or `day`, UTC):

* `footfall`: the `entries` and `dwell` counters of every zone.
* `demographics`: the `demographics` (age band x gender) and `sentiment` counters.
* `queues`: the `dwell` counters of the checkout zones (how long people waited), their
  queue length per period (`queue_length`: people, max, person_seconds, seconds and
  mean = person_seconds / seconds; `max` is the largest, the others are sums), and the
  store's alerts per kind: how many were raised, claimed and greeted, and the median
  seconds to claim and to greet (staff response times).

Who may read: `analytics:read` (managers in their own stores, admins chain-wide; associates,
auditors and devices not). Another store's id is a 403, an unknown one a 404.

Not audited, like `ingest`: every value is a k-anonymous counter (no bucket below
`footfall.MIN_COUNT` ever reached the table) or a count/median over alerts, so a read
names no one and is not a lookup of a person. The audit trail records lookups of people
(`lookup`, `dispute_report` because it names customers); auditing every dashboard refresh
would bury those under rows about no one.

Memory stays bounded: the window is at most `MAX_HOURS` hours for `hour` and `MAX_DAYS` days
for `day`, the database sums over stores (GROUP BY hour, zone, metric, bucket) and the rows
are folded into periods as they stream.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from facecrm.alerts.footfall import QUEUE_MAX, QUEUE_METRIC
from facecrm.crm import accounts
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.errors import InvalidError
from facecrm.crm.models import Alert, AlertOutcome, FootfallAggregate

Bucket = Literal["hour", "day"]
MAX_DAYS = 400
MAX_HOURS = 62 * 24  # hourly series over two months at most
FOOTFALL_METRICS = ("entries", "dwell")
DEMOGRAPHIC_METRICS = ("demographics", "sentiment")
CHECKOUT = "checkout_queue:"


@dataclass(frozen=True, slots=True)
class Window:
    """What to read: one store (None: all the principal may see), [since, until), bucket."""

    since: datetime
    until: datetime
    bucket: Bucket = "hour"
    store_id: str | None = None


@dataclass(frozen=True, slots=True)
class Point:
    """One value of a series: a counter summed over the period and the stores in scope."""

    period: datetime
    zone: str  # a zone name, or an alert kind for the alert series of `queues`
    metric: str
    bucket: str
    value: float


def window(
    since: datetime | None,
    until: datetime | None,
    bucket: Bucket = "hour",
    store_id: str | None = None,
    now: datetime | None = None,
) -> Window:
    """A window with defaults: until now, since a day (hourly) or four weeks (daily) before."""
    end = until or now or datetime.now(UTC)
    start = since or end - (timedelta(days=1) if bucket == "hour" else timedelta(days=28))
    return Window(start, end, bucket, store_id)


def check(window: Window) -> None:
    """Refuse a window that is reversed, naive or too long (422 `bad_window`)."""
    if window.since.tzinfo is None or window.until.tzinfo is None:
        raise InvalidError("since and until need a time zone", reason="bad_window")
    if window.until <= window.since:
        raise InvalidError("until must be after since", reason="bad_window")
    if window.bucket not in ("hour", "day"):
        raise InvalidError("bucket is 'hour' or 'day'", reason="bad_window")
    longest = timedelta(hours=MAX_HOURS) if window.bucket == "hour" else timedelta(days=MAX_DAYS)
    if window.until - window.since > longest:
        limit = f"{MAX_HOURS} hours" if window.bucket == "hour" else f"{MAX_DAYS} days"
        raise InvalidError(f"a {window.bucket} series covers at most {limit}", reason="bad_window")


def scope(session: Session, principal: Principal, store_id: str | None) -> frozenset[str] | None:
    """The stores a read covers (None: the chain), after the permission and store checks."""
    principal.require(Permission.ANALYTICS_READ)
    if store_id is not None:
        principal.require_store(store_id)
        accounts.get_store(session, store_id)
        return frozenset({store_id})
    return principal.visible_stores()


def period_of(moment: datetime, bucket: Bucket) -> datetime:
    moment = moment.astimezone(UTC)
    if bucket == "day":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)


def _counters(
    session: Session, stores: frozenset[str] | None, window: Window, metrics: Iterable[str]
) -> list[Point]:
    agg = FootfallAggregate
    stmt = (
        select(agg.hour, agg.zone, agg.metric, agg.bucket, func.sum(agg.count))
        .where(agg.hour >= window.since, agg.hour < window.until, agg.metric.in_(list(metrics)))
        .group_by(agg.hour, agg.zone, agg.metric, agg.bucket)
    )
    if stores is not None:
        stmt = stmt.where(agg.store_id.in_(sorted(stores)))
    sums: dict[tuple[datetime, str, str, str], int] = defaultdict(int)
    for hour, zone, metric, bucket, count in session.execute(
        stmt.execution_options(yield_per=2000)
    ):
        sums[(period_of(hour, window.bucket), zone, metric, bucket)] += int(count)
    return [Point(p, z, m, b, float(n)) for (p, z, m, b), n in sorted(sums.items())]


def footfall(session: Session, principal: Principal, window: Window) -> list[Point]:
    """Entries and dwell-time buckets per zone and period (k-anonymous counters)."""
    check(window)
    return _counters(session, scope(session, principal, window.store_id), window, FOOTFALL_METRICS)


def demographics(session: Session, principal: Principal, window: Window) -> list[Point]:
    """Age band x gender and sentiment per zone and period (k-anonymous counters; only
    where the store switched them on)."""
    check(window)
    stores = scope(session, principal, window.store_id)
    return _counters(session, stores, window, DEMOGRAPHIC_METRICS)


def _alert_series(
    session: Session, stores: frozenset[str] | None, window: Window
) -> Iterator[Point]:
    stmt = select(
        Alert.created_at, Alert.kind, Alert.claimed_at, Alert.acknowledged_at, Alert.outcome
    ).where(Alert.created_at >= window.since, Alert.created_at < window.until)
    if stores is not None:
        stmt = stmt.where(Alert.store_id.in_(sorted(stores)))
    raised: dict[tuple[datetime, str], int] = defaultdict(int)
    claims: dict[tuple[datetime, str], list[float]] = defaultdict(list)
    greets: dict[tuple[datetime, str], list[float]] = defaultdict(list)
    for created, kind, claimed, acked, outcome in session.execute(
        stmt.execution_options(yield_per=2000)
    ):
        key = (period_of(created, window.bucket), str(kind))
        raised[key] += 1
        if claimed is not None:
            claims[key].append((claimed - created).total_seconds())
        if acked is not None and outcome == AlertOutcome.GREETED:
            greets[key].append((acked - created).total_seconds())
    for key in sorted(raised):
        period, kind = key
        yield Point(period, kind, "alerts", "raised", float(raised[key]))
        for metric, times in (("time_to_claim", claims[key]), ("time_to_greet", greets[key])):
            if times:
                yield Point(period, kind, metric, "count", float(len(times)))
                yield Point(period, kind, metric, "median_s", round(statistics.median(times), 1))


def _queue_lengths(
    session: Session, stores: frozenset[str] | None, window: Window
) -> Iterator[Point]:
    """Queue length per checkout zone and period: `max` the largest, the rest summed, and
    the mean length over the time the queue was watched."""
    agg = FootfallAggregate
    stmt = (
        select(agg.hour, agg.zone, agg.bucket, func.sum(agg.count), func.max(agg.count))
        .where(agg.hour >= window.since, agg.hour < window.until, agg.metric == QUEUE_METRIC)
        .group_by(agg.hour, agg.zone, agg.bucket)
    )
    if stores is not None:
        stmt = stmt.where(agg.store_id.in_(sorted(stores)))
    values: dict[tuple[datetime, str], dict[str, int]] = defaultdict(dict)
    for hour, zone, bucket, total, largest in session.execute(
        stmt.execution_options(yield_per=2000)
    ):
        found = values[(period_of(hour, window.bucket), zone)]
        if bucket == QUEUE_MAX:
            found[bucket] = max(found.get(bucket, 0), int(largest))
        else:
            found[bucket] = found.get(bucket, 0) + int(total)
    for (period, zone), found in sorted(values.items()):
        for bucket, value in sorted(found.items()):
            yield Point(period, zone, QUEUE_METRIC, bucket, float(value))
        if found.get("seconds"):
            mean = found.get("person_seconds", 0) / found["seconds"]
            yield Point(period, zone, QUEUE_METRIC, "mean", round(mean, 2))


def queues(session: Session, principal: Principal, window: Window) -> list[Point]:
    """Waiting-time buckets and queue length in the checkout zones, and per alert kind:
    alerts raised and the median seconds to claim and to greet."""
    check(window)
    stores = scope(session, principal, window.store_id)
    waits = [
        p for p in _counters(session, stores, window, ["dwell"]) if p.zone.startswith(CHECKOUT)
    ]
    lengths = list(_queue_lengths(session, stores, window))
    return waits + lengths + list(_alert_series(session, stores, window))
