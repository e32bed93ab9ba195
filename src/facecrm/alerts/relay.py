"""Which alert bus a server process uses, and how it rebuilds other processes' events.

On PostgreSQL every event published on the bus is announced to the other server
processes by type and row id only (`bus.PostgresAlertBus`); the loaders here rebuild the
payload from the database exactly as the raising process built it (`AlertView`, the
camera alerts' `_payload`). A new event type that must reach other processes needs a
loader here; one without stays in its own process.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from facecrm.alerts.bus import AlertBus, Loader, PostgresAlertBus
from facecrm.alerts.cameras import _payload as camera_payload
from facecrm.alerts.service import AlertView, _aware
from facecrm.crm.models import Alert, CameraAlert, Customer
from facecrm.crm.service import FaceCRM


def _alert(session: Session, alert_id: int) -> dict[str, object] | None:
    row = session.execute(
        select(Alert, Customer.name)
        .join(Customer, Customer.id == Alert.customer_id)
        .where(Alert.id == alert_id)
    ).first()
    return None if row is None else {"type": "alert", **AlertView.of(row[0], row[1]).payload()}


def _claimed(session: Session, alert_id: int) -> dict[str, object] | None:
    alert = session.get(Alert, alert_id)
    return None if alert is None else {"type": "claimed", **AlertView.of(alert).payload()}


def _acknowledged(session: Session, alert_id: int) -> dict[str, object] | None:
    alert = session.get(Alert, alert_id)
    if alert is None or alert.acknowledged_at is None:
        return None
    seconds = (_aware(alert.acknowledged_at) - _aware(alert.created_at)).total_seconds()
    view = AlertView.of(alert, greeted=round(seconds, 1))
    return {"type": "acknowledged", **view.payload()}


def _camera(kind: str) -> Loader:
    def load(session: Session, alert_id: int) -> dict[str, object] | None:
        alert = session.get(CameraAlert, alert_id)
        return None if alert is None else camera_payload(kind, alert)

    return load


LOADERS: dict[str, Loader] = {
    "alert": _alert,
    "claimed": _claimed,
    "acknowledged": _acknowledged,
    "camera_silent": _camera("camera_silent"),
    "camera_back": _camera("camera_back"),
}


def bus_for(crm: FaceCRM) -> AlertBus:
    """PostgreSQL: the bus across server processes; SQLite: the in-process one."""
    if crm.engine.dialect.name == "postgresql":
        return PostgresAlertBus(crm.engine, crm.sessions, LOADERS)
    return AlertBus()
