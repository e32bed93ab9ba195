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

from fastapi import APIRouter, Depends, Query, Request
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


def window_of(
    store_id: StoreId = None, since: Since = None, until: Until = None, bucket: BucketQ = "hour"
) -> dashboard.Window:
    """The query's window (defaults: until now, a day hourly or four weeks daily)."""
    return dashboard.window(since, until, bucket, store_id)


WindowDep = Annotated[dashboard.Window, Depends(window_of)]


def _route(read: Read) -> Callable[..., AnalyticsOut | Response]:
    def route(
        request: Request,
        session: SessionDep,
        principal: AnalyticsReader,
        window: WindowDep,
        format: FormatQ = None,
    ) -> AnalyticsOut | Response:
        return answer(read, request, session, principal, window, format)

    route.__name__ = f"analytics_{read.__name__}"
    route.__doc__ = read.__doc__
    return route


# one route per series; each needs `analytics:read` (the matrix test reads the dependency)
for _read in (dashboard.footfall, dashboard.queues, dashboard.demographics):
    router.add_api_route(
        f"/analytics/{_read.__name__}",
        _route(_read),
        methods=["GET"],
        response_model=AnalyticsOut,
        responses=CSV_RESPONSE,
    )
