"""Zones per camera and the analytics switches, through the store config API (real server,
SQLite and PostgreSQL): valid zones are stored and shown in the config in force; every
invalid one is a 422 with its reason and changes nothing; only the store's managers may."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from facecrm.alerts import zones
from facecrm.crm import accounts, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.models import AuditEvent
from facecrm.crm.service import FaceCRM
from facecrm.errors import InvalidError
from facecrm.server import create_app

from server import serve, staff_client

PASSWORD = "correct horse battery"
CAMERA = "rtsp://door-cam/stream"
SQUARE = [[0.1, 0.1], [0.4, 0.1], [0.4, 0.5], [0.1, 0.5]]


@dataclass
class Shop:
    url: str
    store: str
    other: str

    def as_(self, username: str) -> httpx.Client:
        return staff_client(self.url, username, PASSWORD)


@pytest.fixture()
def shop(crm: FaceCRM) -> Iterator[Shop]:
    """Stores A and B, their managers, and A's agent that has reported one camera."""
    with db.transaction(crm.sessions) as session:
        a = accounts.create_store(session, "A", "Store A", SYSTEM).id
        b = accounts.create_store(session, "B", "Store B", SYSTEM).id
        accounts.create_staff(session, "ma", PASSWORD, "manager", [a], principal=SYSTEM)
        accounts.create_staff(session, "mb", PASSWORD, "manager", [b], principal=SYSTEM)
    with serve(create_app(crm)) as url:
        shop = Shop(url, a, b)
        made = shop.as_("ma").post(
            "/api/v1/devices", json={"store_id": a, "kind": "agent", "name": "door"}
        )
        key = made.json()["api_key"]
        beat = httpx.post(
            f"{url}/api/v1/agent/heartbeat",
            headers={"X-API-Key": key},
            json={"cameras": [{"camera": CAMERA, "last_frame_at": None}]},
            timeout=30,  # a first request on a loaded machine can take more than 5 s
        )
        assert beat.status_code == 200, beat.text
        yield shop


def zone(name: str, points: Any) -> dict[str, Any]:
    return {"name": name, "points": points}


def zones_circle(n: int) -> list[tuple[float, float]]:
    return [(math.cos(2 * math.pi * i / n), math.sin(2 * math.pi * i / n)) for i in range(n)]


BAD: list[tuple[dict[str, Any], str]] = [
    ({"camera": "rtsp://nope", "zones": [zone("entrance", SQUARE)]}, "unknown_camera"),
    ({"camera": CAMERA + "\x00", "zones": [zone("entrance", SQUARE)]}, "unknown_camera"),
    ({"camera": CAMERA, "zones": [zone("exit", SQUARE)]}, "zone_name"),
    ({"camera": CAMERA, "zones": [zone("checkout_queue:0", SQUARE)]}, "zone_name"),
    ({"camera": CAMERA, "zones": [zone("checkout_queue:x", SQUARE)]}, "zone_name"),
    ({"camera": CAMERA, "zones": [zone("entrance", SQUARE[:2])]}, "zone_points"),
    (  # a bow tie: two edges cross
        {"camera": CAMERA, "zones": [zone("floor", [[0, 0], [1, 1], [1, 0], [0, 1]])]},
        "zone_self_intersecting",
    ),
    (
        {"camera": CAMERA, "zones": [zone("floor", [[0.1, 0.1], [1.2, 0.1], [0.5, 0.9]])]},
        "zone_out_of_frame",
    ),
    (
        {"camera": CAMERA, "zones": [zone("floor", [[-0.01, 0.1], [0.9, 0.1], [0.5, 0.9]])]},
        "zone_out_of_frame",
    ),
    (  # 65 points on a circle: one too many
        {
            "camera": CAMERA,
            "zones": [zone("floor", [[0.5 + 0.4 * c, 0.5 + 0.4 * s] for c, s in zones_circle(65)])],
        },
        "zone_points",
    ),
    (  # a collinear outline folds back on itself
        {"camera": CAMERA, "zones": [zone("floor", [[0, 0], [0.5, 0.5], [1, 1]])]},
        "zone_self_intersecting",
    ),
    (  # too small to hold anyone
        {"camera": CAMERA, "zones": [zone("floor", [[0.5, 0.5], [0.5001, 0.5], [0.5, 0.5001]])]},
        "zone_points",
    ),
    (
        {"camera": CAMERA, "zones": [zone("entrance", SQUARE), zone("entrance", SQUARE)]},
        "zone_duplicate",
    ),
]


