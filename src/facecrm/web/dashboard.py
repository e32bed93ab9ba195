"""The console's analytics dashboard: one store, or every store the user may see.

Charts are server-side SVG (`web.charts`) of the `crm.dashboard` series, which decide who
may read what (managers their stores, admins the chain; associates get the 403 page).
Days and hours are UTC, like the counters.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup
from sqlalchemy.orm import Session

from facecrm.alerts.footfall import DWELL_BUCKETS
from facecrm.api.deps import SessionDep
from facecrm.crm import accounts, dashboard
from facecrm.crm.authz import Principal
from facecrm.vision.attributes import SENTIMENTS
from facecrm.web.charts import bar_chart, line_chart
from facecrm.web.console import Staff, render

router = APIRouter(prefix="/console", include_in_schema=False)
WEEKS_BACK = 4
DAYS = 28


def _days(end: datetime) -> list[datetime]:
    return [end - timedelta(days=DAYS - i) for i in range(DAYS)]


def _by(points: Iterable[dashboard.Point], metric: str) -> dict[datetime, float]:
    sums: dict[datetime, float] = defaultdict(float)
    for p in points:
        if p.metric == metric:
            sums[p.period] += p.value
    return sums


def footfall_by_hour(
    session: Session, principal: Principal, store_id: str | None, today: datetime, now: datetime
) -> Markup:
    """Entries per hour today against the same weekday of the last weeks."""
    series: dict[str, list[float | None]] = {}
    for weeks in range(WEEKS_BACK + 1):
        day = today - timedelta(weeks=weeks)
        window = dashboard.Window(day, day + timedelta(days=1), "hour", store_id)
        entries = _by(dashboard.footfall(session, principal, window), "entries")
        name = "today" if weeks == 0 else f"{weeks} week{'s' if weeks > 1 else ''} ago"
        series[name] = [
            entries.get(day + timedelta(hours=h), 0.0) if day + timedelta(hours=h) <= now else None
            for h in range(24)
        ]
    return line_chart("Entries per hour (UTC)", [f"{h:02d}" for h in range(24)], series)


def queue_length_by_day(
    queues: Iterable[dashboard.Point], days: list[datetime]
) -> dict[str, list[float | None]]:
    """Over all checkout zones: the mean length (person-seconds over seconds watched) and
    the largest queue of each day; None where no queue numbers left any agent."""
    sums: dict[tuple[datetime, str], float] = defaultdict(float)
    largest: dict[datetime, float] = {}
    for p in queues:
        if p.metric != "queue_length":
            continue
        if p.bucket == "max":
            largest[p.period] = max(largest.get(p.period, 0.0), p.value)
        elif p.bucket in ("person_seconds", "seconds"):
            sums[(p.period, p.bucket)] += p.value
    mean = [
        round(sums[(d, "person_seconds")] / sums[(d, "seconds")], 2)
        if sums.get((d, "seconds"))
        else None
        for d in days
    ]
    return {"mean": mean, "max": [largest.get(d) for d in days]}


def charts(session: Session, principal: Principal, store_id: str | None) -> dict[str, Markup]:
    now = datetime.now(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    end = today + timedelta(days=1)
    days = _days(end)
    labels = [d.strftime("%m-%d") for d in days]
    window = dashboard.Window(days[0], end, "day", store_id)
    queues = dashboard.queues(session, principal, window)
    people = [_by(queues, "dwell").get(d, 0.0) for d in days]
    lengths = queue_length_by_day(queues, days)
    waits: dict[str, float] = defaultdict(float)
    for p in queues:
        if p.metric == "dwell":
            waits[p.bucket] += p.value
    wait_labels = [label for _, label in DWELL_BUCKETS] + ["other"]
    response: dict[str, list[float | None]] = {}
    for p in queues:
        if p.metric.startswith("time_to_") and p.bucket == "median_s":
            name = f"{p.metric.removeprefix('time_to_')} ({p.zone})"
            response.setdefault(name, [None] * len(days))[days.index(p.period)] = p.value
    raised: dict[str, list[float | None]] = {}
    for p in queues:
        if p.metric == "alerts":
            raised.setdefault(p.zone, [0.0] * len(days))[days.index(p.period)] = p.value
    demo = dashboard.demographics(session, principal, window)
    groups: dict[str, float] = defaultdict(float)
    for p in demo:
        if p.metric == "demographics":
            groups[p.bucket] += p.value
    sentiment: dict[str, list[float | None]] = {}
    totals = _by(demo, "sentiment")
    for mood in [*SENTIMENTS, "other"]:
        share = _by((p for p in demo if p.bucket == mood), "sentiment")
        if share:
            sentiment[mood] = [
                round(100 * share.get(d, 0.0) / totals[d], 1) if totals.get(d) else None
                for d in days
            ]
    return {
        "footfall": footfall_by_hour(session, principal, store_id, today, now),
        "queue_people": line_chart(
            "People who queued at the checkouts, per day", labels, {"people": list(people)}
        ),
        "queue_length": line_chart(
            "Queue length at the checkouts per day (mean over watched time, and max)",
            labels,
            lengths,
        ),
        "queue_waits": bar_chart(
            f"Waiting time at the checkouts, last {DAYS} days",
            wait_labels,
            [waits.get(b, 0.0) for b in wait_labels],
            "people",
        ),
        "alerts": line_chart("Alerts raised per day", labels, raised),
        "response": line_chart("Median seconds to claim / greet an alert", labels, response),
        "demographics": bar_chart(
            f"Age band | gender, last {DAYS} days",
            sorted(groups),
            [groups[g] for g in sorted(groups)],
            "people",
        ),
        "sentiment": line_chart("Sentiment share per day (%)", labels, sentiment),
    }


@router.get("/analytics", response_class=HTMLResponse)
def analytics_page(
    request: Request,
    session: SessionDep,
    principal: Staff,
    store_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """Footfall, queues, demographics, sentiment and alert response times, as SVG charts."""
    chosen = store_id or None
    drawn = charts(session, principal, chosen)  # checks the permission and the store first
    stores = [
        {"id": s.id, "code": s.code, "name": s.name}
        for s in accounts.list_stores(session, principal)
        if principal.may_act_in(s.id)
    ]
    return render(
        request, "analytics.html", principal, stores=stores, store_id=chosen, charts=drawn
    )
