"""Throttles: a rate limiter per key and the log-in guard, over counters kept in memory
(one process) or in the database (every server process shares them).

They live in the crm layer because `accounts.login` applies the guard for every caller
(API and console); the API uses `RateLimiter` for its per-principal request limits too.

A counter is one row per (scope, key): a count, when its window started and when it
last changed. Every change is one atomic statement (an upsert), so two server
processes counting the same address or staff member never lose a count; no broker
and no lock is needed. Windows are fixed (they start at the first counted event):
"10 failures in 15 minutes refuse the address for the rest of that window".
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Engine, case, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql import Executable

from facecrm.config import Settings
from facecrm.crm.models import ThrottleCounter

log = logging.getLogger("facecrm.throttle")


@dataclass(frozen=True, slots=True)
class Count:
    count: int
    started_at: float
    last_at: float


class Counters(Protocol):
    """Where counts live. `now` is wall-clock seconds (shared by processes)."""

    def take(self, scope: str, key: str, limit: int, window: float, now: float) -> bool:
        """Count one event if fewer than `limit` were counted in the current window
        (a window older than `window` seconds starts over); whether it was counted."""
        ...

    def bump(self, scope: str, key: str, window: float, now: float) -> None:
        """Count one more (starting over when the last one is older than `window`)."""
        ...

    def touch(self, scope: str, key: str, now: float, ttl: float) -> None:
        """Remember that `key` was seen `now`, for `ttl` seconds."""
        ...

    def read(self, scope: str, key: str) -> Count | None: ...

    def forget(self, scope: str, key: str) -> None: ...


class MemoryCounters:
    """Counters of this process only (tests, and anything that is not the server)."""

    def __init__(self, max_rows: int = 100_000) -> None:
        self.max_rows = max_rows
        self._rows: dict[tuple[str, str], tuple[Count, float]] = {}  # count, expires at
        self._lock = threading.Lock()

    def _put(self, scope: str, key: str, count: Count, expires: float) -> None:
        self._rows.pop((scope, key), None)  # re-inserted last: dict order is age order
        if len(self._rows) >= self.max_rows:  # bounded: the expired go, then the oldest
            for stale in [k for k, (_, e) in self._rows.items() if e < count.last_at]:
                del self._rows[stale]
            while len(self._rows) >= self.max_rows:
                del self._rows[next(iter(self._rows))]
        self._rows[(scope, key)] = (count, expires)

    def take(self, scope: str, key: str, limit: int, window: float, now: float) -> bool:
        with self._lock:
            row = self._rows.get((scope, key))
            if row is None or now - row[0].started_at > window:
                self._put(scope, key, Count(1, now, now), now + window)
                return limit >= 1
            if row[0].count >= limit:
                return False
            self._put(scope, key, Count(row[0].count + 1, row[0].started_at, now), row[1])
            return True

    def bump(self, scope: str, key: str, window: float, now: float) -> None:
        with self._lock:
            row = self._rows.get((scope, key))
            if row is None or now - row[0].last_at > window:
                self._put(scope, key, Count(1, now, now), now + window)
            else:
                self._put(scope, key, Count(row[0].count + 1, row[0].started_at, now), now + window)

    def touch(self, scope: str, key: str, now: float, ttl: float) -> None:
        with self._lock:
            self._put(scope, key, Count(1, now, now), now + ttl)

    def read(self, scope: str, key: str) -> Count | None:
        with self._lock:
            row = self._rows.get((scope, key))
            return row[0] if row else None

    def forget(self, scope: str, key: str) -> None:
        with self._lock:
            self._rows.pop((scope, key), None)


class DatabaseCounters:
    """Counters in `throttle_counters`, shared by every process on the database.

    Keys are stored as an HMAC under `secret` (addresses and usernames are nobody's
    business in a table dump). Expired rows are purged at most once a minute per
    process, by whichever call comes by: the table holds only live windows.
    """

    PURGE_EVERY = 60.0
    BUSY_RETRIES = (0.05, 0.2, 0.5)  # pauses before retrying an immediate "locked"
    IMMEDIATE = 0.5  # s: a busy answer sooner than this did not wait `busy_timeout`

    def __init__(self, engine: Engine, secret: bytes) -> None:
        self.engine = engine
        self._secret = secret
        self._postgres = engine.dialect.name == "postgresql"
        self._purged = 0.0

    def _key(self, scope: str, key: str) -> str:
        return hmac.new(self._secret, f"{scope}\0{key}".encode(), hashlib.sha256).hexdigest()

    def _write(self, statement: Executable) -> bool:
        """Run one write statement in its own transaction; True when it returned a row.

        SQLite waits `busy_timeout` for the write lock, but its WAL mode documents corner
        cases that answer "database is locked" without waiting (a connection opening
        while another one closes; seen once in CI with two engines and eight threads).
        Every write here is one atomic statement that either happened or did not, so such
        an answer is retried a few times rather than turned into a 500 on a log-in. One
        that came after waiting `busy_timeout` is not retried: the lock is really held,
        and retrying would make the caller wait several timeouts.
        """
        for pause in (*self.BUSY_RETRIES, None):
            started = time.monotonic()
            try:
                with self.engine.begin() as connection:
                    result = connection.execute(statement)
                    return result.returns_rows and result.first() is not None
            except OperationalError as exc:
                busy = not self._postgres and "locked" in str(exc.orig)
                waited = time.monotonic() - started >= self.IMMEDIATE
                if pause is None or not busy or waited:
                    raise
                time.sleep(pause)
        raise AssertionError("unreachable")

    def _upsert(
        self,
        scope: str,
        key: str,
        now: float,
        expires: float,
        update_set: dict[str, Any],
        where: ColumnElement[bool] | None = None,
    ) -> postgresql.Insert | sqlite.Insert:
        """Insert a first count, or update the row as `update_set` says (only `where`)."""
        insert = (postgresql.insert if self._postgres else sqlite.insert)(ThrottleCounter).values(
            scope=scope,
            key=self._key(scope, key),
            count=1,
            started_at=now,
            last_at=now,
            expires_at=expires,
        )
        return insert.on_conflict_do_update(
            index_elements=["scope", "key"], set_=update_set, where=where
        )

    def take(self, scope: str, key: str, limit: int, window: float, now: float) -> bool:
        t = ThrottleCounter.__table__.c
        expired = t.started_at < now - window
        statement = self._upsert(
            scope,
            key,
            now,
            now + window,
            {
                "count": case((expired, 1), else_=t.count + 1),
                "started_at": case((expired, now), else_=t.started_at),
                "last_at": now,
                "expires_at": case((expired, now + window), else_=t.started_at + window),
            },
            where=expired | (t.count < limit),  # a full window is not written: refused
        ).returning(t.count)
        counted = self._write(statement)
        self._purge(now)
        return counted and limit >= 1

    def bump(self, scope: str, key: str, window: float, now: float) -> None:
        t = ThrottleCounter.__table__.c
        stale = t.last_at < now - window
        statement = self._upsert(
            scope,
            key,
            now,
            now + window,
            {
                "count": case((stale, 1), else_=t.count + 1),
                "started_at": case((stale, now), else_=t.started_at),
                "last_at": now,
                "expires_at": now + window,
            },
        )
        self._write(statement)
        self._purge(now)

    def touch(self, scope: str, key: str, now: float, ttl: float) -> None:
        statement = self._upsert(
            scope, key, now, now + ttl, {"last_at": now, "expires_at": now + ttl}
        )
        self._write(statement)

    def read(self, scope: str, key: str) -> Count | None:
        t = ThrottleCounter.__table__.c
        with self.engine.connect() as connection:
            row = connection.execute(
                select(t.count, t.started_at, t.last_at).where(
                    t.scope == scope, t.key == self._key(scope, key)
                )
            ).first()
        return Count(int(row[0]), float(row[1]), float(row[2])) if row else None

    def forget(self, scope: str, key: str) -> None:
        t = ThrottleCounter.__table__.c
        self._write(delete(ThrottleCounter).where(t.scope == scope, t.key == self._key(scope, key)))

    def _purge(self, now: float) -> None:
        if now - self._purged < self.PURGE_EVERY:
            return
        self._purged = now
        try:  # housekeeping: the count this call made stands even if the purge waits
            self._write(delete(ThrottleCounter).where(ThrottleCounter.expires_at < now))
        except OperationalError:
            self._purged = 0.0  # the next call tries again
            log.warning("throttle counters: the purge of expired rows failed; retried later")


def database_counters(engine: Engine, settings: Settings) -> DatabaseCounters:
    """The server's counters: in its database, keyed by a key derived from its secret."""
    from facecrm.keys import derived_key

    return DatabaseCounters(engine, derived_key(settings, "throttle-counters"))


