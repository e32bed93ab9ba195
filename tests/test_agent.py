"""The store agent on a real video: one visit for the opted-in customer, nothing else."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from facecrm.agent.runner import Agent, AgentConfig
from facecrm.api.app import create_app
from facecrm.config import Settings
from facecrm.crm import accounts, activity, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.models import AgentEvent, Alert, AuditEvent, Visit
from facecrm.crm.service import FaceCRM, Photo
from facecrm.vision.image import read_image
from facecrm.vision.pipeline import FacePipeline

from server import serve


@dataclass
class Store:
    url: str
    crm: FaceCRM
    store_id: str
    key: str
    lin: str


@pytest.fixture()
def store(settings: Settings, pipeline: FacePipeline, faces_dir: Path) -> Iterator[Store]:
    crm = FaceCRM(settings, pipeline=pipeline)
    with db.transaction(crm.sessions) as session:
        shop = accounts.create_store(session, "NYC", "Broadway")
        _, key = accounts.create_device(session, shop.id, "agent")
        store_id = shop.id
    lin = crm.enroll(
        "Lin-Manuel Miranda",
        [Photo("still", read_image(faces_dir / "identities/lin_manuel_miranda/1.png"))],
        "v1",
        "kiosk",
        profile={"tier": "vip"},
    )
    with db.transaction(crm.sessions) as session:
        activity.add_interest(
            session, SYSTEM, lin.id, store_id, "Hamilton cast album (vinyl)", out_of_stock=True
        )
    with serve(create_app(crm)) as url:
        yield Store(url, crm, store_id, key, lin.id)
    crm.engine.dispose()


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
    with pytest.raises(Exception):  # noqa: B017 - the server is down
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
