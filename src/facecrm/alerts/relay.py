"""Which alert bus a server process uses, and how it rebuilds other processes' events.

On PostgreSQL every event published on the bus is announced to the other server
processes by type and row id only (`bus.PostgresAlertBus`); the loaders here rebuild the
payload from the database exactly as the raising process built it (`alert_view`, for
arrivals and silent cameras alike). A new event type that must reach other processes
needs a loader here; one without stays in its own process.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from facecrm.alerts.bus import AlertBus, Loader, PostgresAlertBus
from facecrm.alerts.service import _aware, alert_view
from facecrm.crm.models import Alert
from facecrm.crm.service import FaceCRM


def _event(kind: str) -> Loader:
    def load(session: Session, alert_id: int) -> dict[str, object] | None:
        view = alert_view(session, alert_id)
        return None if view is None else {"type": kind, **view.payload()}

    return load


def _acknowledged(session: Session, alert_id: int) -> dict[str, object] | None:
    alert = session.get(Alert, alert_id)
    if alert is None or alert.acknowledged_at is None:
        return None
    seconds = (_aware(alert.acknowledged_at) - _aware(alert.created_at)).total_seconds()
    view = alert_view(session, alert_id, greeted=round(seconds, 1))
    return None if view is None else {"type": "acknowledged", **view.payload()}


LOADERS: dict[str, Loader] = {
    "alert": _event("alert"),
    "claimed": _event("claimed"),
    "acknowledged": _acknowledged,
    "closed": _event("closed"),  # dismissed, disputed, or resolved (a camera is back)
}


def bus_for(crm: FaceCRM) -> AlertBus:
    """PostgreSQL: the bus across server processes; SQLite: the in-process one."""
    if crm.engine.dialect.name == "postgresql":
        return PostgresAlertBus(crm.engine, crm.sessions, LOADERS)
    return AlertBus()
