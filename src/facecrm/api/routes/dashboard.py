"""The analytics dashboard's API: anonymous footfall, queue and demographic series.

`GET /analytics/footfall|queues|demographics?store_id=&since=&until=&bucket=hour|day`, as
JSON (`AnalyticsOut`) or CSV (`format=csv`, or `Accept: text/csv`). Routes only translate:
who may read which store, the window bounds and the sums live in `crm.dashboard`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from facecrm.api.deps import AnalyticsReader, SessionDep
from facecrm.api.schemas import PROBLEMS, AnalyticsOut, AnalyticsPointOut, Instant
from facecrm.crm import dashboard
from facecrm.crm.authz import Principal

router = APIRouter(tags=["analytics dashboard"], responses=PROBLEMS)
CSV_COLUMNS = ("period", "zone", "metric", "bucket", "value")
StoreId = Annotated[str | None, Query(max_length=64)]
Since = Annotated[Instant | None, Query()]
Until = Annotated[Instant | None, Query()]
BucketQ = Annotated[Literal["hour", "day"], Query()]
FormatQ = Annotated[Literal["json", "csv"] | None, Query()]
Read = Callable[[Session, Principal, dashboard.Window], list[dashboard.Point]]


def as_csv(points: list[dashboard.Point]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for p in points:
        writer.writerow((p.period.isoformat(), p.zone, p.metric, p.bucket, f"{p.value:g}"))
    return out.getvalue()


def answer(
    read: Read,
    request: Request,
    session: Session,
    principal: Principal,
    window: dashboard.Window,
    fmt: str | None,
) -> AnalyticsOut | Response:
    points = read(session, principal, window)
    wants_csv = fmt == "csv" or (fmt is None and "text/csv" in request.headers.get("accept", ""))
    if wants_csv:
        name = f"{read.__name__}-{window.bucket}.csv"
        return Response(
            as_csv(points),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return AnalyticsOut(
        store_id=window.store_id,
        since=window.since,
        until=window.until,
        bucket=window.bucket,
        points=[AnalyticsPointOut.model_validate(p, from_attributes=True) for p in points],
    )


CSV_RESPONSE: dict[int | str, dict[str, Any]] = {200: {"content": {"text/csv": {}}}}


@router.get("/analytics/footfall", response_model=AnalyticsOut, responses=CSV_RESPONSE)
def footfall(
    request: Request,
    session: SessionDep,
    principal: AnalyticsReader,
    store_id: StoreId = None,
    since: Since = None,
    until: Until = None,
    bucket: BucketQ = "hour",
    format: FormatQ = None,
) -> AnalyticsOut | Response:
    """Entries and dwell times per zone (sums of k-anonymous counters)."""
    window = dashboard.window(since, until, bucket, store_id)
    return answer(dashboard.footfall, request, session, principal, window, format)


@router.get("/analytics/queues", response_model=AnalyticsOut, responses=CSV_RESPONSE)
def queues(
    request: Request,
    session: SessionDep,
    principal: AnalyticsReader,
    store_id: StoreId = None,
    since: Since = None,
    until: Until = None,
    bucket: BucketQ = "hour",
    format: FormatQ = None,
) -> AnalyticsOut | Response:
    """Waiting times in checkout zones; alerts raised and median time to claim / greet."""
    window = dashboard.window(since, until, bucket, store_id)
    return answer(dashboard.queues, request, session, principal, window, format)


@router.get("/analytics/demographics", response_model=AnalyticsOut, responses=CSV_RESPONSE)
def demographics(
    request: Request,
    session: SessionDep,
    principal: AnalyticsReader,
    store_id: StoreId = None,
    since: Since = None,
    until: Until = None,
    bucket: BucketQ = "hour",
    format: FormatQ = None,
) -> AnalyticsOut | Response:
    """Age band x gender and sentiment shares per zone (only where the store switched
    them on; sums of k-anonymous counters)."""
    window = dashboard.window(since, until, bucket, store_id)
    return answer(dashboard.demographics, request, session, principal, window, format)
