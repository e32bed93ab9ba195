"""Agent operations: summary lines, fail-fast cameras, masked camera URLs, camera health."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from sqlalchemy import select

from facecrm.agent.runner import Agent, AgentConfig
from facecrm.alerts.cameras import CameraHealthService, CameraReport
from facecrm.config import Settings
from facecrm.crm import accounts, db
from facecrm.crm.authz import SYSTEM, Principal
from facecrm.crm.errors import ConflictError
from facecrm.crm.models import Alert, AuditEvent, CameraHealth, Device, Visit
from facecrm.crm.service import FaceCRM
from facecrm.logs import configure_logging, mask_secrets
from facecrm.server import create_app
from facecrm.vision.pipeline import FacePipeline
from receiver import Receiver

from server import serve

if TYPE_CHECKING:
    from conftest import VipStore

PASSWORD, QUERY_SECRET = "hunter2-cam", "qs-hunter3"
CLIP = "video/short_hamilton_clip.mp4"


# -- masking ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("rtsp://admin:pw@10.0.0.7:554/s1", "rtsp://admin:***@10.0.0.7:554/s1"),
        ("open 'rtsp://u:p@ss@h/x' failed", "open 'rtsp://u:***@h/x' failed"),
        ("http://cam/api?user=a&password=b&ch=1", "http://cam/api?user=a&password=***&ch=1"),
        ("http://h/x?token=t;pwd=p#f", "http://h/x?token=***;pwd=***#f"),
        (
            "rtsp://host:554/s rtsp://u@h/ 0 /v/clip.mp4",
            "rtsp://host:554/s rtsp://u@h/ 0 /v/clip.mp4",
        ),
        ("rtsp://u:***@h/?password=***", "rtsp://u:***@h/?password=***"),  # idempotent
    ],
)
def test_mask_secrets(text: str, masked: str) -> None:
    assert mask_secrets(text) == masked


def test_the_handler_masks_what_any_library_logs(capsys: pytest.CaptureFixture[str]) -> None:
    """A library logger's record is masked by the handler, not just facecrm's loggers."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging()
        url = f"rtsp://cam:{PASSWORD}@10.1.2.3/live?password={QUERY_SECRET}"
        logging.getLogger("some.library").warning("cannot open %s", url)
        logging.getLogger("facecrm.agent").warning(f"camera {url} is down")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert "rtsp://cam:***@10.1.2.3/live?password=***" in err
    assert PASSWORD not in err and QUERY_SECRET not in err


# -- a camera with a password, served over HTTP with Basic auth ------------------------


