"""The store agent on a real video: one visit for the opted-in customer, nothing else."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from sqlalchemy import select

from facecrm.agent.runner import Agent, AgentConfig
from facecrm.config import Settings
from facecrm.crm import activity, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.models import AgentEvent, Alert, AuditEvent, Visit
from facecrm.crm.service import FaceCRM
from facecrm.server import create_app
from facecrm.vision.image import read_image
from facecrm.vision.pipeline import FacePipeline

from server import serve

if TYPE_CHECKING:
    from conftest import VipStore


@dataclass
class Store:
    url: str
    crm: FaceCRM
    store_id: str
    key: str
    lin: str


@pytest.fixture()
def store(vip_store: VipStore) -> Iterator[Store]:
    crm = vip_store.crm
    with db.transaction(crm.sessions) as session:
        activity.add_interest(
            session,
            SYSTEM,
            vip_store.lin,
            vip_store.store_id,
            "Hamilton cast album (vinyl)",
            out_of_stock=True,
        )
    with serve(create_app(crm)) as url:
        yield Store(url, crm, vip_store.store_id, vip_store.key, vip_store.lin)


def run_agent(store: Store, pipeline: FacePipeline, data_dir: Path, video: Path) -> Agent:
    config = AgentConfig(
        server=store.url,
        api_key=store.key,
        cameras=(str(video),),
        data_dir=data_dir,
        realtime=False,
        exit_when_done=True,
    )
    agent = Agent(config, pipeline)
    agent.run()
    return agent


def test_video_gives_one_visit_and_nothing_about_the_stranger(
    store: Store,
    pipeline: FacePipeline,
    faces_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    video = faces_dir / "video" / "short_hamilton_clip.mp4"
    agent = run_agent(store, pipeline, tmp_path / "agent", video)

    with store.crm.sessions() as session:
        visits = session.scalars(select(Visit)).all()
        alerts = session.scalars(select(Alert)).all()
        events = session.scalars(select(AgentEvent)).all()
        audit = session.scalars(select(AuditEvent)).all()
    assert [(v.customer_id, v.store_id, v.source) for v in visits] == [
        (store.lin, store.store_id, "agent")
    ]
    assert len(alerts) == 1
    assert "vip_arrival" in alerts[0].rule and "out_of_stock_return" in alerts[0].rule
    assert "Hamilton cast album" in alerts[0].message
    # every event the agent sent is about Lin; several tracks of him make one visit
    assert {e.outcome for e in events} <= {"visit", "same_visit"}
    assert sum(e.outcome == "visit" for e in events) == 1
    # the other face: only counted
    unknown = agent.metrics.counter("facecrm_agent_unknown_tracks_total")
    assert unknown >= 1
    assert all(a.customer_id in {None, store.lin} for a in audit)
    outbox = sqlite3.connect(tmp_path / "agent" / "outbox.sqlite")
    assert outbox.execute("SELECT count(*) FROM events").fetchone()[0] == 0
    assert not any(p.suffix in {".jpg", ".png", ".npy"} for p in (tmp_path / "agent").rglob("*"))
    # the agent's own lines were captured (else the check below would hold of nothing)
    assert any(r.name == "facecrm.agent.status" for r in caplog.records)
    for record in caplog.records:  # no log line carries a face, a box or a template
        assert "box" not in record.getMessage() and "vector" not in record.getMessage()


def test_events_wait_for_the_server_and_arrive_once(
    store: Store, pipeline: FacePipeline, faces_dir: Path, tmp_path: Path
) -> None:
    agent_dir = tmp_path / "agent"
    config = AgentConfig(
        server="http://127.0.0.1:9",
        api_key=store.key,
        cameras=(),
        data_dir=agent_dir,
        realtime=False,
    )
    offline = Agent(config, pipeline)
    offline.outbox.put(
        "k-00000001",
        {
            "key": "k-00000001",
            "type": "visit",
            "customer_id": store.lin,
            "at": "2026-11-23T10:00:00+00:00",
            "camera": "c1",
            "similarity": 0.95,
        },
    )
    with pytest.raises(httpx.ConnectError):  # the server is down (nothing listens on :9)
        offline.deliver_once()
    assert offline.outbox.depth() == 1
    offline.outbox.close()
    online = Agent(
        AgentConfig(
            server=store.url, api_key=store.key, cameras=(), data_dir=agent_dir, realtime=False
        ),
        pipeline,
    )
    assert online.deliver_once() == 1
    online.outbox.put(
        "k-00000001",
        {
            "key": "k-00000001",
            "type": "visit",  # a resend
            "customer_id": store.lin,
            "at": "2026-11-23T10:00:00+00:00",
            "camera": "c1",
            "similarity": 0.95,
        },
    )
    assert online.deliver_once() == 1
    with store.crm.sessions() as session:
        assert len(session.scalars(select(Visit)).all()) == 1
        assert len(session.scalars(select(AgentEvent)).all()) == 1


@pytest.mark.slow
def test_outbox_survives_kill_9_and_a_server_outage(
    store: Store, faces_dir: Path, tmp_path: Path, settings: Settings
) -> None:
    """The agent queues while the server is down, is killed -9, restarts, and delivers."""
    import os
    import signal
    import subprocess
    import sys

    from server import free_port, serve

    port = free_port()
    env = {
        **os.environ,
        "FACECRM_DATA_DIR": str(tmp_path / "agent-data"),
        "FACECRM_AGENT_KEY": store.key,
    }
    (tmp_path / "agent-data" / "cache").mkdir(parents=True)
    (tmp_path / "agent-data" / "cache" / "models").symlink_to(
        settings.cache_dir / "models", target_is_directory=True
    )
    video = str(faces_dir / "video" / "short_hamilton_clip.mp4")
    cmd = [
        sys.executable,
        "-m",
        "facecrm",
        "agent",
        "--server",
        f"http://127.0.0.1:{port}",
        "--camera",
        video,
    ]
    outbox_path = tmp_path / "agent-data" / "agent" / "outbox.sqlite"

    def synced() -> bool:
        with store.crm.sessions() as session:
            actions = session.scalars(select(AuditEvent.action)).all()
        return "gallery_sync" in actions

    def queued() -> list[str]:
        if not outbox_path.exists():
            return []
        with sqlite3.connect(outbox_path) as outbox:
            return [k for (k,) in outbox.execute("SELECT key FROM events ORDER BY seq")]

    # 1. the agent syncs the gallery, then the server goes down mid-stream (real-time video)
    first = subprocess.Popen(
        [*cmd, "--realtime"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    with serve(create_app(store.crm), port=port):
        wait_until(synced, first)
    # 2. recognised while the server is down: the event waits in the durable outbox
    wait_until(lambda: bool(queued()), first)
    first.send_signal(signal.SIGKILL)  # 3. kill -9
    first.wait(timeout=30)
    waiting = queued()
    assert waiting, "the queued event must survive kill -9"
    # 4. server back, agent restarted: the queued event is delivered first, exactly once
    with serve(create_app(store.crm), port=port):
        second = subprocess.run(
            [*cmd, "--fast", "--exit-when-done"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 0, second.stderr[-2000:]
    with store.crm.sessions() as session:
        visits = session.scalars(select(Visit)).all()
        keys = {e.key: e.outcome for e in session.scalars(select(AgentEvent))}
    assert [v.customer_id for v in visits] == [store.lin]
    assert keys[waiting[0]] == "visit"  # the event from before the crash made the visit
    assert set(keys.values()) <= {"visit", "same_visit"}
    assert queued() == []


class Outage:
    """ASGI middleware: every event delivery fails with 503."""

    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        self.app = app

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "http" and scope["path"] == "/api/v1/agent/events":
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


def wait_until(condition, process, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, "the agent exited early"
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_an_erased_customer_is_a_stranger_to_the_agent(
    store: Store,
    pipeline: FacePipeline,
    faces_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After erasure the video is all strangers: nothing anywhere can be linked to them."""
    caplog.set_level(logging.DEBUG)
    store.crm.delete_customer(store.lin, SYSTEM)
    agent = run_agent(
        store, pipeline, tmp_path / "agent", faces_dir / "video" / "short_hamilton_clip.mp4"
    )
    with store.crm.sessions() as session:
        assert session.scalars(select(Visit)).all() == []
        assert session.scalars(select(AgentEvent)).all() == []
        assert session.scalars(select(Alert)).all() == []
        erased_at = session.scalar(select(AuditEvent.id).where(AuditEvent.action == "erase"))
        after = session.scalars(select(AuditEvent).where(AuditEvent.id > erased_at)).all()
        assert after and all(e.customer_id is None for e in after)  # syncs only
    assert agent.metrics.counter("facecrm_agent_unknown_tracks_total") >= 2
    assert agent.metrics.counter("facecrm_agent_known_tracks_total") == 0
    with sqlite3.connect(tmp_path / "agent" / "outbox.sqlite") as outbox:
        assert outbox.execute("SELECT count(*) FROM events").fetchone()[0] == 0
    files = [p for p in (tmp_path / "agent").rglob("*") if p.is_file()]
    assert all(p.name.startswith("outbox.sqlite") for p in files)
    # the agent's log holds its start-up and status lines (counts only), nothing else
    agent_log = [r for r in caplog.records if r.name.startswith("facecrm.agent")]
    assert agent_log and {r.name for r in agent_log} <= {"facecrm.agent.status"}
    assert not any(store.lin in r.getMessage() for r in agent_log)


@pytest.mark.parametrize("flow", ["erase", "withdraw"])
def test_a_running_agent_forgets_at_once(
    store: Store, pipeline: FacePipeline, faces_dir: Path, tmp_path: Path, flow: str
) -> None:
    from facecrm.crm.models import Purpose

    agent = Agent(
        AgentConfig(server=store.url, api_key=store.key, cameras=(), data_dir=tmp_path / "agent"),
        pipeline,
    )
    assert agent.gallery.sync(agent._client)
    photo = read_image(faces_dir / "identities/lin_manuel_miranda/1.png", store.crm.settings)
    face = pipeline.faces(photo)[0]
    assert agent.gallery.decide(face.template) is not None
    if flow == "erase":
        store.crm.delete_customer(store.lin, SYSTEM)
    else:
        store.crm.withdraw(store.lin, Purpose.IN_STORE_RECOGNITION, SYSTEM)
    assert agent.gallery.sync(agent._client)  # what the agent does every 2 seconds
    assert agent.gallery.decide(face.template) is None
