"""Camera health: each agent camera's last frame time, and `camera_silent` alerts.

Agents send a heartbeat with every camera's last frame time (`heartbeat`; with the
agent's version and outbox depth, for the devices page). The server
decides silence, not the agent: an agent that died, hung or lost its network sends
nothing at all, and "no news" can only be noticed by the side that waits for it. So the
check runs on the server, on two occasions:

* on each heartbeat, for that store (a camera coming back clears its alert at once);
* every `camera_check_seconds` in every server process (`start_checker`), which catches
  cameras whose agent went quiet altogether.

Several server processes may run the check at the same moment. An alert is raised by a
conditional update (`silent_alert_id IS NULL` and still silent) in the transaction that
inserts the alert: exactly one transaction matches the row, the others update nothing
and roll their alert back. Clearing is the same update the other way round. The store's
rule `camera_silent` (`enabled`, `minutes`, default 5) sets the window.

The alert is an ordinary alert (`AlertService.add_alert`, kind `camera_silent`, no
customer, the camera's name): the same live list, history, stream, webhook, claim and
acknowledgement as an arrival's, for the store's managers and admins (`service.AUDIENCE`).
Frames coming back close it as `resolved` (unless staff closed it first).

Camera names are the agent's masked names (`agent.runner.camera_name`): no password.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Text, cast, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from facecrm.alerts import rules
from facecrm.alerts.service import AlertService, AlertView
from facecrm.crm import accounts, audit, db
from facecrm.crm.authz import SYSTEM, Permission, Principal
from facecrm.crm.models import Alert, CameraHealth, Device, StoreConfig, utcnow
from facecrm.crm.service import FaceCRM
from facecrm.metrics import Registry

log = logging.getLogger("facecrm.alerts.cameras")
KIND = "camera_silent"


@dataclass(frozen=True, slots=True)
class CameraReport:
    """One camera of a heartbeat: its (masked) name and when it last gave a frame."""

    camera: str
    last_frame_at: datetime | None


@dataclass(frozen=True, slots=True)
class CameraView:
    """A camera as managers see it."""

    device_id: str
    camera: str
    store_id: str
    reported_at: datetime
    last_frame_at: datetime | None
    silent: bool  # a camera_silent alert is open
    silent_since: datetime | None  # when that alert was raised


class _Lost(Exception):
    """Another transaction raised or cleared this alert first: roll ours back."""


@dataclass(frozen=True, slots=True)
class CheckReport:
    raised: int
    cleared: int


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _message(camera: str, device: str | None, last_frame_at: datetime | None) -> str:
    since = _aware(last_frame_at).isoformat(timespec="seconds") if last_frame_at else None
    where = f" ({device})" if device else ""
    return f"camera {camera}{where} has sent no frame since {since or 'it was reported'}"


class CameraHealthService:
    """Heartbeats in, silence checks, `camera_silent` alerts out (through `AlertService`)."""

    def __init__(
        self, crm: FaceCRM, alerts: AlertService | None = None, metrics: Registry | None = None
    ) -> None:
        self.crm = crm
        self.metrics = metrics or Registry()
        self.alerts = alerts or AlertService(crm, metrics=self.metrics)

    # -- agents ----------------------------------------------------------------------

    def heartbeat(
        self,
        device: Principal,
        cameras: list[CameraReport],
        now: datetime | None = None,
        *,
        version: str | None = None,
        queue_depth: int | None = None,
    ) -> list[CameraView]:
        """Record the device's cameras' last frame times and its own state (version, outbox
        depth: the devices page), then check its store."""
        device.require(Permission.AGENT)
        store_id = accounts.device_store(device)
        now = now or utcnow()
        for attempt in (1, 2):  # a first heartbeat racing another one inserts twice
            try:
                with db.transaction(self.crm.sessions) as session:
                    accounts.device_reported(session, device, version, queue_depth, now)
                    for report in cameras:
                        row = session.get(CameraHealth, (device.id, report.camera))
                        if row is None:
                            row = CameraHealth(
                                device_id=device.id,
                                camera=report.camera,
                                store_id=store_id,
                                first_reported_at=now,
                            )
                            session.add(row)
                        row.reported_at = now
                        if report.last_frame_at is not None:
                            frame = _aware(report.last_frame_at)
                            if row.last_frame_at is None or frame > _aware(row.last_frame_at):
                                row.last_frame_at = min(frame, now)  # never in the future
                break
            except IntegrityError:
                if attempt == 2:
                    raise
        self.check(now, store_id=store_id, principal=device)
        return self.cameras(SYSTEM, store_id, device_id=device.id)

    # -- managers --------------------------------------------------------------------

    def cameras(
        self, principal: Principal, store_id: str, device_id: str | None = None
    ) -> list[CameraView]:
        """The store's cameras with their last frame time and open alert."""
        principal.require_store(store_id)
        with self.crm.sessions() as session:
            stmt = (
                select(CameraHealth, Alert.created_at)
                .outerjoin(Alert, Alert.id == CameraHealth.silent_alert_id)
                .where(CameraHealth.store_id == store_id)
                .order_by(CameraHealth.device_id, CameraHealth.camera)
            )
            if device_id is not None:
                stmt = stmt.where(CameraHealth.device_id == device_id)
            return [
                CameraView(
                    row.device_id,
                    row.camera,
                    row.store_id,
                    _aware(row.reported_at),
                    _aware(row.last_frame_at) if row.last_frame_at else None,
                    row.silent_alert_id is not None,
                    _aware(raised) if raised else None,
                )
                for row, raised in session.execute(stmt)
            ]

    # -- the check -------------------------------------------------------------------

    def check(
        self,
        now: datetime | None = None,
        store_id: str | None = None,
        principal: Principal = SYSTEM,
    ) -> CheckReport:
        """Raise an alert for each camera silent longer than its store's window, once, and
        clear the alerts of cameras that give frames again; safe to run concurrently."""
        now = now or utcnow()
        with self.crm.sessions() as session:
            stmt = select(CameraHealth)
            if store_id is not None:
                stmt = stmt.where(CameraHealth.store_id == store_id)
            rows = list(session.scalars(stmt))
            windows = {s: self._window(session, s) for s in {r.store_id for r in rows}}
        raised = cleared = 0
        for row in rows:
            window = windows[row.store_id]
            since = _aware(row.last_frame_at or row.first_reported_at)
            silent = window is not None and now - since >= window
            if silent and row.silent_alert_id is None:
                assert window is not None
                raised += self._raise(row, now - window, principal)
            elif not silent and row.silent_alert_id is not None:
                cleared += self._clear(row, row.silent_alert_id, now, principal)
        return CheckReport(raised, cleared)

    def _raise(self, row: CameraHealth, cutoff: datetime, principal: Principal) -> int:
        try:
            view = self._raise_in_db(row, cutoff, principal)
        except _Lost:
            return 0
        log.warning("store %s: camera %s is silent", row.store_id, row.camera)
        self.metrics.inc("facecrm_camera_alerts_total", help="camera_silent alerts raised")
        self.alerts.publish(row.store_id, view.payload())
        return 1

    def _raise_in_db(self, row: CameraHealth, cutoff: datetime, principal: Principal) -> AlertView:
        with db.transaction(self.crm.sessions) as session:
            device = session.get(Device, row.device_id)
            view = self.alerts.add_alert(
                session,
                principal,
                row.store_id,
                KIND,
                _message(row.camera, device.name if device else None, row.last_frame_at),
                camera=row.camera,
            )
            won = session.execute(
                update(CameraHealth)
                .where(
                    CameraHealth.device_id == row.device_id,
                    CameraHealth.camera == row.camera,
                    CameraHealth.silent_alert_id.is_(None),
                    func.coalesce(CameraHealth.last_frame_at, CameraHealth.first_reported_at)
                    <= cutoff,
                )
                .values(silent_alert_id=view.id)
                .execution_options(synchronize_session=False)
            )
            if not won.rowcount:  # type: ignore[attr-defined]
                raise _Lost  # another process raised it (or frames came back): no alert
            audit.record(session, principal, "camera_silent", None, row.store_id, camera=row.camera)
            return view

    def _clear(self, row: CameraHealth, alert_id: int, now: datetime, principal: Principal) -> int:
        with db.transaction(self.crm.sessions) as session:
            won = session.execute(
                update(CameraHealth)
                .where(
                    CameraHealth.device_id == row.device_id,
                    CameraHealth.camera == row.camera,
                    CameraHealth.silent_alert_id == alert_id,
                )
                .values(silent_alert_id=None)
                .execution_options(synchronize_session=False)
            )
            if not won.rowcount:  # type: ignore[attr-defined]
                return 0
            view = self.alerts.resolve(session, principal, alert_id, now)
            audit.record(session, principal, "camera_back", None, row.store_id, camera=row.camera)
        if view is not None:  # still open: it leaves the live lists
            self.alerts.bus.publish(row.store_id, {"type": "closed", **view.payload()})
        return 1

    def _window(self, session: Session, store_id: str) -> timedelta | None:
        """The store's silence window; None when its `camera_silent` rule is off."""
        text = session.scalar(
            select(cast(StoreConfig.rules, Text)).where(StoreConfig.store_id == store_id)
        )
        try:
            raw = json.loads(text) if text is not None else None
        except ValueError:
            raw = None
        setting = rules.stored(raw)[0].camera_silent
        return timedelta(minutes=setting.minutes) if setting.enabled else None


def start_checker(service: CameraHealthService, stop: threading.Event) -> threading.Thread:
    """Run `check` every `camera_check_seconds` until `stop` is set."""

    def loop() -> None:
        while not stop.wait(service.crm.settings.camera_check_seconds):
            try:
                service.check()
            except Exception:  # the checker must survive a failed run (e.g. a database blip)
                log.exception("camera check failed")

    thread = threading.Thread(target=loop, daemon=True, name="camera-check")
    thread.start()
    return thread
