"""The agent's durable outbox: events survive crashes and outages, and leave in order."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path


class Outbox:
    """An append-only SQLite queue; an event is deleted only once the server has it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged enqueue survives kill -9
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " key TEXT UNIQUE NOT NULL, body TEXT NOT NULL, created_at REAL NOT NULL)"
        )
        self._lock = threading.Lock()

    def put(self, key: str, body: dict[str, object]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO events (key, body, created_at) VALUES (?, ?, ?)",
                (key, json.dumps(body), time.time()),
            )

    def peek(self, limit: int = 50) -> list[tuple[int, dict[str, object]]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, body FROM events ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [(seq, json.loads(body)) for seq, body in rows]

    def ack(self, up_to_seq: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM events WHERE seq <= ?", (up_to_seq,))

    def depth(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM events").fetchone()[0])

    def oldest_age(self) -> float:
        with self._lock:
            row = self._db.execute("SELECT min(created_at) FROM events").fetchone()
        return 0.0 if row[0] is None else time.time() - float(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