class _Camera(BaseHTTPRequestHandler):
    """An IP camera: the clip behind Basic auth, with byte ranges (ffmpeg seeks in MP4)."""

    data = b""

    def do_GET(self) -> None:
        expected = "Basic " + base64.b64encode(f"cam:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="camera"')
            self.end_headers()
            return
        size = len(self.data)
        match = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        start = int(match.group(1)) if match else 0
        end = int(match.group(2)) if match and match.group(2) else size - 1
        self.send_response(206 if match else 200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Accept-Ranges", "bytes")
        if match:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(self.data[start : end + 1])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def camera_url(faces_dir: Path) -> Iterator[str]:
    handler = type("Camera", (_Camera,), {"data": (faces_dir / CLIP).read_bytes()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    yield f"http://cam:{PASSWORD}@127.0.0.1:{port}/clip.mp4?password={QUERY_SECRET}"
    server.shutdown()


@pytest.fixture()
def live(vip_store: VipStore) -> Iterator[tuple[VipStore, str]]:
    with serve(create_app(vip_store.crm)) as url:
        yield vip_store, url


def _until(condition: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_camera_password_never_leaves_the_agent(
    live: tuple[VipStore, str],
    camera_url: str,
    pipeline: FacePipeline,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A real camera URL with a password (and a wrong one that fails to open): the agent
    recognises Lin on it, and the password is in no log record, no native output, no
    metric, no status line and nothing the server stores."""
    store, url = live
    caplog.set_level(logging.DEBUG)
    wrong = camera_url.replace(PASSWORD, PASSWORD + "-wrong")
    config = AgentConfig(
        server=url,
        api_key=store.key,
        cameras=(camera_url, wrong),
        data_dir=tmp_path / "agent",
        realtime=False,
        summary_seconds=0.5,
        heartbeat_seconds=0.5,
    )
    agent = Agent(config, pipeline)
    runner = threading.Thread(target=agent.run)
    runner.start()
    try:
        with store.crm.sessions() as session:
            _until(lambda: session.scalar(select(Visit.id)) is not None)
        _until(
            lambda: (
                agent.metrics.counter("facecrm_agent_frames_total", camera=agent.names[camera_url])
                > 0
            )
        )
        metrics = agent.metrics.render()
        time.sleep(1.0)  # a status line and a heartbeat after the first frames
    finally:
        agent.stop.set()
        runner.join(timeout=60)
    masked = f"http://cam:***@127.0.0.1:{camera_url.split(':')[3].split('/')[0]}"
    out, err = capfd.readouterr()
    messages = "\n".join(r.getMessage() for r in caplog.records)
    with store.crm.sessions() as session:
        cameras = session.scalars(select(CameraHealth.camera)).all()
        audit = "\n".join(str(e.detail) for e in session.scalars(select(AuditEvent)))
    everything = "\n".join([out, err, messages, metrics, *cameras, audit])
    assert PASSWORD not in everything and QUERY_SECRET not in everything
    assert any(masked in m and "started" in m for m in messages.splitlines())
    assert any("cannot open" in m and masked in m for m in messages.splitlines())
    assert sorted(cameras) == sorted(agent.names.values())
    assert all(c.startswith(masked) and "password=***" in c for c in cameras)  # "#2": the other


def test_status_lines_and_camera_health_from_a_real_run(
    live: tuple[VipStore, str],
    faces_dir: Path,
    pipeline: FacePipeline,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, url = live
    caplog.set_level(logging.INFO, logger="facecrm.agent.status")
    video = str(faces_dir / CLIP)
    config = AgentConfig(
        server=url,
        api_key=store.key,
        cameras=(video,),
        data_dir=tmp_path / "agent",
        realtime=False,
        exit_when_done=True,
        summary_seconds=0.5,
    )
    started = datetime.now(UTC)
    Agent(config, pipeline).run()
    lines = [r.getMessage() for r in caplog.records if r.name == "facecrm.agent.status"]
    first = lines[0]
    assert f"store {store.store_id}" in first and "1 camera(s)" in first, first
    assert "gallery 1 template(s) of 1 customer(s)" in first and pipeline.model_id in first
    status = [line for line in lines if line.startswith("agent status:")]
    assert len(status) >= 2, lines  # periodic, and the last one at the end
    final = status[-1]
    frames = int(re.search(r"(\d+) frames", final).group(1))  # type: ignore[union-attr]
    known = int(re.search(r"tracks known (\d+)", final).group(1))  # type: ignore[union-attr]
    unknown = int(re.search(r"unknown (\d+)", final).group(1))  # type: ignore[union-attr]
    assert frames == 275 and known >= 1 and unknown >= 1 and "queue 0" in final, final
    with store.crm.sessions() as session:
        health = session.scalars(select(CameraHealth)).one()
    assert health.camera == video and health.store_id == store.store_id
    assert health.last_frame_at is not None and health.last_frame_at >= started
    assert health.silent_alert_id is None


# -- fail fast -------------------------------------------------------------------------


def _agent_cli(tmp_path: Path, *cameras: str) -> subprocess.CompletedProcess[str]:
    args = [a for c in cameras for a in ("--camera", c)]
    env = {**os.environ, "FACECRM_DATA_DIR": str(tmp_path / "data"), "FACECRM_AGENT_KEY": "k"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "facecrm",
            "agent",
            "--server",
            "http://127.0.0.1:9",
            *args,
            "--exit-when-done",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("camera", "reason"),
    [
        ("{tmp}/missing.mp4", "no such file"),
        ("{tmp}/notes.mp4", "the file cannot be read as video"),
        ("7", "no camera at device index 7"),
        (f"rtsp://admin:{PASSWORD}@127.0.0.1:1/s?password={QUERY_SECRET}", "cannot be opened"),
    ],
)
def test_exit_when_done_fails_fast_on_a_camera_that_cannot_work(
    tmp_path: Path, camera: str, reason: str
) -> None:
    (tmp_path / "notes.mp4").write_text("not a video")
    camera = camera.format(tmp=tmp_path)
    began = time.monotonic()
    done = _agent_cli(tmp_path, camera)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and reason in errors[0] and "(camera_unavailable)" in errors[0]
    assert "Traceback" not in done.stderr
    assert PASSWORD not in done.stderr + done.stdout and QUERY_SECRET not in done.stderr
    if "rtsp" in camera:
        assert "rtsp://admin:***@127.0.0.1:1/s?password=***" in errors[0]
    assert time.monotonic() - began < 60  # no retries, no model load


# -- camera_silent alerts --------------------------------------------------------------


@pytest.fixture()
def shop(crm: FaceCRM) -> tuple[str, Device]:
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "LYO1", "Lyon", SYSTEM)
        device, _ = accounts.create_device(session, store.id, "agent", principal=SYSTEM)
        store_id = store.id
        session.flush()
        session.expunge(device)
    return store_id, device


def _silence(crm: FaceCRM, store_id: str, minutes: float) -> None:
    from facecrm.alerts.service import AlertService

    AlertService(crm).configure_store(
        SYSTEM, store_id, {"camera_silent": {"minutes": minutes}}, None, None
    )


def test_one_helper_gives_a_device_its_store(crm: FaceCRM, shop: tuple[str, Device]) -> None:
    """`accounts.device_store` is what visits and heartbeats both use: same store, same
    refusal for a principal without one."""
    from facecrm.alerts.service import AlertService

    store_id, device = shop
    assert accounts.device_store(accounts.device_principal(device)) == store_id
    nowhere = Principal("device", "d0", "lost", "agent", frozenset())
    with pytest.raises(ConflictError, match="no store"):
        accounts.device_store(nowhere)
    with pytest.raises(ConflictError, match="no store"):
        CameraHealthService(crm).heartbeat(nowhere, [CameraReport("door", None)])
    with pytest.raises(ConflictError, match="no store"):
        AlertService(crm).ingest(nowhere, [])
    with crm.sessions() as session:
        assert session.scalars(select(CameraHealth)).all() == []


def _camera_alerts(crm: FaceCRM) -> list[Alert]:
    with crm.sessions() as session:
        return list(
            session.scalars(select(Alert).where(Alert.kind == "camera_silent").order_by(Alert.id))
        )


def test_camera_silent_is_raised_once_and_cleared(crm: FaceCRM, shop: tuple[str, Device]) -> None:
    from facecrm.alerts.service import AlertService

    store_id, device = shop
    _silence(crm, store_id, 1)
    agent = accounts.device_principal(device)
    service = CameraHealthService(crm)
    other = CameraHealthService(FaceCRM(crm.settings, pipeline=crm.pipeline))  # a 2nd process
    t0 = datetime.now(UTC)
    service.heartbeat(agent, [CameraReport("door", t0)], now=t0)
    assert service.check(t0 + timedelta(seconds=59)).raised == 0

    # silent for a minute: both "processes" check, at once and repeatedly; one alert
    later = t0 + timedelta(seconds=61)
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda s=s: results.append(s.check(later).raised))
        for s in (service, other, service, other)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 1
    views = service.heartbeat(agent, [CameraReport("door", t0)], now=later)  # still old frames
    assert [(v.camera, v.silent) for v in views] == [("door", True)]
    (alert,) = _camera_alerts(crm)
    assert (alert.camera, alert.customer_id, alert.closed_at) == ("door", None, None)
    assert alert.store_id == store_id and "camera door" in alert.message
    # an ordinary alert: in the live list of the store's alerts
    (listed,) = AlertService(crm).open_alerts(SYSTEM)
    assert (listed.id, listed.kind, listed.camera) == (alert.id, "camera_silent", "door")

    # frames return: resolved (once), and the next silence is a new alert
    back = later + timedelta(seconds=5)
    views = service.heartbeat(agent, [CameraReport("door", back)], now=back)
    assert [v.silent for v in views] == [False]
    assert other.check(back).cleared == 0
    (alert,) = _camera_alerts(crm)
    assert alert.closed_at is not None and alert.outcome == "resolved"
    assert alert.closed_by is None  # the server, not a staff member
    with crm.sessions() as session:
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.action.like("camera_%"))
        ).all()
    assert sorted(actions) == ["camera_back", "camera_silent"]
    assert AlertService(crm).open_alerts(SYSTEM) == []
    assert [a.outcome for a in AlertService(crm).history(SYSTEM)] == ["resolved"]
    assert service.check(back + timedelta(minutes=2)).raised == 1
    assert len(_camera_alerts(crm)) == 2


def test_staff_closing_a_camera_alert_keeps_it_raised_once(
    crm: FaceCRM, shop: tuple[str, Device]
) -> None:
    """A manager who dismisses the alert while the camera is still silent gets no second
    alert for the same silence; the camera coming back does not reopen or re-close it."""
    from facecrm.alerts.service import AlertService

    store_id, device = shop
    _silence(crm, store_id, 1)
    agent = accounts.device_principal(device)
    service = CameraHealthService(crm)
    t0 = datetime.now(UTC)
    service.heartbeat(agent, [CameraReport("door", t0)], now=t0)
    assert service.check(t0 + timedelta(minutes=2)).raised == 1
    (alert,) = _camera_alerts(crm)
    alerts = AlertService(crm)
    assert alerts.dismiss(SYSTEM, alert.id).outcome == "dismissed"
    assert service.check(t0 + timedelta(minutes=3)).raised == 0
    back = t0 + timedelta(minutes=4)
    assert [v.silent for v in service.heartbeat(agent, [CameraReport("door", back)], now=back)] == [
        False
    ]
    (alert,) = _camera_alerts(crm)
    assert alert.outcome == "dismissed"


def test_a_dead_agent_is_noticed_by_the_server_and_only_managers_hear(
    vip_store: VipStore, settings: Settings
) -> None:
    """No heartbeat at all: the server's own checker raises the alert; the live stream, the
    alert list and the store's webhook give it to the store's managers, not to associates,
    and managers claim and acknowledge it like any alert."""
    crm = vip_store.crm
    crm.settings.camera_check_seconds = 0.2
    crm.settings.webhook_allow_hosts = ["127.0.0.1"]
    crm.settings.webhook_allow_http = True
    hook = Receiver()
    from facecrm.alerts.service import AlertService

    AlertService(crm).configure_store(
        SYSTEM, vip_store.store_id, {"camera_silent": {"minutes": 0.05}}, hook.url, "s" * 32
    )  # 3 s
    with db.transaction(crm.sessions) as session:
        accounts.create_staff(
            session, "mgr", "manager-pass-1", "manager", [vip_store.store_id], principal=SYSTEM
        )
        accounts.create_staff(
            session, "asc", "associate-pass-1", "associate", [vip_store.store_id], principal=SYSTEM
        )
    with serve(create_app(crm)) as url, httpx.Client(base_url=url, timeout=30) as client:

        def token(user: str, password: str) -> dict[str, str]:
            body = client.post("/api/v1/auth/token", data={"username": user, "password": password})
            return {"Authorization": f"Bearer {body.json()['access_token']}"}

        manager, associate = token("mgr", "manager-pass-1"), token("asc", "associate-pass-1")
        heard: dict[str, str] = {"mgr": "", "asc": ""}
        connected = threading.Barrier(3, timeout=30)

        def listen(who: str, headers: dict[str, str]) -> None:
            with client.stream("GET", "/api/v1/alerts/stream", headers=headers, timeout=20) as s:
                started = time.monotonic()
                for line in s.iter_lines():
                    heard[who] += line + "\n"
                    if line == ": connected":
                        connected.wait()
                    if line.startswith("data:") or time.monotonic() - started > 10:
                        return

        listeners = [
            threading.Thread(target=listen, args=("mgr", manager)),
            threading.Thread(target=listen, args=("asc", associate)),
        ]
        for t in listeners:
            t.start()
        connected.wait()  # both streams are open: now the camera reports, then falls silent
        beat = client.post(
            "/api/v1/agent/heartbeat",
            headers={"X-API-Key": vip_store.key},
            json={"cameras": [{"camera": "door", "last_frame_at": datetime.now(UTC).isoformat()}]},
        )
        assert beat.status_code == 200 and beat.json()[0]["silent"] is False
        for t in listeners:
            t.join(timeout=30)
        cams = client.get(f"/api/v1/stores/{vip_store.store_id}/cameras", headers=manager)
        (alert,) = client.get("/api/v1/alerts", headers=manager).json()
        hidden = client.get("/api/v1/alerts", headers=associate).json()
        refused = client.post(f"/api/v1/alerts/{alert['id']}/claim", headers=associate)
        claimed = client.post(f"/api/v1/alerts/{alert['id']}/claim", headers=manager)
        acked = client.post(f"/api/v1/alerts/{alert['id']}/ack", headers=manager)
        gone = client.get(f"/api/v1/stores/{vip_store.store_id}/camera-alerts", headers=manager)
    assert "event: alert" in heard["mgr"] and '"kind": "camera_silent"' in heard["mgr"]
    assert '"camera": "door"' in heard["mgr"] and '"customer_id": null' in heard["mgr"]
    assert "camera_silent" not in heard["asc"]
    assert [(c["camera"], c["silent"]) for c in cams.json()] == [("door", True)]
    assert (alert["kind"], alert["camera"], alert["customer_id"]) == ("camera_silent", "door", None)
    assert hidden == [] and refused.status_code == 404
    assert claimed.status_code == 200 and claimed.json()["claimed_by"] is not None
    assert acked.status_code == 200 and acked.json()["outcome"] == "greeted"
    assert gone.status_code == 404  # no separate camera alert list any more
    ((_, body),) = hook.wait(1)
    assert json.loads(body)["kind"] == "camera_silent" and json.loads(body)["id"] == alert["id"]
    hook.server.shutdown()


def test_heartbeat_input_is_bounded(live: tuple[VipStore, str]) -> None:
    store, url = live
    key = {"X-API-Key": store.key}
    bad = [
        {"cameras": [{"camera": "x" * 101}]},
        {"cameras": [{"camera": "door", "last_frame_at": "2026-11-01T10:00:00"}]},  # no offset
        {"cameras": [{"camera": f"c{i}"} for i in range(65)]},
        {"queue_depth": -1},
    ]
    with httpx.Client(base_url=url, timeout=30) as client:
        codes = [
            client.post("/api/v1/agent/heartbeat", headers=key, json=b).status_code for b in bad
        ]
        anonymous = client.post("/api/v1/agent/heartbeat", json={"cameras": []}).status_code
    assert codes == [422] * 4 and anonymous == 401
    with store.crm.sessions() as session:
        assert session.scalars(select(CameraHealth)).all() == []
