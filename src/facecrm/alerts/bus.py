"""Fan-out of new alerts to live console connections (SSE), in one process or across many.

* `AlertBus`: in-process (SQLite, where one server process serves a data directory).
* `PostgresAlertBus`: the same, plus PostgreSQL LISTEN/NOTIFY, so that an SSE client
  connected to one server process receives the alerts raised in any other.

What travels through PostgreSQL is only `origin:type:id:store` (an opaque process
token, the event type, the row id and the store id): any role that may connect to the
database may LISTEN on any channel, and a NOTIFY payload is limited to 8000 bytes, so
the alert itself (a customer's name, the rule's message) never goes there. Each process
that has a subscriber for the store loads the row from the database with a loader
registered for the type (`alerts.relay`) and builds the same payload the raising
process sent its own subscribers.

Every queue is bounded: a subscriber whose queue is full (a client that stopped
reading) misses events rather than growing the server's memory.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger("facecrm.alerts.bus")
QUEUE_SIZE = 1000  # per subscriber


@dataclass(eq=False)
class Subscriber:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[dict[str, object]]
    stores: frozenset[str] | None  # None: every store


@dataclass
class AlertBus:
    """Thread-safe publisher; each SSE connection is a subscriber with its own queue."""

    _subscribers: set[Subscriber] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def subscribe(self, stores: frozenset[str] | None) -> Subscriber:
        sub = Subscriber(asyncio.get_running_loop(), asyncio.Queue(maxsize=QUEUE_SIZE), stores)
        with self._lock:
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    def publish(self, store_id: str, payload: dict[str, object]) -> None:
        """Deliver to every subscriber that may see `store_id` (from any thread)."""
        self._deliver(store_id, payload)

    def _targets(self, store_id: str) -> list[Subscriber]:
        with self._lock:
            return [s for s in self._subscribers if s.stores is None or store_id in s.stores]

    def _deliver(self, store_id: str, payload: dict[str, object]) -> None:
        for sub in self._targets(store_id):
            sub.loop.call_soon_threadsafe(_offer, sub.queue, payload)

    def start(self) -> None:
        """Begin receiving other processes' events (nothing to do in one process)."""

    def stop(self) -> None:
        """Stop receiving them."""


def _offer(queue: asyncio.Queue[dict[str, object]], payload: dict[str, object]) -> None:
    if not queue.full():
        queue.put_nowait(payload)


Loader = Callable[[Session, int], dict[str, object] | None]
"""Builds an event's payload from its row id (None: the row is gone)."""


class PostgresAlertBus(AlertBus):
    """`AlertBus` across server processes through PostgreSQL LISTEN/NOTIFY.

    `publish` delivers to this process's subscribers at once and sends a NOTIFY after
    the caller's commit (callers publish only committed rows); a listener thread per
    process, on a connection of its own, receives the others' and reconnects with
    back-off when that connection drops (events raised while it is down are not
    streamed: staff still find them in the open-alerts list).
    """

    CHANNEL = "facecrm_alerts"

    def __init__(
        self,
        engine: Engine,
        sessions: sessionmaker[Session],
        loaders: Mapping[str, Loader],
        reconnect_max: float = 30.0,
    ) -> None:
        super().__init__()
        self.engine, self.sessions, self.loaders = engine, sessions, dict(loaders)
        self.origin = secrets.token_hex(6)  # this process's own NOTIFYs are skipped
        self.reconnect_max = reconnect_max
        self.listening = threading.Event()  # set while the LISTEN connection is up
        self.reconnects = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, store_id: str, payload: dict[str, object]) -> None:
        self._deliver(store_id, payload)
        kind, row_id = payload.get("type"), payload.get("id")
        if not isinstance(kind, str) or kind not in self.loaders or not isinstance(row_id, int):
            return  # nothing another process could load: this process's subscribers only
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    text("SELECT pg_notify(:channel, :message)"),
                    {
                        "channel": self.CHANNEL,
                        "message": f"{self.origin}:{kind}:{row_id}:{store_id}",
                    },
                )
        except Exception:  # the alert is stored; only other processes' live streams miss it
            log.exception("could not notify other server processes of a %s", kind)

    def received(self, message: str) -> None:
        """Handle one NOTIFY payload (from the listener thread)."""
        try:
            origin, kind, row_id, store_id = message.split(":", 3)
            loader, ident = self.loaders.get(kind), int(row_id)
        except ValueError:
            log.warning("ignored a malformed notification on %s", self.CHANNEL)
            return
        if origin == self.origin or loader is None or not self._targets(store_id):
            return  # ours (delivered already), unknown, or no one here watches that store
        with self.sessions() as session:
            payload = loader(session, ident)
        if payload is not None:
            self._deliver(store_id, payload)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._listen, daemon=True, name="alert-listen")
        self._thread.start()
        # a process that answers requests should also hear the others: wait (a little)
        if not self.listening.wait(5.0):
            log.warning("alert listener not connected yet; other processes' alerts will follow")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _listen(self) -> None:
        import psycopg

        dsn = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        delay = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as connection:
                    connection.execute(f"LISTEN {self.CHANNEL}")
                    self.listening.set()
                    delay = 0.5
                    while not self._stop.is_set():
                        for note in connection.notifies(timeout=1.0):
                            try:
                                self.received(note.payload)
                            except Exception:  # e.g. the database blinked while loading
                                log.exception("could not relay a notification")
            except Exception as exc:
                self.listening.clear()
                if self._stop.is_set():
                    break
                self.reconnects += 1
                log.warning(
                    "alert listener lost its connection (%s); retrying in %.1f s",
                    type(exc).__name__,
                    delay,
                )
                self._stop.wait(delay)
                delay = min(self.reconnect_max, delay * 2)
        self.listening.clear()
