"""Checkout queues and anonymous footfall (issue 13, items 2 and 3).

The agent runs on scenes composed from real face photos (the face-api.js expression set:
one woman, neutral, frowning, pouting, smiling) pasted into 640x480 frames over time,
and on the real video; the real models, a real server and a real database. What the
agent sends is captured at its HTTP client: only queue alerts and k-anonymous aggregates.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from facecrm.agent.analytics import SAMPLE_SECONDS
from facecrm.agent.runner import Agent, AgentConfig, camera_name
from facecrm.agent.tracker import Tracker
from facecrm.alerts import footfall, storeconfig
from facecrm.config import Settings
from facecrm.crm import accounts, analytics, consent_text, customers, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.customers import ConsentGrant
from facecrm.crm.models import Alert, FootfallAggregate, Purpose
from facecrm.crm.service import FaceCRM, Photo
from facecrm.server import create_app
from facecrm.vision.attributes import default_attribute_stage
from facecrm.vision.image import read_image
from facecrm.vision.pipeline import FacePipeline

from server import serve, staff_client

PASSWORD = "correct horse battery"
CAMERA = "till-cam"
LEFT = [[0.0, 0.0], [0.6, 0.0], [0.6, 1.0], [0.0, 1.0]]
RIGHT = [[0.6, 0.0], [1.0, 0.0], [1.0, 1.0], [0.6, 1.0]]
EXPRESSIONS = "more/expressions"
NEUTRAL, ANGRY, SAD, HAPPY = (
    f"{EXPRESSIONS}/neutral/faceapi_neutral.jpg",
    f"{EXPRESSIONS}/negative/faceapi_angry.jpg",
    f"{EXPRESSIONS}/negative/faceapi_sad.jpg",
    f"{EXPRESSIONS}/smiling/faceapi_happy.jpg",
)


@dataclass
class Shop:
    url: str
    crm: FaceCRM
    store: str
    key: str

    def staff(self, username: str) -> httpx.Client:
        return staff_client(self.url, username, PASSWORD)

    def agent_client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": self.key}, timeout=30)

    def configure(
        self,
        zones: dict[str, list[list[float]]],
        camera: str = CAMERA,
        demographics: bool = True,
        sentiment: bool = True,
        **queue: object,
    ) -> None:
        beat = self.agent_client().post(  # the agent reports the camera first
            "/api/v1/agent/heartbeat", json={"cameras": [{"camera": camera}]}
        )
        assert beat.status_code == 200, beat.text
        with db.transaction(self.crm.sessions) as session:
            storeconfig.set_zones(
                session,
                SYSTEM,
                self.store,
                camera,
                [{"name": n, "points": p} for n, p in zones.items()],
            )
            storeconfig.set_analytics(
                session,
                SYSTEM,
                self.store,
                demographics_enabled=demographics,
                sentiment_enabled=sentiment,
            )
            storeconfig.set_rules(session, SYSTEM, self.store, {"checkout_queue": queue})


def open_shop(crm: FaceCRM) -> Iterator[Shop]:
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "T", "Till store", SYSTEM).id
        other = accounts.create_store(session, "O", "Other store", SYSTEM).id
        _, key = accounts.create_device(session, store, "agent", principal=SYSTEM)
        accounts.create_staff(session, "asc", PASSWORD, "associate", [store], principal=SYSTEM)
        accounts.create_staff(session, "mo", PASSWORD, "manager", [other], principal=SYSTEM)
    with serve(create_app(crm)) as url:
        yield Shop(url, crm, store, key)


@pytest.fixture()
def shop(crm: FaceCRM) -> Iterator[Shop]:
    """SQLite and PostgreSQL: the server side."""
    yield from open_shop(crm)


@pytest.fixture()
def local_shop(settings: Settings, pipeline: FacePipeline) -> Iterator[Shop]:
    """SQLite only: the agent scenes (the models are the cost, not the database)."""
    crm = FaceCRM(settings, pipeline=pipeline)
    yield from open_shop(crm)
    crm.engine.dispose()


# -- scenes ------------------------------------------------------------------------------


class Scene:
    """Frames composed from real face photos: each face a crop pasted at a spot."""

    def __init__(self, pipeline: FacePipeline, faces_dir: Path, settings: Settings) -> None:
        self.pipeline, self.faces_dir, self.settings = pipeline, faces_dir, settings
        self._crops: dict[str, np.ndarray] = {}

    def crop(self, relative: str) -> np.ndarray:
        if relative not in self._crops:
            image = read_image(self.faces_dir / relative, self.settings)
            b = self.pipeline.faces(image, embed=False)[0].box
            cx, cy = b.x + b.width / 2, b.y + b.height / 2
            x0, y0 = int(max(0, cx - 0.75 * b.width)), int(max(0, cy - 0.75 * b.height))
            x1 = int(min(image.shape[1], cx + 0.75 * b.width))
            y1 = int(min(image.shape[0], cy + 0.75 * b.height))
            piece = np.ascontiguousarray(image[y0:y1, x0:x1])
            self._crops[relative] = cv2.resize(piece, (110, 140), interpolation=cv2.INTER_AREA)
        return self._crops[relative]

    def frame(self, placed: list[tuple[str, int, int]]) -> np.ndarray:
        frame = np.full((480, 640, 3), 128, np.uint8)
        for relative, x, y in placed:
            piece = self.crop(relative)
            frame[y : y + piece.shape[0], x : x + piece.shape[1]] = piece
        return frame


@pytest.fixture()
def scene(pipeline: FacePipeline, faces_dir: Path, settings: Settings) -> Scene:
    return Scene(pipeline, faces_dir, settings)


def start(shop: Shop, pipeline: FacePipeline, data_dir: Path) -> tuple[Agent, list[httpx.Request]]:
    """An agent of the shop whose every request is kept (method, path, body)."""
    agent = Agent(
        AgentConfig(
            server=shop.url, api_key=shop.key, cameras=(), data_dir=data_dir, realtime=False
        ),
        pipeline,
        attributes=lambda: default_attribute_stage(shop.crm.settings),
    )
    sent: list[httpx.Request] = []
    agent._client.event_hooks["request"].append(sent.append)
    agent.gallery.sync(agent._client)
    assert agent.analytics.refresh(agent._client)
    return agent, sent


def play(agent: Agent, frames: list[tuple[float, np.ndarray]], camera: str = CAMERA) -> None:
    tracker = Tracker(camera)
    for at, frame in frames:
        agent.process(tracker, frame, at, camera)
    agent.analytics.finish()
    agent.analytics.send(agent._client, final=True)


def bodies(sent: list[httpx.Request], path: str) -> list[dict[str, Any]]:
    return [json.loads(r.content) for r in sent if r.url.path == f"/api/v1/{path}"]


def t0() -> float:
    """Five minutes into the previous (closed) UTC hour."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return (now - timedelta(minutes=55)).timestamp()


