"""Several server processes on one PostgreSQL (issue 12, item 2).

Real `facecrm serve` processes on the embedded PostgreSQL: alerts raised through one
reach the live streams of the other (LISTEN/NOTIFY), an erasure through one is unknown
through the other at once, and the log-in throttle and the identification limit count
across both (`throttle_counters`). The counters themselves run on both databases.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psycopg
import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from conftest import new_postgres_database
from facecrm.alerts.bus import PostgresAlertBus
from facecrm.config import Settings
from facecrm.crm import accounts, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.models import ThrottleCounter
from facecrm.crm.service import FaceCRM, Photo
from facecrm.crm.throttle import DatabaseCounters, LoginGuard, RateLimiter
from facecrm.vision.image import read_image
from facecrm.vision.pipeline import FacePipeline

from server import free_port

if TYPE_CHECKING:
    from pgserver import PgServer

SRC = Path(__file__).resolve().parents[1] / "src"
PASSWORD = "correct horse battery"
JUNK = {"image": ("x.jpg", b"not a photo", "image/jpeg")}


# -- the counters, on both databases ------------------------------------------------------


def _two_processes(database_url: str) -> tuple[DatabaseCounters, DatabaseCounters]:
    """Two engines on one database, as two server processes have."""
    first = db.make_engine(database_url)
    db.migrate(first)
    return DatabaseCounters(first, b"k"), DatabaseCounters(db.make_engine(database_url), b"k")


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_limits_are_shared_by_every_process_on_the_database(database_url: str) -> None:
    a, b = _two_processes(database_url)
    clock = Clock()
    guards = [
        LoginGuard(
            per_address=10,
            free=3,
            base=5,
            cap=60,
            window=900,
            known_for=9e5,
            clock=clock,
            counters=c,
        )
        for c in (a, b)
    ]
    for n in range(3):  # three free failures, alternating processes
        guards[n % 2].failed("Dora", f"10.0.0.{n}")
    assert guards[1].retry_after("dora", "10.0.9.9") == 5  # the other process knows
    assert guards[0].retry_after("dora", "10.0.9.9") == 5
    guards[0].succeeded("dora", "10.0.9.9")
    assert guards[1].retry_after("dora", "10.0.9.9") == 0  # reset everywhere
    limiters = [RateLimiter(3, 60, clock, c, "lookup") for c in (a, b)]
    assert [limiters[n % 2].allow("staff-1") for n in range(5)] == [True] * 3 + [False] * 2
    assert limiters[0].retry_after("staff-1") == 60
    clock.now += 61
    assert limiters[1].allow("staff-1")  # a new window
    with a.engine.connect() as c:  # keys are keyed hashes, never the address or name
        keys = set(c.scalars(select(ThrottleCounter.key)))
    assert not any("dora" in k or "staff" in k or "10.0" in k for k in keys)
    a.engine.dispose()
    b.engine.dispose()


def test_concurrent_counting_never_lets_more_through(database_url: str) -> None:
    a, b = _two_processes(database_url)
    now = time.time()
    with ThreadPoolExecutor(8) as pool:
        taken = list(pool.map(lambda n: (a, b)[n % 2].take("lookup", "x", 20, 60, now), range(80)))
    assert taken.count(True) == 20
    a.engine.dispose()
    b.engine.dispose()


def test_a_busy_sqlite_answer_is_retried_and_then_reported(tmp_path: Path) -> None:
    """SQLite may answer "database is locked" without waiting (its WAL corner cases); a
    counter retries briefly, and a lock held longer still fails loudly, counting nothing.

    The counters' engine here waits 0 ms for the lock, so every busy answer is immediate.
    """
    url = f"sqlite:///{tmp_path}/c.db"
    db.migrate(db.make_engine(url))
    impatient = create_engine(url, connect_args={"timeout": 0, "check_same_thread": False})
    counters = DatabaseCounters(impatient, b"k")
    holder = sqlite3.connect(tmp_path / "c.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock...
    threading.Timer(0.1, holder.rollback).start()  # ...for 0.1 s
    assert counters.take("lookup", "x", 2, 60, time.time())
    holder.execute("BEGIN IMMEDIATE")  # now for longer than the retries wait
    patient = DatabaseCounters(  # waits 1 s for the lock, as busy_timeout does
        create_engine(url, connect_args={"timeout": 1, "check_same_thread": False}), b"k"
    )
    try:
        with pytest.raises(OperationalError, match="locked"):
            counters.take("lookup", "x", 2, 60, time.time())
        started = time.monotonic()
        with pytest.raises(OperationalError, match="locked"):
            patient.take("lookup", "x", 2, 60, time.time())
        assert time.monotonic() - started < 1.9  # a busy answer that waited: no retry
    finally:
        holder.rollback()
    count = counters.read("lookup", "x")
    assert count is not None and count.count == 1  # the refused calls counted nothing
    holder.close()
    impatient.dispose()
    patient.engine.dispose()


def test_expired_counters_are_purged(database_url: str) -> None:
    a, _ = _two_processes(database_url)
    now = time.time()
    for n in range(50):
        a.take("lookup", f"staff-{n}", 20, 60, now)
    a.bump("login_account", "eve", 900, now + 3600)  # an hour later: the others are stale
    with a.engine.connect() as c:
        assert c.scalar(select(func.count()).select_from(ThrottleCounter)) == 1
    a.engine.dispose()


# -- two real server processes ----------------------------------------------------------


@contextmanager
def serve(
    env: dict[str, str], log: Path, *args: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`facecrm serve ARGS` in its own process; yields its URL once /healthz answers."""
    port = free_port()
    command = [sys.executable, "-m", "facecrm", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "ab") as out:
        process = subprocess.Popen([*command, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url, process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _env(settings: Settings, **more: str) -> dict[str, str]:
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    return {
        **os.environ,
        "PYTHONPATH": path,
        "FACECRM_DATA_DIR": str(settings.data_dir),
        "FACECRM_DATABASE_URL": settings.database_url or "",
        **more,
    }


def _visit(key: str, customer_id: str) -> dict[str, object]:
    """A store agent's visit event, now."""
    at = datetime.now(UTC).isoformat()
    return {"key": key, "type": "visit", "customer_id": customer_id, "at": at, "similarity": 0.9}


def _token(url: str, username: str, password: str = PASSWORD) -> str:
    r = httpx.post(f"{url}/api/v1/auth/token", data={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def _login(url: str, username: str, password: str) -> int:
    r = httpx.post(f"{url}/api/v1/auth/token", data={"username": username, "password": password})
    return r.status_code


class Stream:
    """An SSE client in a thread: the events it received, with their arrival times."""

    def __init__(self, url: str, token: str) -> None:
        self.events: list[tuple[float, str, dict[str, object]]] = []
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, token), daemon=True)
        self._thread.start()
        assert self.connected.wait(20), "the stream did not open"

    def _run(self, url: str, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        kind = ""
        try:
            with httpx.stream("GET", url, headers=headers, timeout=60) as r:
                for line in r.iter_lines():
                    if "connected" in line:
                        self.connected.set()
                    elif line.startswith("event: "):
                        kind = line.removeprefix("event: ")
                    elif line.startswith("data: "):
                        self.events.append((time.monotonic(), kind, json.loads(line[6:])))
        except httpx.TransportError:  # the server stopped at the end of the test
            pass

    def wait_for(self, kind: str, timeout: float = 10) -> tuple[float, dict[str, object]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, k, data in self.events:
                if k == kind:
                    return at, data
            time.sleep(0.01)
        raise AssertionError(f"no {kind} event within {timeout} s: {self.events}")


@pytest.fixture()
def chain(
    settings: Settings, pipeline: FacePipeline, postgres: object, faces_dir: Path
) -> dict[str, str]:
    """A PostgreSQL chain: a store with its agent, staff, and two opted-in customers."""
    settings.database_url = new_postgres_database(postgres)  # type: ignore[arg-type]
    crm = FaceCRM(settings, pipeline=pipeline, migrate=True)

    def photo(path: str) -> Photo:
        return Photo(path, read_image(faces_dir / path, settings))

    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "NYC", "Broadway", SYSTEM)
        _, key = accounts.create_device(session, store.id, "agent", principal=SYSTEM)
        for name in ("boss", "eve", "carol"):
            accounts.create_staff(session, name, PASSWORD, "admin", principal=SYSTEM)
        store_id = store.id
    lin = crm.enroll(
        "Lin-Manuel Miranda",
        [photo("identities/lin_manuel_miranda/1.png")],
        CURRENT,
        "kiosk",
        SYSTEM,
        profile={"tier": "vip"},
    )
    kit = crm.enroll(
        "Kit Harington", [photo("identities/kit_harington/1.jpg")], CURRENT, "kiosk", SYSTEM
    )
    crm.engine.dispose()
    return {"store": store_id, "key": key, "lin": lin.id, "kit": kit.id}


@pytest.mark.slow
def test_two_server_processes_share_alerts_gallery_and_limits(
    settings: Settings, chain: dict[str, str], faces_dir: Path, tmp_path: Path
) -> None:
    env = _env(settings, FACECRM_LOOKUP_PER_MINUTE="3")
    with serve(env, tmp_path / "a.log") as (a, _), serve(env, tmp_path / "b.log") as (b, _):
        # an alert raised through A reaches a live stream on B
        stream = Stream(f"{b}/api/v1/alerts/stream", _token(a, "boss"))
        event = _visit("visit-0001", chain["lin"])
        sent = time.monotonic()
        r = httpx.post(
            f"{a}/api/v1/agent/events",
            json={"events": [event]},
            headers={"X-API-Key": chain["key"]},
        )
        answered = time.monotonic()
        assert r.json()["outcomes"] == ["visit"]
        received, alert = stream.wait_for("alert")
        assert alert["customer_id"] == chain["lin"] and alert["store_id"] == chain["store"]
        assert alert["customer_name"] == "Lin-Manuel Miranda"
        print(
            f"\nalert: POST on A {(answered - sent) * 1000:.1f} ms, on B's stream"
            f" {(received - answered) * 1000:.1f} ms after A answered"
        )

        # a customer erased through A is unknown through B at once
        device = {"X-API-Key": chain["key"]}
        kit = (faces_dir / "identities/kit_harington/2.jpg").read_bytes()

        def identify_on_b() -> object:
            r = httpx.post(
                f"{b}/api/v1/identify",
                files={"image": ("k.jpg", kit, "image/jpeg")},
                headers=device,
                timeout=60,
            )
            assert r.status_code == 200, r.text
            return r.json()["faces"][0]["customer"]

        before = identify_on_b()
        assert isinstance(before, dict) and before["id"] == chain["kit"]
        boss = {"Authorization": f"Bearer {_token(a, 'boss')}"}
        gone = httpx.delete(f"{a}/api/v1/customers/{chain['kit']}", headers=boss)
        assert gone.status_code == 204, gone.text
        erased = time.monotonic()
        assert identify_on_b() == "unknown"
        took = (time.monotonic() - erased) * 1000
        print(f"erase on A -> unknown on B: the next request ({took:.0f} ms, the identify's own)")
        gallery = httpx.get(f"{b}/api/v1/agent/gallery", headers=device).json()
        assert chain["kit"] not in {t["customer_id"] for t in gallery["templates"]}

        # log-in throttling counts failures through both processes
        statuses = [_login((a, b)[n % 2], "carol", "guess") for n in range(5)]
        assert statuses == [401] * 5
        locked = httpx.post(
            f"{b}/api/v1/auth/token", data={"username": "carol", "password": PASSWORD}
        )
        assert locked.status_code == 429 and locked.json()["reason"] == "login_throttled"

        # the identification limit (3 a minute here) too
        eve = {"Authorization": f"Bearer {_token(a, 'eve')}"}
        charged = [
            httpx.post(f"{(a, b)[n % 2]}/api/v1/identify", files=JUNK, headers=eve).status_code
            for n in range(3)
        ]
        assert charged == [422] * 3
        for url in (a, b):
            r = httpx.post(f"{url}/api/v1/identify", files=JUNK, headers=eve)
            assert r.status_code == 429 and r.json()["reason"] == "rate_limited"


def _workers(pid: int) -> list[int]:
    """The worker processes uvicorn's supervisor `pid` spawned (not its resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


@pytest.mark.slow
def test_workers_on_postgresql(settings: Settings, chain: dict[str, str], tmp_path: Path) -> None:
    with serve(_env(settings), tmp_path / "w.log", "--workers", "2") as (url, process):
        assert len(_workers(process.pid)) == 2
        token = _token(url, "boss")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as api:
            assert all(api.get("/api/v1/me").status_code == 200 for _ in range(10))
            stream = Stream(f"{url}/api/v1/alerts/stream", token)
            event = _visit("visit-0002", chain["lin"])
            # the stream and the event land on whichever workers: local or via NOTIFY
            httpx.post(
                f"{url}/api/v1/agent/events",
                json={"events": [event]},
                headers={"X-API-Key": chain["key"]},
            )
            assert stream.wait_for("alert")[1]["customer_id"] == chain["lin"]
    assert process.returncode is not None


def test_workers_are_refused_on_sqlite(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC), "FACECRM_DATA_DIR": str(tmp_path / "data")}
    env.pop("FACECRM_DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "facecrm", "serve", "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: --workers 2 needs PostgreSQL (FACECRM_DATABASE_URL=postgresql+psycopg://...):"
        " on SQLite one server process serves a data directory (single_process)"
    ]


def test_the_listener_reconnects_and_notifications_carry_ids_only(postgres: PgServer) -> None:
    """Two buses (two processes) on one database: B's stream gets A's event, rebuilt from
    its id; after B's listening connection is killed B reconnects and gets the next one.
    An eavesdropper on the channel sees ids only."""
    engine = db.make_engine(new_postgres_database(postgres))
    sessions = db.session_factory(engine)

    def load(_session: Session, row_id: int) -> dict[str, object]:
        return {"type": "alert", "id": row_id, "loaded": True}

    a, b = (PostgresAlertBus(engine, sessions, {"alert": load}, reconnect_max=0.5) for _ in "ab")
    dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    spy = psycopg.connect(dsn, autocommit=True)
    spy.execute(f"LISTEN {PostgresAlertBus.CHANNEL}")

    async def scenario() -> list[float]:
        sub = b.subscribe(frozenset({"s1"}))
        b.start()
        latencies = []
        for row_id in (1, 2):
            started = time.monotonic()
            a.publish("s1", {"type": "alert", "id": row_id, "customer_name": "Ada Lovelace"})
            payload = await asyncio.wait_for(sub.queue.get(), 10)
            latencies.append(time.monotonic() - started)
            assert payload == {"type": "alert", "id": row_id, "loaded": True}
            b.listening.clear()
            with engine.begin() as c:  # drop B's listening connection
                c.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE query LIKE 'LISTEN%' AND pid <> :spy"
                    ),
                    {"spy": spy.info.backend_pid},
                )
            assert await asyncio.to_thread(b.listening.wait, 10)
        return latencies

    try:
        latencies = asyncio.run(scenario())
    finally:
        b.stop()
    heard = [n.payload for n in spy.notifies(timeout=1, stop_after=2)]
    spy.close()
    assert [h.split(":", 1)[1] for h in heard] == ["alert:1:s1", "alert:2:s1"]
    assert b.reconnects >= 2
    print(f"\nNOTIFY to the other bus's subscriber: {[round(x * 1000, 1) for x in latencies]} ms")
    engine.dispose()
