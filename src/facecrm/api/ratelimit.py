"""A sliding-window rate limiter per key (e.g. per staff member), in process."""

from __future__ import annotations

import threading
import time
from collections import deque


class RateLimiter:
    """At most `limit` events per `window` seconds for each key."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            events = self._events.setdefault(key, deque())
            while events and now - events[0] > self.window:
                events.popleft()
            if len(events) >= self.limit:
                return False
            events.append(now)
            return True

    def full(self, key: str) -> bool:
        """Whether `key` has used up its allowance (without using any)."""
        now = time.monotonic()
        with self._lock:
            events = self._events.get(key, deque())
            while events and now - events[0] > self.window:
                events.popleft()
            return len(events) >= self.limit

    def reset(self, key: str) -> None:
        with self._lock:
            self._events.pop(key, None)


class LoginGuard:
    """Throttle password guessing: per username (existing or not) and per client address.

    After `per_user` failures in `window` seconds a username is locked out for
    the rest of the window, whatever the password; an address is locked after
    `per_address` failures. Counts live in the server process.
    """

    def __init__(self, per_user: int = 5, per_address: int = 30, window: float = 900.0) -> None:
        self._users = RateLimiter(per_user, window)
        self._addresses = RateLimiter(per_address, window)
        self._lock = threading.Lock()

    def blocked(self, username: str, address: str) -> bool:
        return self._users.full(username.lower()) or self._addresses.full(address)

    def failed(self, username: str, address: str) -> None:
        self._users.allow(username.lower())
        self._addresses.allow(address)

    def succeeded(self, username: str) -> None:
        self._users.reset(username.lower())
