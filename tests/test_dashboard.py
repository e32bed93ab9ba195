"""Issue 13 item 4: the analytics dashboard (API JSON/CSV, permissions, bad input, console).

Counters are seeded through the real ingest path (`POST /agent/aggregates` by each store's
agent) and alerts through the real queue-alert, claim and ack routes, on SQLite and
PostgreSQL; the console page is checked in real Chromium.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import select

from facecrm.alerts import storeconfig
from facecrm.config import Settings
from facecrm.crm import accounts, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.models import Alert
from facecrm.crm.service import FaceCRM
from facecrm.server import create_app
from facecrm.vision.pipeline import FacePipeline

from server import serve

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

PASSWORD = "correct horse battery"
CAMERA = "till-cam"
ZONES = {
    "entrance": [[0.6, 0.0], [1.0, 0.0], [1.0, 1.0], [0.6, 1.0]],
    "checkout_queue:1": [[0.0, 0.0], [0.6, 0.0], [0.6, 1.0], [0.0, 1.0]],
}
NOW_HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
HOURS = [NOW_HOUR, NOW_HOUR - timedelta(hours=1), NOW_HOUR - timedelta(days=7)]


def rows_for(store: str) -> list[dict[str, Any]]:
    """Each store's counters: distinct numbers so sums show which stores were read."""
    extra = 0 if store == "T" else 100
    out = []
    for i, hour in enumerate(HOURS):
        for zone, metric, bucket, count in (
            ("entrance", "entries", "all", 7 + i + extra),
            ("entrance", "dwell", "<30s", 5 + i),
            ("checkout_queue:1", "dwell", "2-5m", 6 + i),
            ("checkout_queue:1", "dwell", "5-15m", 5),
            ("entrance", "demographics", "25-34|female", 6 + i),
            ("entrance", "sentiment", "smiling", 5 + i),
            ("entrance", "sentiment", "negative", 5),
        ):
            out.append(
                {"hour": hour.isoformat(), "zone": zone, "metric": metric}
                | {"bucket": bucket, "count": count}
            )
    return out


@dataclass
class World:
    url: str
    crm: FaceCRM
    stores: dict[str, str]  # code -> id
    agents: dict[str, str]  # code -> device key

    def staff(self, username: str) -> httpx.Client:
        r = httpx.post(
            f"{self.url}/api/v1/auth/token", data={"username": username, "password": PASSWORD}
        )
        assert r.status_code == 200, r.text
        headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def agent(self, code: str) -> httpx.Client:
        headers = {"X-API-Key": self.agents[code]}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def open_world(crm: FaceCRM) -> Iterator[World]:
    stores: dict[str, str] = {}
    agents: dict[str, str] = {}
    with db.transaction(crm.sessions) as session:
        for code in ("T", "O"):
            stores[code] = accounts.create_store(session, code, f"Store <{code}>", SYSTEM).id
            agents[code] = accounts.create_device(session, stores[code], "agent", principal=SYSTEM)[
                1
            ]
        accounts.create_staff(session, "admin", PASSWORD, "admin", [], principal=SYSTEM)
        accounts.create_staff(session, "mt", PASSWORD, "manager", [stores["T"]], principal=SYSTEM)
        accounts.create_staff(
            session, "asc", PASSWORD, "associate", [stores["T"]], principal=SYSTEM
        )
        accounts.create_staff(session, "aud", PASSWORD, "auditor", [], principal=SYSTEM)
    with serve(create_app(crm)) as url:
        world = World(url, crm, stores, agents)
        for code, store in stores.items():
            beat = world.agent(code).post(
                "/api/v1/agent/heartbeat", json={"cameras": [{"camera": CAMERA}]}
            )
            assert beat.status_code == 200, beat.text
            with db.transaction(crm.sessions) as session:
                zones = [{"name": n, "points": p} for n, p in ZONES.items()]
                storeconfig.set_zones(session, SYSTEM, store, CAMERA, zones)
                storeconfig.set_analytics(
                    session, SYSTEM, store, demographics_enabled=True, sentiment_enabled=True
                )
                storeconfig.set_rules(session, SYSTEM, store, {"checkout_queue": {}})
            r = world.agent(code).post("/api/v1/agent/aggregates", json={"rows": rows_for(code)})
            assert r.status_code == 200, r.text
        yield world


@pytest.fixture()
def world(crm: FaceCRM) -> Iterator[World]:
    """SQLite and PostgreSQL."""
    yield from open_world(crm)


def expected(stores: list[str], metrics: set[str], bucket: str = "hour") -> list[tuple]:
    """Sum the seeded rows per period (an independent fold of `rows_for`)."""
    sums: dict[tuple, float] = defaultdict(float)
    for code in stores:
        for r in rows_for(code):
            if r["metric"] not in metrics:
                continue
            hour = datetime.fromisoformat(r["hour"])
            period = hour if bucket == "hour" else hour.replace(hour=0)
            sums[(period.isoformat(), r["zone"], r["metric"], r["bucket"])] += r["count"]
    return sorted((*k, v) for k, v in sums.items())