STEP = 0.8  # seconds between frames (the tracker ends a track after 1 s unseen)


def queue_frames(scene: Scene, seconds: float, who: list[tuple[str, str, int, int]]) -> list[Any]:
    """`who`: (photo before 20 s, photo after, x, y) per person, all in the queue zone."""
    start_at, frames = t0(), []
    for i in range(int(seconds / STEP)):
        at = start_at + i * STEP
        placed = [(before if at - start_at < 20 else after, x, y) for before, after, x, y in who]
        frames.append((at, scene.frame(placed)))
    return frames


# -- item 2: queues ----------------------------------------------------------------------


def alerts_of(shop: Shop) -> list[Alert]:
    with shop.crm.sessions() as session:
        return list(session.scalars(select(Alert).order_by(Alert.id)))


@pytest.mark.parametrize("consents", [False, True])
def test_a_customer_who_waited_and_looks_unhappy_raises_one_queue_alert(
    local_shop: Shop,
    pipeline: FacePipeline,
    scene: Scene,
    load: Any,
    tmp_path: Path,
    consents: bool,
) -> None:
    """Ada queues at till 2: neutral for 20 s, then frowning. Bo beside her pouts all the
    time (her own baseline: never "unhappy"). N = 1 min, M = 10 s, K = 6."""
    shop = local_shop
    ada = shop.crm.enroll("Ada", [Photo("still", load(NEUTRAL))], CURRENT, "kiosk", SYSTEM)
    if consents:
        with db.transaction(shop.crm.sessions) as session:
            consent_text.create_version(
                session, SYSTEM, Purpose.EXPERIENCE_ANALYTICS, "en", "Queue help."
            )
            customers.give_consent(
                session, SYSTEM, ada.id, ConsentGrant(Purpose.EXPERIENCE_ANALYTICS, None, "kiosk")
            )
    shop.configure(
        {"checkout_queue:2": LEFT, "floor": RIGHT}, wait_minutes=1.0, unhappy_seconds=10.0
    )
    agent, sent = start(shop, pipeline, tmp_path / "agent")
    frames = queue_frames(scene, 75, [(NEUTRAL, ANGRY, 30, 150), (SAD, SAD, 220, 150)])
    play(agent, frames)

    (alert,) = alerts_of(shop)
    assert alert.kind == "queue" and alert.store_id == shop.store
    assert alert.message == (
        "Checkout 2: a customer has waited 1 min and looks unhappy — open a till / send someone"
    )
    assert alert.customer_id == (ada.id if consents else None)
    # zone, length, wait and confidence, in words for staff; never a face or a box
    assert alert.reasons[0] == f"Zone checkout_queue:2 on camera {CAMERA}: 2 in the queue," + (
        " the longest wait 1 min."
    )
    assert alert.reasons[1].startswith("Confidence ")
    (report,) = bodies(sent, "agent/queue-alerts")
    assert report["trigger"] == "unhappy" and report["zone"] == "checkout_queue:2"
    assert report["queue_length"] == 2 and 60 <= report["waiting_seconds"] < 62
    assert report["unhappy_seconds"] >= 10 and report["confidence"] >= 0.6
    assert set(report) == {
        "camera",
        "zone",
        "trigger",
        "queue_length",
        "waiting_seconds",
        "unhappy_seconds",
        "confidence",
        "customer_id",
    }
    # attributes at most once per track per second, not per frame
    sampled = agent.metrics.counter("facecrm_agent_attribute_faces_total")
    assert 0 < sampled <= 2 * (75 / SAMPLE_SECONDS + 1) < 2 * len(frames)
    # staff handle it like any alert
    staff = shop.staff("asc")
    assert [a["kind"] for a in staff.get("/api/v1/alerts").json()] == ["queue"]
    assert staff.post(f"/api/v1/alerts/{alert.id}/claim").status_code == 200
    assert staff.post(f"/api/v1/alerts/{alert.id}/ack").status_code == 200