def test_zones_are_set_per_camera_and_bad_ones_change_nothing(shop: Shop, crm: FaceCRM) -> None:
    ma = shop.as_("ma")
    config = ma.get(f"/api/v1/stores/{shop.store}/config").json()
    assert config["zones"] == {}
    assert (config["demographics_enabled"], config["sentiment_enabled"]) == (False, False)

    queue = [[0.5, 0.2], [0.9, 0.2], [0.9, 0.9], [0.7, 0.95], [0.5, 0.9]]
    circle = [[0.5 + 0.4 * c, 0.5 + 0.4 * s] for c, s in zones_circle(64)]  # 64: the limit
    body = {
        "camera": CAMERA,
        "zones": [zone("entrance", SQUARE), zone("checkout_queue:2", queue), zone("floor", circle)],
    }
    r = ma.put(f"/api/v1/stores/{shop.store}/zones", json=body)
    assert r.status_code == 200, r.text
    stored = r.json()["zones"][CAMERA]
    assert [z["name"] for z in stored] == ["entrance", "checkout_queue:2", "floor"]
    assert stored[1]["points"] == queue
    before = ma.get(f"/api/v1/stores/{shop.store}/config").json()
    assert before["zones"] == r.json()["zones"]

    for bad, reason in BAD:
        refused = ma.put(f"/api/v1/stores/{shop.store}/zones", json=bad)
        assert refused.status_code == 422, (bad, refused.text)
        assert refused.json()["reason"] == reason, (bad, refused.json())
    # malformed bodies are 422 too (FastAPI's validation), never a 500
    for malformed in (
        {"camera": CAMERA, "zones": [zone("floor", [[0.1, 0.2, 0.3], [0.5, 0.5], [0.2, 0.9]])]},
        {"camera": CAMERA, "zones": [zone("floor", "0,0 1,1 0,1")]},
        {"camera": CAMERA, "zones": [{"name": "floor"}]},
        {"camera": CAMERA, "zones": [zone("floor", [[0.1, 0.1]] * 300)]},
        {"camera": "", "zones": []},
    ):
        assert ma.put(f"/api/v1/stores/{shop.store}/zones", json=malformed).status_code == 422
    nan = '{"camera": "%s", "zones": [{"name": "floor", "points": [[NaN, 0], [1, 0], [1, 1]]}]}'
    r = ma.put(
        f"/api/v1/stores/{shop.store}/zones",
        content=nan % CAMERA,
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422
    assert ma.get(f"/api/v1/stores/{shop.store}/config").json() == before  # nothing changed

    # another store's manager may neither see nor change them
    mb = shop.as_("mb")
    assert mb.put(f"/api/v1/stores/{shop.store}/zones", json=body).status_code == 403
    # an empty list removes the camera's zones
    emptied = ma.put(f"/api/v1/stores/{shop.store}/zones", json={"camera": CAMERA, "zones": []})
    assert emptied.json()["zones"] == {}
    with crm.sessions() as session:
        changed = session.scalars(
            select(AuditEvent.detail).where(AuditEvent.action == "store_config")
        ).all()
    assert sum(1 for d in changed if d.get("changed") == "zones") == 2


def test_demographics_and_sentiment_are_off_until_a_manager_turns_them_on(shop: Shop) -> None:
    ma = shop.as_("ma")
    on = {"demographics_enabled": True, "sentiment_enabled": False}
    r = ma.put(f"/api/v1/stores/{shop.store}/analytics", json=on)
    assert r.status_code == 200, r.text
    assert (r.json()["demographics_enabled"], r.json()["sentiment_enabled"]) == (True, False)
    other = ma.get(f"/api/v1/stores/{shop.store}/config").json()
    assert other["demographics_enabled"] is True
    assert shop.as_("mb").put(f"/api/v1/stores/{shop.store}/analytics", json=on).status_code == 403
    r = ma.put(f"/api/v1/stores/{shop.store}/analytics", json={"demographics_enabled": True})
    assert r.status_code == 422
    assert (
        shop.as_("mb").get(f"/api/v1/stores/{shop.other}/config").json()["demographics_enabled"]
        is False
    )


@pytest.mark.parametrize(
    ("points", "simple"),
    [
        ([(0, 0), (1, 0), (1, 1), (0, 1)], True),
        ([(0, 0), (1, 1), (1, 0), (0, 1)], False),  # bow tie
        ([(0, 0), (1, 0), (0.5, 0), (0.5, 1)], False),  # an edge runs back over its neighbour
        ([(0, 0), (1, 0), (1, 1), (0.5, 0), (0, 1)], False),  # a vertex touches an edge
        ([(0, 0), (1, 0), (1, 1), (1, 0), (0, 1)], False),  # a repeated vertex
        ([(0, 0), (2, 0), (2, 2), (1, 0.5), (0, 2)], True),  # concave is fine
    ],
)
def test_simple_polygons(points: list[tuple[float, float]], simple: bool) -> None:
    assert zones.is_simple(points) is simple


def test_a_hostile_zone_list_is_refused_before_any_work() -> None:
    with pytest.raises(InvalidError) as caught:
        zones.checked([zone("floor", SQUARE)] * (zones.MAX_ZONES + 1))
    assert caught.value.reason == "zone_count"
