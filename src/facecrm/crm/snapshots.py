"""One camera picture to draw zones on (issue 13, item 1): asked for, shown once, discarded.

A manager (or admin) of a store asks for a snapshot of one of its cameras (`request`,
audited `camera_snapshot` step=request). The store's agent learns it from a flag on its
gallery sync (`flagged`; no extra polling), asks which cameras (`pending`) and uploads one
JPEG of each (`upload`). The console polls `status` and then reads the picture once
(`take`, audited `camera_snapshot` step=view): the read removes it.

Never stored: the picture lives only in this process's memory (`Snapshots`), never in the
database, a file or a log, and for at most `TTL_SECONDS` whether or not anyone looks at it.
Memory is bounded: `MAX_JPEG` bytes per picture and `MAX_ENTRIES` requests or pictures in
all (the oldest go first).

Several server processes (`facecrm serve --workers N`): each holds its own requests and
pictures. A request, the agent's upload and the console's read must reach the same process,
so with N > 1 a snapshot only arrives when they happen to (sticky routing makes it work);
otherwise the console says none arrived in time. Sharing pictures between processes would
mean writing them somewhere, which is what this design refuses.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from facecrm.alerts import storeconfig
from facecrm.crm import accounts, audit, db
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.errors import ConflictError, InvalidError, NotFoundError
from facecrm.crm.models import CameraHealth

TTL_SECONDS = 60.0
MAX_JPEG = 2 * 1024 * 1024  # a 4K JPEG at normal quality is well below
MAX_SIDE = 8192
MAX_ENTRIES = 256  # requests and pictures over all stores
Status = Literal["pending", "ready", "none"]
Key = tuple[str, str]  # (store, camera)


@dataclass(slots=True)
class _Entry:
    at: float  # when requested, or when uploaded
    jpeg: bytes | None = None  # None: requested, not uploaded yet


def _staff(session: Session, principal: Principal, store_id: str) -> None:
    """Who may see a store's cameras: those who may change its zones (managers, admins)."""
    principal.require(Permission.DEVICES_MANAGE)
    principal.require_store(store_id)
    accounts.get_store(session, store_id)


def cameras(session: Session, principal: Principal, store_id: str) -> list[str]:
    """The store's cameras its agent has reported (their masked names), sorted."""
    _staff(session, principal, store_id)
    found = session.scalars(
        select(CameraHealth.camera).where(CameraHealth.store_id == store_id).distinct()
    )
    return sorted(found)


def _audit(session: Session, principal: Principal, store_id: str, camera: str, step: str) -> None:
    audit.record(
        session, principal, "camera_snapshot", None, store_id, step=step, camera=camera[:100]
    )


def check_jpeg(data: bytes) -> None:
    """Refuse what is not one decodable JPEG of sane size (422 `bad_image`)."""
    if len(data) > MAX_JPEG:
        raise InvalidError(f"a snapshot is at most {MAX_JPEG} bytes", reason="bad_image")
    if not data.startswith(b"\xff\xd8\xff"):
        raise InvalidError("a snapshot is a JPEG", reason="bad_image")
    header = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    if header is None or max(header.shape[:2]) * 8 > MAX_SIDE:
        raise InvalidError("the snapshot cannot be decoded or is too large", reason="bad_image")


class Snapshots:
    """The requests and pictures of one server process (module doc)."""

    def __init__(
        self, sessions: sessionmaker[Session], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def _expire(self) -> None:
        """Drop what is older than the TTL (caller holds the lock)."""
        now = self._clock()
        for key in [k for k, e in self._entries.items() if now - e.at >= TTL_SECONDS]:
            del self._entries[key]

    def request(self, principal: Principal, store_id: str, camera: str) -> None:
        """Ask the store's agent for one picture of `camera` (replaces an unread one)."""
        with db.transaction(self._sessions) as session:
            _staff(session, principal, store_id)
            storeconfig.require_camera(session, store_id, camera)
            _audit(session, principal, store_id, camera, "request")
        with self._lock:
            self._expire()
            self._entries.pop((store_id, camera), None)
            self._entries[(store_id, camera)] = _Entry(self._clock())
            while len(self._entries) > MAX_ENTRIES:
                self._entries.popitem(last=False)

    def flagged(self, device: Principal) -> bool:
        """Whether the device's store has a camera waiting for a picture (the sync flag)."""
        store_id = accounts.device_store(device)
        with self._lock:
            self._expire()
            return any(s == store_id and e.jpeg is None for (s, _), e in self._entries.items())

    def pending(self, device: Principal) -> list[str]:
        """The cameras of the device's store waiting for a picture."""
        device.require(Permission.AGENT)
        store_id = accounts.device_store(device)
        with self._lock:
            self._expire()
            return [c for (s, c), e in self._entries.items() if s == store_id and e.jpeg is None]

    def upload(self, device: Principal, camera: str, jpeg: bytes) -> None:
        """The agent's picture of a requested camera; 409 `not_requested` otherwise."""
        device.require(Permission.AGENT)
        store_id = accounts.device_store(device)
        check_jpeg(jpeg)
        with self._lock:
            self._expire()
            entry = self._entries.get((store_id, camera))
            if entry is None or entry.jpeg is not None:
                raise ConflictError("no snapshot of this camera is waiting", reason="not_requested")
            entry.jpeg, entry.at = jpeg, self._clock()

    def status(self, session: Session, principal: Principal, store_id: str, camera: str) -> Status:
        """pending (asked, not uploaded), ready (uploaded, unread) or none."""
        _staff(session, principal, store_id)
        with self._lock:
            self._expire()
            entry = self._entries.get((store_id, camera))
        if entry is None:
            return "none"
        return "pending" if entry.jpeg is None else "ready"

    def take(self, principal: Principal, store_id: str, camera: str) -> bytes:
        """The picture, once: it is removed before it is returned (404 `no_snapshot`)."""
        with db.transaction(self._sessions) as session:
            _staff(session, principal, store_id)
            with self._lock:
                self._expire()
                entry = self._entries.get((store_id, camera))
                if entry is None or entry.jpeg is None:
                    raise NotFoundError(
                        "no snapshot of this camera is waiting (ask for one)", reason="no_snapshot"
                    )
                del self._entries[(store_id, camera)]
            _audit(session, principal, store_id, camera, "view")
        return entry.jpeg

    def held(self) -> int:
        """How many requests and pictures are in memory (tests: nothing lingers)."""
        with self._lock:
            self._expire()
            return len(self._entries)