def test_a_calm_queue_raises_nothing_and_a_long_one_does(
    local_shop: Shop, pipeline: FacePipeline, scene: Scene, tmp_path: Path
) -> None:
    shop = local_shop
    shop.configure({"checkout_queue:2": LEFT}, wait_minutes=1.0, unhappy_seconds=10.0)
    agent, sent = start(shop, pipeline, tmp_path / "calm")
    # neutral throughout, and a pouting face that is pouting from the start: no alert
    play(agent, queue_frames(scene, 75, [(NEUTRAL, NEUTRAL, 30, 150), (SAD, SAD, 220, 150)]))
    assert alerts_of(shop) == [] and bodies(sent, "agent/queue-alerts") == []

    shop.configure({"checkout_queue:2": LEFT}, max_length=3)
    agent, sent = start(shop, pipeline, tmp_path / "long")
    three = [(NEUTRAL, NEUTRAL, 10, 150), (HAPPY, HAPPY, 135, 150), (SAD, SAD, 260, 150)]
    play(agent, queue_frames(scene, 14, three))
    (alert,) = alerts_of(shop)
    assert alert.message == "Checkout 2: 3 people are queuing — open a till / send someone"
    assert alert.customer_id is None
    (report,) = bodies(sent, "agent/queue-alerts")
    assert (report["trigger"], report["queue_length"], report["customer_id"]) == ("length", 3, None)


