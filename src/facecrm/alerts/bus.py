"""In-process fan-out of new alerts to live console connections (SSE)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field


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
        sub = Subscriber(asyncio.get_running_loop(), asyncio.Queue(maxsize=1000), stores)
        with self._lock:
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    def publish(self, store_id: str, payload: dict[str, object]) -> None:
        """Deliver to every subscriber that may see `store_id` (from any thread)."""
        with self._lock:
            targets = [s for s in self._subscribers if s.stores is None or store_id in s.stores]
        for sub in targets:
            sub.loop.call_soon_threadsafe(_offer, sub.queue, payload)


def _offer(queue: asyncio.Queue[dict[str, object]], payload: dict[str, object]) -> None:
    if not queue.full():
        queue.put_nowait(payload)