class RateLimiter:
    """At most `limit` events per `window` seconds for each key (a fixed window that
    starts at the key's first counted event)."""

    def __init__(
        self,
        limit: int,
        window: float,
        clock: Callable[[], float] = time.time,
        counters: Counters | None = None,
        scope: str = "rate",
    ) -> None:
        self.limit, self.window, self.scope = limit, window, scope
        self._clock = clock
        self.counters: Counters = counters or MemoryCounters()

    def allow(self, key: str) -> bool:
        return self.counters.take(self.scope, key, self.limit, self.window, self._clock())

    def full(self, key: str) -> bool:
        """Whether `key` has used up its allowance (without using any)."""
        return self.retry_after(key) > 0

    def retry_after(self, key: str) -> float:
        """Seconds until `key` may act again (0: now)."""
        row = self.counters.read(self.scope, key)
        now = self._clock()
        if row is None or row.count < self.limit or now - row.started_at > self.window:
            return 0.0
        return max(0.0, row.started_at + self.window - now)

    def reset(self, key: str) -> None:
        self.counters.forget(self.scope, key)


class LoginGuard:
    """Throttle password guessing: per client address first, then back-off per account.

    * An address with `per_address` failures in `window` seconds is refused until
      they age out: a single guesser is stopped here, long before it can push an
      account's back-off to the cap.
    * An account (username, existing or not, case-folded) may fail `free` times;
      after that each failure opens a refusal window of `base` seconds doubled per
      further failure, capped at `cap`. No one can lock an account for longer than
      `cap` after their last counted failure, and refused attempts are not counted.
    * A success (never checked while refused) resets the account; failures older
      than `window` are forgotten.
    * An address the account logged in from successfully within `known_for` seconds
      skips the account's back-off (not the address limit): someone spraying wrong
      passwords for a name from elsewhere, however many addresses they have, cannot
      keep its owner out of the tills and phones they already use.

    Counts live in `counters` (the server's: the database, so every server process
    applies the same limits); `clock` is injectable for tests.
    """

    def __init__(
        self,
        *,
        per_address: int,
        free: int,
        base: float,
        cap: float,
        window: float,
        known_for: float,
        clock: Callable[[], float] = time.time,
        counters: Counters | None = None,
    ) -> None:
        self.free, self.base, self.cap, self.window = free, base, cap, window
        self.known_for = known_for
        self.counters: Counters = counters or MemoryCounters()
        self._addresses = RateLimiter(per_address, window, clock, self.counters, "login_address")
        self._clock = clock

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        counters: Counters | None = None,
    ) -> LoginGuard:
        """The guard with the configured limits (`FACECRM_LOGIN_*`): the numbers live there."""
        return cls(
            per_address=settings.login_address_failures,
            free=settings.login_free_failures,
            base=settings.login_backoff_seconds,
            cap=settings.login_backoff_cap_seconds,
            window=settings.login_window_seconds,
            known_for=settings.login_known_address_days * 86_400.0,
            clock=clock,
            counters=counters,
        )

    def _delay(self, failures: int) -> float:
        if failures < self.free:
            return 0.0
        return float(min(self.cap, self.base * 2 ** min(failures - self.free, 40)))

    def retry_after(self, username: str, address: str) -> float:
        """Seconds until this attempt may be checked (0: go ahead)."""
        address_wait = self._addresses.retry_after(address)
        if address_wait > 0:
            return address_wait
        now = self._clock()
        user = username.lower()
        seen = self.counters.read("login_known", f"{user}\0{address}")
        if seen is not None and now - seen.last_at <= self.known_for:
            return 0.0
        return self.account_wait(username)

    def account_wait(self, username: str) -> float:
        """Seconds the account's own back-off still refuses log-ins (0: none); addresses
        aside, so a staff list can show who is locked out."""
        now = self._clock()
        user = username.lower()
        account = self.counters.read("login_account", user)
        if account is None:
            return 0.0
        if now - account.last_at > self.window:
            self.counters.forget("login_account", user)
            return 0.0
        return max(0.0, account.last_at + self._delay(account.count) - now)

    def unlock(self, username: str) -> bool:
        """Forget the account's failures (an administrator vouched for its owner); whether
        there were any. Address limits stay: they hold a guesser, not the account."""
        user = username.lower()
        locked = self.counters.read("login_account", user) is not None
        self.counters.forget("login_account", user)
        return locked

    def blocked(self, username: str, address: str) -> bool:
        return self.retry_after(username, address) > 0

    def failed(self, username: str, address: str) -> None:
        self._addresses.allow(address)
        self.counters.bump("login_account", username.lower(), self.window, self._clock())

    def succeeded(self, username: str, address: str = "") -> None:
        user = username.lower()
        self.counters.forget("login_account", user)
        if address:
            self.counters.touch("login_known", f"{user}\0{address}", self._clock(), self.known_for)