def test_queue_alerts_name_only_consenting_customers_and_refuse_bad_reports(shop: Shop) -> None:
    shop.configure({"checkout_queue:2": LEFT})
    agent = shop.agent_client()
    base = {
        "camera": CAMERA,
        "zone": "checkout_queue:2",
        "trigger": "unhappy",
        "queue_length": 2,
        "waiting_seconds": 400.0,
        "unhappy_seconds": 40.0,
        "confidence": 0.8,
    }
    bad = [
        ({**base, "zone": "checkout_queue:3"}, 422, "unknown_zone"),
        ({**base, "zone": "floor"}, 422, "bad_zone"),
        ({**base, "camera": "elsewhere"}, 422, "unknown_zone"),
        ({**base, "confidence": 1.5}, 422, None),
        ({**base, "trigger": "angry"}, 422, None),
        ({**base, "customer_id": "x" * 40}, 422, None),
    ]
    for body, status, reason in bad:
        r = agent.post("/api/v1/agent/queue-alerts", json=body)
        assert r.status_code == status, (body, r.text)
        if reason:
            assert r.json()["reason"] == reason
    # an unknown or non-consenting customer id is dropped, never stored
    r = agent.post("/api/v1/agent/queue-alerts", json={**base, "customer_id": "nobody"})
    assert r.status_code == 201, r.text
    assert r.json()["customer_id"] is None
    assert [a.customer_id for a in alerts_of(shop)] == [None]
    # a store that switched sentiment off gets no "unhappy" alert
    shop.configure({"checkout_queue:2": LEFT}, sentiment=False)
    r = agent.post("/api/v1/agent/queue-alerts", json=base)
    assert (r.status_code, r.json()["reason"]) == (409, "analytics_off")
    shop.configure({"checkout_queue:2": LEFT}, enabled=False)
    r = agent.post("/api/v1/agent/queue-alerts", json={**base, "trigger": "length"})
    assert (r.status_code, r.json()["reason"]) == (409, "rule_off")
    assert len(alerts_of(shop)) == 1


# -- item 3: footfall --------------------------------------------------------------------


def passers_by(scene: Scene, people: list[str]) -> list[tuple[float, np.ndarray]]:
    """Each person stands 3 s in the entrance (right side), then 2 s of empty frame."""
    frames, at = [], t0()
    empty = scene.frame([])
    for photo in people:
        for _ in range(4):
            frames.append((at, scene.frame([(photo, 470, 170)])))
            at += STEP
        for _ in range(3):
            frames.append((at, empty))
            at += STEP
    return frames


def stored_rows(shop: Shop) -> list[tuple[datetime, str, str, str, int]]:
    with shop.crm.sessions() as session:
        return analytics.stored(session, shop.store)


