"""Throttles kept in process: a sliding-window rate limiter per key and the log-in guard.

They live in the crm layer because `accounts.login` applies the guard for every caller
(API and console); the API uses `RateLimiter` for its per-principal request limits too.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from facecrm.config import Settings


class RateLimiter:
    """At most `limit` events per `window` seconds for each key."""

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit, self.window = limit, window
        self._events: dict[str, deque[float]] = {}
        self._clock = clock
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = self._clock()
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
        now = self._clock()
        with self._lock:
            events = self._events.get(key, deque())
            while events and now - events[0] > self.window:
                events.popleft()
            return len(events) >= self.limit

    def retry_after(self, key: str) -> float:
        """Seconds until `key` may act again (0: now)."""
        now = self._clock()
        with self._lock:
            events = self._events.get(key)
            if not events or len(events) < self.limit:
                return 0.0
            return max(0.0, events[-self.limit] + self.window - now)

    def reset(self, key: str) -> None:
        with self._lock:
            self._events.pop(key, None)


@dataclass
class _Account:
    failures: int = 0
    last_failure: float = 0.0


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

    Counts live in the server process; `clock` is injectable for tests.
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
        clock: Callable[[], float] = time.monotonic,
        max_known: int = 50_000,
    ) -> None:
        self.free, self.base, self.cap, self.window = free, base, cap, window
        self.known_for, self.max_known = known_for, max_known
        self._known: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._addresses = RateLimiter(per_address, window, clock)
        self._accounts: dict[str, _Account] = {}
        self._clock = clock
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: Settings, clock: Callable[[], float] = time.monotonic
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
        with self._lock:
            seen = self._known.get((username.lower(), address))
            if seen is not None and now - seen <= self.known_for:
                return 0.0
        return self.account_wait(username)

    def account_wait(self, username: str) -> float:
        """Seconds the account's own back-off still refuses log-ins (0: none); addresses
        aside, so a staff list can show who is locked out."""
        now = self._clock()
        with self._lock:
            account = self._accounts.get(username.lower())
            if account is None or now - account.last_failure > self.window:
                return 0.0
            return max(0.0, account.last_failure + self._delay(account.failures) - now)

    def unlock(self, username: str) -> bool:
        """Forget the account's failures (an administrator vouched for its owner); whether
        there were any. Address limits stay: they hold a guesser, not the account."""
        with self._lock:
            return self._accounts.pop(username.lower(), None) is not None

    def blocked(self, username: str, address: str) -> bool:
        return self.retry_after(username, address) > 0

    def failed(self, username: str, address: str) -> None:
        self._addresses.allow(address)
        now = self._clock()
        with self._lock:
            if len(self._accounts) > 100_000:  # a spray of made-up names: forget the stale
                stale = [k for k, a in self._accounts.items() if now - a.last_failure > self.window]
                for key in stale:
                    del self._accounts[key]
            account = self._accounts.setdefault(username.lower(), _Account())
            if now - account.last_failure > self.window:
                account.failures = 0
            account.failures += 1
            account.last_failure = now

    def succeeded(self, username: str, address: str = "") -> None:
        now = self._clock()
        with self._lock:
            self._accounts.pop(username.lower(), None)
            if address:
                key = (username.lower(), address)
                self._known[key] = now
                self._known.move_to_end(key)
                while len(self._known) > self.max_known:  # bounded: the oldest go first
                    self._known.popitem(last=False)