def period(text: str) -> str:
    return datetime.fromisoformat(text).isoformat()


def got(body: dict[str, Any], metrics: set[str] | None = None) -> list[tuple]:
    return sorted(
        (period(p["period"]), p["zone"], p["metric"], p["bucket"], p["value"])
        for p in body["points"]
        if metrics is None or p["metric"] in metrics
    )


WINDOW = {
    "since": (NOW_HOUR - timedelta(days=8)).isoformat(),
    "until": (NOW_HOUR + timedelta(hours=1)).isoformat(),
}


def test_footfall_and_demographics_as_json_and_csv(world: World) -> None:
    manager, admin = world.staff("mt"), world.staff("admin")
    t = world.stores["T"]
    footfall = {"entries", "dwell"}
    r = manager.get("/api/v1/analytics/footfall", params={**WINDOW, "store_id": t})
    assert r.status_code == 200, r.text
    assert got(r.json()) == expected(["T"], footfall)
    # a manager without store_id reads their stores only; an admin the chain
    mine = manager.get("/api/v1/analytics/footfall", params=WINDOW).json()
    assert got(mine) == expected(["T"], footfall)
    chain = admin.get("/api/v1/analytics/footfall", params=WINDOW).json()
    assert got(chain) == expected(["T", "O"], footfall)
    daily = admin.get("/api/v1/analytics/footfall", params={**WINDOW, "bucket": "day"}).json()
    assert got(daily) == expected(["T", "O"], footfall, "day")

    demo = manager.get("/api/v1/analytics/demographics", params={**WINDOW, "store_id": t})
    assert got(demo.json()) == expected(["T"], {"demographics", "sentiment"})

    # CSV: by format=csv and by the Accept header, the same rows as the JSON
    for extra, headers in (({"format": "csv"}, {}), ({}, {"Accept": "text/csv"})):
        r = manager.get(
            "/api/v1/analytics/footfall", params={**WINDOW, "store_id": t, **extra}, headers=headers
        )
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv"), r.text
        table = list(csv.DictReader(io.StringIO(r.text)))
        assert list(table[0]) == ["period", "zone", "metric", "bucket", "value"]
        rows = sorted(
            (
                datetime.fromisoformat(x["period"]).isoformat(),
                x["zone"],
                x["metric"],
                x["bucket"],
                float(x["value"]),
            )
            for x in table
        )
        assert rows == expected(["T"], footfall)


def test_queues_give_waits_and_alert_response_times(world: World) -> None:
    agent, manager, asc = world.agent("T"), world.staff("mt"), world.staff("asc")
    report = {"camera": CAMERA, "zone": "checkout_queue:1", "trigger": "length"}
    report |= {"queue_length": 7, "waiting_seconds": 90.0, "unhappy_seconds": 0.0}
    ids = []
    for _ in range(3):
        r = agent.post("/api/v1/agent/queue-alerts", json={**report, "confidence": 0.9})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    assert asc.post(f"/api/v1/alerts/{ids[0]}/claim").status_code == 200
    assert asc.post(f"/api/v1/alerts/{ids[1]}/claim").status_code == 200
    assert asc.post(f"/api/v1/alerts/{ids[1]}/ack").status_code == 200
    window = {
        "since": (NOW_HOUR - timedelta(days=8)).isoformat(),
        "until": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        "store_id": world.stores["T"],
        "bucket": "day",
    }
    r = manager.get("/api/v1/analytics/queues", params=window)
    assert r.status_code == 200, r.text
    points = r.json()["points"]
    waits = [p for p in points if p["metric"] == "dwell"]
    assert {p["zone"] for p in waits} == {"checkout_queue:1"}
    assert got({"points": waits}) == [
        x for x in expected(["T"], {"dwell"}, "day") if x[1] == "checkout_queue:1"
    ]
    alerts = {
        (p["zone"], p["metric"], p["bucket"]): p["value"] for p in points if p["zone"] == "queue"
    }
    with world.crm.sessions() as session:
        stored = session.scalars(select(Alert).where(Alert.id.in_(ids))).all()
        claims = [(a.claimed_at - a.created_at).total_seconds() for a in stored if a.claimed_at]
        greets = [
            (a.acknowledged_at - a.created_at).total_seconds() for a in stored if a.acknowledged_at
        ]
    assert alerts[("queue", "alerts", "raised")] == 3
    assert alerts[("queue", "time_to_claim", "count")] == 2
    assert alerts[("queue", "time_to_claim", "median_s")] == round(statistics.median(claims), 1)
    assert alerts[("queue", "time_to_greet", "count")] == 1
    assert alerts[("queue", "time_to_greet", "median_s")] == round(greets[0], 1)
    # nothing per person: the points carry only these keys
    assert all(set(p) == {"period", "zone", "metric", "bucket", "value"} for p in points)