def test_footfall_leaves_the_agent_as_k_anonymous_hourly_counters(
    local_shop: Shop, pipeline: FacePipeline, scene: Scene, settings: Settings, tmp_path: Path
) -> None:
    shop = local_shop
    shop.configure({"entrance": RIGHT, "floor": LEFT})
    people = [HAPPY] * 6 + [ANGRY] * 5 + [NEUTRAL] * 2
    frames = passers_by(scene, people)
    agent, sent = start(shop, pipeline, tmp_path / "agent")
    play(agent, frames)

    # what the models say about each photo in these frames, independently of the agent
    stage = default_attribute_stage(settings)
    truth: dict[str, tuple[str, str]] = {}
    for photo in (HAPPY, NEUTRAL, ANGRY):
        frame = scene.frame([(photo, 470, 170)])
        (a,) = stage.estimate(frame, pipeline.faces(frame, embed=False))
        truth[photo] = (f"{a.age_band}|{a.gender}", a.sentiment)
    # the scene is built on these: the woman smiling and neutral falls in one group
    assert truth[HAPPY][0] == truth[NEUTRAL][0] != truth[ANGRY][0], truth
    assert [t[1] for t in truth.values()] == ["smiling", "neutral", "negative"], truth

    (body,) = bodies(sent, "agent/aggregates")
    hour = datetime.fromtimestamp(frames[0][0], UTC).replace(minute=0, second=0, microsecond=0)
    expected = {
        ("entrance", "entries", "all", 13),
        ("entrance", "dwell", "<30s", 13),
        ("entrance", "demographics", truth[HAPPY][0], 8),
        ("entrance", "demographics", truth[ANGRY][0], 5),
        # 6 / 5 / 2: the 2 go to "other", still < 5, so the next smallest (5) joins them
        ("entrance", "sentiment", "smiling", 6),
        ("entrance", "sentiment", "other", 7),
    }
    assert {(r["zone"], r["metric"], r["bucket"], r["count"]) for r in body["rows"]} == expected
    assert {r["hour"] for r in body["rows"]} == {hour.isoformat()}
    for row in body["rows"]:  # counters only: no track, no time of a person, no face
        assert set(row) == {"hour", "zone", "metric", "bucket", "count"} and row["count"] >= 5
    # the server received only these, for the device's store
    assert {(z, m, b, n) for h, z, m, b, n in stored_rows(shop)} == expected
    paths = {r.url.path for r in sent}
    assert paths <= {"/api/v1/agent/sync", "/api/v1/agent/analytics", "/api/v1/agent/aggregates"}


def test_with_the_switches_off_no_attribute_is_computed(
    local_shop: Shop, pipeline: FacePipeline, scene: Scene, tmp_path: Path
) -> None:
    shop = local_shop
    shop.configure({"entrance": RIGHT}, demographics=False, sentiment=False)
    agent, sent = start(shop, pipeline, tmp_path / "agent")

    def no_models() -> Any:
        raise AssertionError("an attribute model was asked for with both switches off")

    agent.analytics._models_factory = no_models
    play(agent, passers_by(scene, [HAPPY] * 6))
    assert agent.metrics.counter("facecrm_agent_attribute_faces_total") == 0
    (body,) = bodies(sent, "agent/aggregates")
    assert {r["metric"] for r in body["rows"]} == {"entries", "dwell"}


def test_small_counts_never_leave(
    local_shop: Shop, pipeline: FacePipeline, scene: Scene, tmp_path: Path
) -> None:
    shop = local_shop
    shop.configure({"entrance": RIGHT})
    agent, sent = start(shop, pipeline, tmp_path / "agent")
    play(agent, passers_by(scene, [HAPPY, NEUTRAL, ANGRY, HAPPY]))
    assert bodies(sent, "agent/aggregates") == [] and stored_rows(shop) == []


def test_the_agent_on_the_real_video(
    local_shop: Shop, pipeline: FacePipeline, faces_dir: Path, tmp_path: Path
) -> None:
    """Zones over the whole picture, both switches on: the attributes run once a second per
    track, and what leaves is only what is at least 5 (here: nothing or `other`)."""
    shop = local_shop
    video = faces_dir / "video" / "short_hamilton_clip.mp4"
    whole = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
    shop.configure({"entrance": whole}, camera=camera_name(str(video)))
    config = AgentConfig(
        server=shop.url,
        api_key=shop.key,
        cameras=(str(video),),
        data_dir=tmp_path / "agent",
        realtime=False,
        exit_when_done=True,
    )
    agent = Agent(config, pipeline, attributes=lambda: default_attribute_stage(shop.crm.settings))
    sent: list[httpx.Request] = []
    agent._client.event_hooks["request"].append(sent.append)
    agent.run()
    frames = agent.metrics.counter("facecrm_agent_frames_total", camera=camera_name(str(video)))
    sampled = agent.metrics.counter("facecrm_agent_attribute_faces_total")
    assert frames > 0 and 0 < sampled < frames
    for body in bodies(sent, "agent/aggregates"):
        assert all(r["count"] >= footfall.MIN_COUNT for r in body["rows"])
    assert all(n >= footfall.MIN_COUNT for *_, n in stored_rows(shop))
    assert bodies(sent, "agent/queue-alerts") == []


