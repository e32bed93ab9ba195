"""Drawing zones on a camera snapshot (issue 13, item 1), against a real server and the real
agent code path on real video frames (tests/data/video):

* a store's manager asks for a snapshot; the agent learns it from its sync, uploads one JPEG
  of the camera's next frame with every face pixelated; the manager reads it once, then it
  is gone (and gone after the TTL unread); nothing of it is written to the database or any
  file; request and view are audited;
* another store's manager, an associate and the agent itself are refused;
* in real Chromium: the manager's editor shows the snapshot, a polygon drawn by clicks is
  saved into the store config, and a self-crossing one gets the API's 422 reason on the page.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import httpx
import numpy as np
import pytest
from sqlalchemy import select

from facecrm.agent.runner import Agent, AgentConfig, camera_name
from facecrm.agent.tracker import Tracker
from facecrm.config import Settings
from facecrm.crm import accounts, db, snapshots
from facecrm.crm.authz import SYSTEM
from facecrm.crm.models import AuditEvent
from facecrm.crm.service import FaceCRM
from facecrm.server import create_app
from facecrm.vision.pipeline import FacePipeline

from server import serve

if TYPE_CHECKING:
    from playwright.sync_api import Browser

PASSWORD = "correct horse battery"
CLIP = Path(__file__).parent / "data" / "video" / "short_hamilton_clip.mp4"


def clip_frames(step: int = 10) -> list[np.ndarray]:
    """Every `step`-th frame of the real clip, RGB."""
    capture = cv2.VideoCapture(str(CLIP))
    frames = []
    index = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if index % step == 0:
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        index += 1
    capture.release()
    assert frames
    return frames


def check_snapshot(jpeg: bytes, frames: list[np.ndarray], pipeline: FacePipeline) -> None:
    """The snapshot is a real frame of the clip (JPEG noise only, outside the faces), and
    every face the frame shows is pixelated: the detector finds none in it."""
    image = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), 4)
    assert image.shape == frames[0].shape
    frame = min(frames, key=lambda f: float(np.mean(cv2.absdiff(image, f))))
    faces = pipeline.detector.detect(frame)
    assert faces  # the clip shows a face: the check below is not vacuous
    outside = np.ones(frame.shape[:2], bool)
    for face in faces:
        b = face.box
        x0, y0 = max(0, int(b.x - 0.3 * b.width)), max(0, int(b.y - 0.3 * b.height))
        outside[y0 : int(b.y + 1.3 * b.height) + 1, x0 : int(b.x + 1.3 * b.width) + 1] = False
    assert float(np.mean(cv2.absdiff(image, frame)[outside])) < 4.0
    assert pipeline.detector.detect(image) == []


@dataclass
class Shop:
    url: str
    app: Any
    crm: FaceCRM
    store: str
    other: str
    key: str

    def as_(self, username: str) -> httpx.Client:
        r = httpx.post(
            f"{self.url}/api/v1/auth/token", data={"username": username, "password": PASSWORD}
        )
        assert r.status_code == 200, r.text
        headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def device(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": self.key}, timeout=30)


def open_shop(crm: FaceCRM) -> Iterator[Shop]:
    with db.transaction(crm.sessions) as session:
        a = accounts.create_store(session, "A", "Store A", SYSTEM).id
        b = accounts.create_store(session, "B", "Store B", SYSTEM).id
        accounts.create_staff(session, "ma", PASSWORD, "manager", [a], principal=SYSTEM)
        accounts.create_staff(session, "mb", PASSWORD, "manager", [b], principal=SYSTEM)
        accounts.create_staff(session, "sa", PASSWORD, "associate", [a], principal=SYSTEM)
    app = create_app(crm)
    with serve(app) as url:
        shop = Shop(url, app, crm, a, b, "")
        made = shop.as_("ma").post(
            "/api/v1/devices", json={"store_id": a, "kind": "agent", "name": "door"}
        )
        shop.key = made.json()["api_key"]
        yield shop


@pytest.fixture()
def shop(crm: FaceCRM) -> Iterator[Shop]:
    yield from open_shop(crm)


def snapshot_events(crm: FaceCRM) -> list[tuple[str, str | None, Any]]:
    with crm.sessions() as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "camera_snapshot").order_by(AuditEvent.id)
        )
        return [(e.actor, e.store_id, dict(e.detail)) for e in rows]


def agent_uploads(agent: Agent, frames: list[np.ndarray], camera: str) -> int:
    """The agent's own path: its sync sees the flag, `send_snapshots` waits for the camera's
    next frame while the camera thread (here: this loop) processes real frames."""
    agent.gallery.sync(agent._client)
    assert agent.gallery.snapshot_requested
    sent: list[int] = []
    worker = threading.Thread(target=lambda: sent.append(agent.send_snapshots(wait=20)))
    worker.start()
    tracker = Tracker(camera)
    i = 0
    while worker.is_alive():
        agent.process(tracker, frames[i % len(frames)], time.time(), camera)
        i += 1
        time.sleep(0.05)
    worker.join()
    agent.gallery.sync(agent._client)
    assert not agent.gallery.snapshot_requested  # the flag is down once it was uploaded
    return sent[0]


def test_a_snapshot_is_uploaded_on_request_read_once_and_never_stored(
    shop: Shop, pipeline: FacePipeline, settings: Settings, tmp_path: Path
) -> None:
    frames = clip_frames()
    camera = camera_name(str(CLIP))
    agent = Agent(AgentConfig(shop.url, shop.key, (str(CLIP),), tmp_path / "agent"), pipeline)
    assert agent.heartbeat()  # the camera is now one the store knows
    ma, mb, sa, device = shop.as_("ma"), shop.as_("mb"), shop.as_("sa"), shop.device()
    path = f"/api/v1/stores/{shop.store}/snapshots"
    status = f"{path}/status"

    # refusals: nothing is requested by any of them
    assert sa.post(path, json={"camera": camera}).status_code == 403  # associate
    assert mb.post(path, json={"camera": camera}).status_code == 403  # another store
    assert device.post(path, json={"camera": camera}).status_code == 403
    r = ma.post(path, json={"camera": "rtsp://not-reported"})
    assert (r.status_code, r.json()["reason"]) == (422, "unknown_camera")
    r = device.put("/api/v1/agent/snapshots", params={"camera": camera}, content=b"\xff\xd8\xff")
    assert (r.status_code, r.json()["reason"]) == (422, "bad_image")
    _, good = cv2.imencode(".jpg", cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR))
    r = device.put("/api/v1/agent/snapshots", params={"camera": camera}, content=good.tobytes())
    assert (r.status_code, r.json()["reason"]) == (409, "not_requested")
    assert device.get("/api/v1/agent/sync").headers.get("x-facecrm-snapshot") is None
    assert shop.app.state.snapshots.held() == 0

    r = ma.post(path, json={"camera": camera})
    assert r.status_code == 202, r.text
    assert ma.get(status, params={"camera": camera}).json() == {"status": "pending"}
    assert agent_uploads(agent, frames, camera) == 1
    assert ma.get(status, params={"camera": camera}).json() == {"status": "ready"}
    # only the store's managers see it
    assert mb.get(path, params={"camera": camera}).status_code == 403
    assert sa.get(path, params={"camera": camera}).status_code == 403
    assert device.get(path, params={"camera": camera}).status_code == 403
    assert mb.get(status, params={"camera": camera}).status_code == 403
    r = ma.get(path, params={"camera": camera})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    jpeg = r.content
    check_snapshot(jpeg, frames, pipeline)
    # read once: gone
    r = ma.get(path, params={"camera": camera})
    assert (r.status_code, r.json()["reason"]) == (404, "no_snapshot")
    assert ma.get(status, params={"camera": camera}).json() == {"status": "none"}
    assert shop.app.state.snapshots.held() == 0

    # unread, it is gone after the TTL
    assert ma.post(path, json={"camera": camera}).status_code == 202
    assert agent_uploads(agent, frames, camera) == 1
    store: snapshots.Snapshots = shop.app.state.snapshots
    real = store._clock
    store._clock = lambda: real() + snapshots.TTL_SECONDS + 1
    try:
        assert ma.get(status, params={"camera": camera}).json() == {"status": "none"}
        assert ma.get(path, params={"camera": camera}).status_code == 404
        assert store.held() == 0
    finally:
        store._clock = real

    # never written: not in the database, not in any file of the server's or agent's data
    needle = jpeg[len(jpeg) // 2 : len(jpeg) // 2 + 64]
    for root in (settings.data_dir, tmp_path):
        for file in root.rglob("*"):
            if file.is_file() and not file.is_symlink():
                assert needle not in file.read_bytes(), file

    events = snapshot_events(shop.crm)
    assert [(a, s, d["step"]) for a, s, d in events] == [
        ("staff:ma", shop.store, "request"),
        ("staff:ma", shop.store, "view"),
        ("staff:ma", shop.store, "request"),
    ]
    assert all(d["camera"] == camera for _, _, d in events)


def test_snapshots_are_bounded_and_expire(crm: FaceCRM) -> None:
    """The in-memory store never holds more than MAX_ENTRIES, and nothing past the TTL."""
    now = [0.0]
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "S", "S", SYSTEM).id
    shots = snapshots.Snapshots(crm.sessions, clock=lambda: now[0])
    with shots._lock:
        for i in range(snapshots.MAX_ENTRIES):
            shots._entries[(store, f"cam{i}")] = snapshots._Entry(now[0])
    assert shots.held() == snapshots.MAX_ENTRIES
    now[0] = snapshots.TTL_SECONDS
    assert shots.held() == 0


@pytest.fixture()
def local_shop(settings: Settings, pipeline: FacePipeline) -> Iterator[Shop]:
    """SQLite only: the browser is the cost of the page test, not the database."""
    crm = FaceCRM(settings, pipeline=pipeline)
    yield from open_shop(crm)
    crm.engine.dispose()


def test_the_manager_draws_a_zone_on_the_snapshot_in_the_browser(
    browser: Browser, local_shop: Shop, pipeline: FacePipeline, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    from browser import log_in, new_context

    shop = local_shop
    frames = clip_frames()
    # a long video of real frames (3 fps, ~90 s) for the running agent's camera
    video = tmp_path / "till-camera.avi"
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 3, (width, height))
    for i in range(270):
        writer.write(cv2.cvtColor(frames[i % len(frames)], cv2.COLOR_RGB2BGR))
    writer.release()
    config = AgentConfig(shop.url, shop.key, (str(video),), tmp_path / "agent", sync_seconds=0.3)
    agent = Agent(config, pipeline)
    runner = threading.Thread(target=agent.run)
    runner.start()
    camera = camera_name(str(video))
    try:
        context = new_context(browser, shop.url, timeout_ms=40_000)
        errors: list[str] = []
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        shots: list[bytes] = []
        page.on(
            "response",
            lambda r: shots.append(r.body()) if "/zones/snapshot?" in r.url and r.ok else None,
        )
        log_in(page, "ma", PASSWORD)
        expect(page.locator("header .who")).to_contain_text("ma")
        page.goto(f"/console/stores/{shop.store}")
        page.click("#zones-link")
        expect(page.locator("#zone-camera option")).to_have_text(camera)
        page.click("#snapshot-ask")
        expect(page.locator("#snapshot-state")).to_have_text("snapshot shown (not stored)")
        assert page.eval_on_selector("#snapshot", "i => i.naturalWidth") == width
        assert len(shots) == 1
        check_snapshot(shots[0], frames, pipeline)
        assert shop.app.state.snapshots.held() == 0  # shown, and gone from the server

        svg = page.locator("#zone-svg")
        box = svg.bounding_box()
        assert box is not None
        corners = [(0.2, 0.3), (0.6, 0.3), (0.6, 0.8), (0.2, 0.8)]
        for x, y in corners:
            svg.click(position={"x": x * box["width"], "y": y * box["height"]})
        page.select_option("#zone-kind", "checkout_queue")
        page.fill("#zone-till", "2")
        page.click("#zone-close")
        page.click("#zone-save")
        expect(page.locator("#zone-saved")).to_have_text("saved: checkout_queue:2")

        config_now = shop.as_("ma").get(f"/api/v1/stores/{shop.store}/config").json()
        (zone,) = config_now["zones"][camera]
        assert zone["name"] == "checkout_queue:2"
        assert np.allclose(zone["points"], corners, atol=0.01)

        # a self-crossing polygon: the API's 422 reason on the page, nothing changed
        for x, y in [(0.1, 0.1), (0.4, 0.4), (0.4, 0.1), (0.1, 0.4)]:
            svg.click(position={"x": x * box["width"], "y": y * box["height"]})
        page.select_option("#zone-kind", "entrance")
        page.click("#zone-close")
        page.click("#zone-save")
        expect(page.locator("#zone-error")).to_contain_text("zone_self_intersecting")
        again = shop.as_("ma").get(f"/api/v1/stores/{shop.store}/config").json()
        assert again["zones"] == config_now["zones"]
        assert not errors, errors
        context.close()

        # another store's manager: not their store, no editor, no snapshot
        other = new_context(browser, shop.url)
        page = other.new_page()
        log_in(page, "mb", PASSWORD)
        expect(page.locator("header .who")).to_contain_text("mb")
        response = page.goto(f"/console/stores/{shop.store}/zones")
        assert response is not None and response.status == 403
        assert page.locator("#zone-editor").count() == 0
        other.close()
    finally:
        agent.stop.set()
        runner.join(60)