@pytest.mark.parametrize("path", ["footfall", "queues", "demographics"])
def test_who_may_read_which_store(world: World, path: str) -> None:
    url = f"/api/v1/analytics/{path}"
    t, o = world.stores["T"], world.stores["O"]
    assert world.staff("admin").get(url, params={"store_id": o}).status_code == 200
    manager = world.staff("mt")
    assert manager.get(url, params={"store_id": t}).status_code == 200
    assert manager.get(url, params={"store_id": o}).status_code == 403
    assert world.staff("admin").get(url, params={"store_id": "nope"}).status_code == 404
    for client in (world.staff("asc"), world.staff("aud"), world.agent("T")):
        assert client.get(url, params={"store_id": t}).status_code == 403
        assert client.get(url).status_code == 403
    assert httpx.get(world.url + url).status_code == 401


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"bucket": "week"}, None),
        ({"since": "yesterday"}, None),
        ({"until": "2026-13-40"}, None),
        ({"since": "0001-01-01T00:00:00"}, None),
        ({"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"}, "bad_window"),
        (
            {"since": "2025-01-01T00:00:00Z", "until": "2026-03-01T00:00:00Z", "bucket": "day"},
            "bad_window",
        ),
        ({"since": "2026-01-01T00:00:00Z", "until": "2026-03-05T00:00:00Z"}, "bad_window"),
        ({"format": "xml"}, None),
        ({"store_id": "x" * 65}, None),
    ],
)
def test_bad_input_is_a_422(world: World, params: dict[str, str], reason: str | None) -> None:
    admin = world.staff("admin")
    for path in ("footfall", "queues", "demographics"):
        r = admin.get(f"/api/v1/analytics/{path}", params=params)
        assert r.status_code == 422, (path, params, r.text)
        if reason:
            assert r.json()["reason"] == reason


def test_a_window_at_the_bounds_is_accepted(world: World) -> None:
    admin = world.staff("admin")
    day = {"since": "2025-01-01T00:00:00Z", "until": "2026-02-05T00:00:00Z", "bucket": "day"}
    hour = {"since": "2026-01-01T00:00:00", "until": "2026-03-04T00:00:00"}  # naive: UTC
    for params in (day, hour):
        r = admin.get("/api/v1/analytics/footfall", params=params)
        assert r.status_code == 200, r.text


@pytest.fixture()
def local_world(settings: Settings, pipeline: FacePipeline) -> Iterator[World]:
    """SQLite only: the page test (the browser is the cost, not the database)."""
    crm = FaceCRM(settings, pipeline=pipeline)
    yield from open_world(crm)
    crm.engine.dispose()


def series_values(page: Page, chart: str, name: str) -> list[float]:
    values = page.locator(f"#{chart} svg g[data-series='{name}'] [data-value]")
    return [float(v) for v in values.evaluate_all("els => els.map(e => e.dataset.value)")]


def test_the_manager_sees_the_charts_in_the_browser(browser: Browser, local_world: World) -> None:
    from playwright.sync_api import expect

    from browser import log_in, new_context

    world = local_world
    context = new_context(browser, world.url)
    errors: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on(  # CSP reports and the like; a missing favicon is no error of this page
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and "favicon" not in str(m.location.get("url"))
            else None
        ),
    )
    log_in(page, "mt", PASSWORD)
    expect(page.locator("header .who")).to_contain_text("mt")
    page.click("header nav >> text=Analytics")
    page.select_option("#scope select[name=store_id]", world.stores["T"])
    while True:  # the chart's "today" ends at the hour it was drawn: pin that hour
        drawn = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        page.click("#scope button[type=submit]")
        expect(page.locator("h1")).to_contain_text("Store <T>")  # escaped, shown as text
        if datetime.now(UTC).replace(minute=0, second=0, microsecond=0) == drawn:
            break

    # the rows were written at NOW_HOUR (module import); a long suite may draw later
    def day(days_ago: int, length: int) -> list[float]:
        date = (drawn - timedelta(days=days_ago)).date()
        out = [0.0] * length
        for i, hour in enumerate(HOURS):
            if hour.date() == date:
                out[hour.hour] = 7.0 + i
        return out

    assert series_values(page, "chart-footfall", "today") == day(0, drawn.hour + 1)
    assert series_values(page, "chart-footfall", "1 week ago") == day(7, 24)
    assert series_values(page, "chart-footfall", "2 weeks ago") == day(14, 24)
    # waits at the checkouts over 28 days: <30s, 30s-2m, 2-5m, 5-15m, 15m+, other
    assert series_values(page, "chart-queue-waits", "people") == [0, 0, 21, 15, 0, 0]
    assert series_values(page, "chart-demographics", "people") == [21]
    smiling = series_values(page, "chart-sentiment", "smiling")
    assert smiling and all(0 < v < 100 for v in smiling)
    # the other store's counters (100 more entries an hour) are not in the manager's charts
    assert max(series_values(page, "chart-footfall", "today")) < 100
    assert not errors, errors

    page.goto(f"/console/analytics?store_id={world.stores['O']}")
    assert "not one of yours" in page.content()
    context.close()

    associate = new_context(browser, world.url)
    page = associate.new_page()
    log_in(page, "asc", PASSWORD)
    expect(page.locator("header .who")).to_contain_text("asc")
    response = page.goto("/console/analytics")
    assert response is not None and response.status == 403
    assert page.locator("svg").count() == 0
    associate.close()
