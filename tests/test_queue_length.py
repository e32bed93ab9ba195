"""Queue length stored per checkout zone and hour (issue 13, items 2 and 4).

The agent's analytics (its real code, fed the tracks a queue scene gives) keep, per checkout
zone and hour, the distinct people, the most at once, person-seconds and seconds watched;
they leave only for hours at least `footfall.MIN_COUNT` people queued in. The real server
checks and stores them (a second part of the same hour adds, except `max`: the larger), and
`/analytics/queues` and the dashboard show mean and max. SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest

from facecrm.agent.analytics import Analytics, no_models
from facecrm.agent.tracker import Track
from facecrm.alerts import footfall
from facecrm.crm import accounts, analytics, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.service import FaceCRM
from facecrm.server import create_app
from facecrm.vision.types import Box, Face
from facecrm.web.dashboard import charts

from server import serve

PASSWORD = "correct horse battery"
CAMERA = "till-cam"
QUEUE = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]  # the left half of the picture
ENTRANCE = [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]
FRAME = np.zeros((480, 640, 3), np.uint8)
HOUR = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)


@dataclass
class Shop:
    url: str
    crm: FaceCRM
    store: str
    key: str
    manager: httpx.Client

    def device(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": self.key}, timeout=30)


@pytest.fixture()
def shop(crm: FaceCRM) -> Iterator[Shop]:
    """A store with a till camera whose left half is `checkout_queue:1`."""
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "Q", "Queue store", SYSTEM).id
        accounts.create_staff(session, "mq", PASSWORD, "manager", [store], principal=SYSTEM)
    with serve(create_app(crm)) as url:
        r = httpx.post(f"{url}/api/v1/auth/token", data={"username": "mq", "password": PASSWORD})
        token = r.json()["access_token"]
        manager = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        made = manager.post("/api/v1/devices", json={"store_id": store, "kind": "agent"})
        shop = Shop(url, crm, store, made.json()["api_key"], manager)
        beat = {"cameras": [{"camera": CAMERA, "last_frame_at": None}]}
        assert shop.device().post("/api/v1/agent/heartbeat", json=beat).status_code == 200
        zones = [
            {"name": "checkout_queue:1", "points": QUEUE},
            {"name": "entrance", "points": ENTRANCE},
        ]
        body = {"camera": CAMERA, "zones": zones}
        assert manager.put(f"/api/v1/stores/{store}/zones", json=body).status_code == 200
        yield shop


def run_queue(agent: Analytics, start: datetime, schedule: list[list[str]]) -> None:
    """One frame a second; `schedule[i]` names the people standing in the queue at second i
    (each a track with a face in the left half). Tracks that left are no longer passed."""
    tracks: dict[str, Track] = {}
    for i, present in enumerate(schedule):
        at = start.timestamp() + i
        faces = []
        live = []
        for n, who in enumerate(present):
            box = Box(20.0 + 60 * n, 200.0, 50.0, 50.0)
            track = tracks.setdefault(who, Track(CAMERA, at, at, box))
            track.last_seen, track.box = at, box
            faces.append(Face(box, np.zeros((5, 2), np.float32), 0.9))
            live.append(track)
        agent.observe(CAMERA, FRAME, faces, live, at)


def integral(schedule: list[list[str]]) -> tuple[int, int]:
    """(person-seconds, seconds) of a one-frame-a-second schedule: each gap is counted with
    the queue length at its end."""
    return sum(len(p) for p in schedule[1:]), len(schedule) - 1


def queue_rows(rows: list[tuple[datetime, str, str, str, int]]) -> dict[str, int]:
    return {b: n for _, _, m, b, n in rows if m == footfall.QUEUE_METRIC}


def test_queue_length_leaves_the_agent_per_hour_and_is_shown(shop: Shop) -> None:
    device = shop.device()
    agent = Analytics(no_models)
    assert agent.refresh(device)  # the store's zones, from the server
    first = [["p1", "p2", "p3"]] * 60 + [["p4", "p5"]] * 60 + [["p6"]] * 30 + [[]] * 5
    run_queue(agent, HOUR + timedelta(minutes=5), first)
    agent.send(device)
    with shop.crm.sessions() as session:
        stored = analytics.stored(session, shop.store)
    person_seconds, seconds = integral(first)
    assert queue_rows(stored) == {
        "people": 6,
        "max": 3,
        "person_seconds": person_seconds,
        "seconds": seconds,
    }
    assert all(z == "checkout_queue:1" for _, z, m, _, _ in stored if m == "queue_length")
    assert all(n >= footfall.MIN_COUNT for _, _, m, _, n in stored if m != "queue_length")

    # a second part of the same hour (a restarted agent): sums add, max stays the larger
    second = [["q1", "q2"]] * 20 + [["q3", "q4", "q5"]] * 20
    run_queue(agent, HOUR + timedelta(minutes=30), second)
    agent.send(device)
    more_ps, more_s = integral(second)
    with shop.crm.sessions() as session:
        stored = analytics.stored(session, shop.store)
    assert queue_rows(stored) == {
        "people": 11,
        "max": 3,
        "person_seconds": person_seconds + more_ps,
        "seconds": seconds + more_s,
    }

    # fewer than MIN_COUNT people in an hour: its queue numbers never leave
    run_queue(agent, HOUR + timedelta(hours=1), [["r1", "r2"]] * 30 + [["r3", "r4"]] * 30)
    assert not [r for r in agent.closed_rows(final=True) if r["metric"] == "queue_length"]

    until = datetime.now(UTC).isoformat()
    window = {"store_id": shop.store, "since": HOUR.isoformat(), "until": until}
    got = shop.manager.get("/api/v1/analytics/queues", params=window).json()["points"]
    lengths = {p["bucket"]: p["value"] for p in got if p["metric"] == "queue_length"}
    mean = round((person_seconds + more_ps) / (seconds + more_s), 2)
    assert lengths == {
        "people": 11,
        "max": 3,
        "person_seconds": person_seconds + more_ps,
        "seconds": seconds + more_s,
        "mean": mean,
    }
    csv = shop.manager.get("/api/v1/analytics/queues", params={**window, "format": "csv"}).text
    assert f"checkout_queue:1,queue_length,mean,{mean}" in csv

    with shop.crm.sessions() as session:
        drawn = str(charts(session, SYSTEM, shop.store)["queue_length"])
    series = {
        name: [float(v) for v in re.findall(r'data-value="([^"]+)"', body)]
        for name, body in re.findall(r'data-series="(\w+)"(.*?)</g>', drawn, re.S)
    }
    assert series == {"mean": [mean], "max": [3.0]}


def row(bucket: str, count: int, zone: str = "checkout_queue:1") -> dict[str, Any]:
    return {
        "hour": HOUR.isoformat(),
        "zone": zone,
        "metric": "queue_length",
        "bucket": bucket,
        "count": count,
    }


@pytest.mark.parametrize(
    ("rows", "reason"),
    [
        ([row("max", 2), row("seconds", 600)], "k_anonymity"),  # no people row
        ([row("people", 4), row("max", 2)], "k_anonymity"),  # fewer than 5 people
        ([row("people", 5, "entrance"), row("max", 2, "entrance")], "bad_zone"),
        ([row("people", 5), row("other", 5)], "bad_bucket"),
        ([row("people", 5), row("max", -1)], None),  # pydantic: counts are >= 0
    ],
)
def test_bad_queue_rows_are_refused_whole(
    shop: Shop, rows: list[dict[str, Any]], reason: str | None
) -> None:
    good = {
        "hour": HOUR.isoformat(),
        "zone": "entrance",
        "metric": "entries",
        "bucket": "all",
        "count": 7,
    }
    r = shop.device().post("/api/v1/agent/aggregates", json={"rows": [good, *rows]})
    assert r.status_code == 422, r.text
    if reason:
        assert r.json()["reason"] == reason
    with shop.crm.sessions() as session:
        assert analytics.stored(session, shop.store) == []