# -- the server's ingest -----------------------------------------------------------------


def test_small_buckets_are_merged_and_small_groups_dropped() -> None:
    h = datetime(2026, 11, 26, 10, tzinfo=UTC)
    rows = footfall.k_anonymous(
        {
            (h, "floor", "dwell"): {"<30s": 9, "30s-2m": 3, "2-5m": 2},
            (h, "floor", "sentiment"): {"smiling": 6, "neutral": 2},
            (h, "entrance", "entries"): {"all": 4},
        }
    )
    assert rows == [
        (h, "floor", "dwell", "<30s", 9),
        (h, "floor", "dwell", "other", 5),
        (h, "floor", "sentiment", "other", 8),
    ]


def test_aggregates_are_validated_whole_and_added(shop: Shop) -> None:
    shop.configure({"entrance": RIGHT, "checkout_queue:1": LEFT}, demographics=False)
    agent = shop.agent_client()
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    good = {"hour": hour.isoformat(), "zone": "entrance", "metric": "entries", "bucket": "all"}
    rows = [
        {**good, "count": 7},
        {**good, "metric": "dwell", "bucket": "<30s", "count": 5},
        {**good, "zone": "checkout_queue:1", "metric": "sentiment", "bucket": "other", "count": 9},
    ]
    bad = [
        ({**good, "count": 4}, "k_anonymity"),
        ({**good, "hour": (hour + timedelta(minutes=30)).isoformat(), "count": 5}, "bad_hour"),
        ({**good, "hour": (hour + timedelta(hours=3)).isoformat(), "count": 5}, "bad_hour"),
        ({**good, "hour": (hour - timedelta(days=60)).isoformat(), "count": 5}, "bad_hour"),
        ({**good, "zone": "floor", "count": 5}, "unknown_zone"),
        ({**good, "metric": "faces", "count": 5}, "bad_bucket"),
        ({**good, "metric": "dwell", "bucket": "1h", "count": 5}, "bad_bucket"),
        ({**good, "metric": "demographics", "bucket": "25-34|female", "count": 5}, "analytics_off"),
        (rows[0], "duplicate_row"),
    ]
    for row, reason in bad:
        r = agent.post("/api/v1/agent/aggregates", json={"rows": [*rows, row]})
        assert (r.status_code, r.json().get("reason")) == (422, reason), (row, r.text)
    for body in (
        {"rows": [{**good, "hour": hour.replace(tzinfo=None).isoformat(), "count": 5}]},
        {"rows": [{**good, "count": "5"}]},
        {"rows": [{**good, "count": 5}] * (analytics.MAX_ROWS + 1)},
        {"rows": "nope"},
    ):
        assert agent.post("/api/v1/agent/aggregates", json=body).status_code == 422
    with shop.crm.sessions() as session:
        assert session.scalar(select(func.count()).select_from(FootfallAggregate)) == 0

    # the store is the device's: a store_id in the body changes nothing
    r = agent.post("/api/v1/agent/aggregates", json={"rows": rows, "store_id": "other"})
    assert r.json() == {"stored": 3}
    assert agent.post("/api/v1/agent/aggregates", json={"rows": rows[:1]}).status_code == 200
    assert stored_rows(shop) == [
        (hour, "checkout_queue:1", "sentiment", "other", 9),
        (hour, "entrance", "dwell", "<30s", 5),
        (hour, "entrance", "entries", "all", 14),
    ]
    # staff cannot post aggregates; devices of no store are refused by the device check
    manager = shop.staff("mo")
    assert manager.post("/api/v1/agent/aggregates", json={"rows": rows}).status_code == 403
