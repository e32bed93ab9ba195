"""camera alerts are alerts: `camera_alerts` folds into `alerts` (kind camera_silent)

* alerts.camera: the camera an alert is about (a camera_silent alert names no customer);
* every camera_alerts row becomes an alert (kind and rule camera_silent, created at its
  raised_at; a cleared one is closed then, outcome `resolved`), and camera_health's
  silent_alert_id points at that alert; camera_alerts is dropped.

Downgrade moves them back: each camera_silent alert whose device is still known (the
camera_health row that points at it, or that has its store and camera) becomes a
camera_alerts row again; the alert rows are deleted.

camera_health is small state the next heartbeat rewrites, but it is copied over
(recreated with its foreign key on the new table: SQLite cannot alter one in place).

Revision ID: 0016
Revises: 0013
Create Date: 2026-11-26 06:00:00
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)
alerts = sa.table(
    "alerts",
    sa.column("id", sa.Integer()),
    sa.column("store_id", sa.String()),
    sa.column("customer_id", sa.String()),
    sa.column("rule", sa.String()),
    sa.column("message", sa.Text()),
    sa.column("created_at", _TIME),
    sa.column("kind", sa.String()),
    sa.column("reasons", sa.JSON()),
    sa.column("closed_at", _TIME),
    sa.column("outcome", sa.String()),
    sa.column("camera", sa.String()),
)
camera_alerts = sa.table(
    "camera_alerts",
    sa.column("id", sa.Integer()),
    sa.column("store_id", sa.String()),
    sa.column("device_id", sa.String()),
    sa.column("camera", sa.String()),
    sa.column("kind", sa.String()),
    sa.column("last_frame_at", _TIME),
    sa.column("raised_at", _TIME),
    sa.column("cleared_at", _TIME),
)
camera_health = sa.table(
    "camera_health",
    sa.column("device_id", sa.String()),
    sa.column("camera", sa.String()),
    sa.column("store_id", sa.String()),
    sa.column("first_reported_at", _TIME),
    sa.column("reported_at", _TIME),
    sa.column("last_frame_at", _TIME),
    sa.column("silent_alert_id", sa.Integer()),
)


def _message(camera: str, last_frame_at: Any) -> str:
    """What `alerts.cameras` writes (the device's name is not known here)."""
    since = last_frame_at.isoformat() if hasattr(last_frame_at, "isoformat") else last_frame_at
    return f"camera {camera} has sent no frame since {since or 'it was reported'}"


def _create_camera_health(alert_table: str) -> None:
    op.create_table(
        "camera_health",
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("camera", sa.String(length=100), nullable=False),
        sa.Column("store_id", sa.String(length=32), nullable=False),
        sa.Column("first_reported_at", _TIME, nullable=False),
        sa.Column("reported_at", _TIME, nullable=False),
        sa.Column("last_frame_at", _TIME, nullable=True),
        sa.Column("silent_alert_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["silent_alert_id"], [f"{alert_table}.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["store_id"], ["stores.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id", "camera"),
    )
    op.create_index("ix_camera_health_store_id", "camera_health", ["store_id"])


def _rebuild_camera_health(rows: list[dict[str, Any]], alert_table: str) -> None:
    op.drop_index("ix_camera_health_store_id", table_name="camera_health")
    op.drop_table("camera_health")
    _create_camera_health(alert_table)
    if rows:
        op.get_bind().execute(camera_health.insert(), rows)


def upgrade() -> None:
    bind = op.get_bind()
    op.add_column("alerts", sa.Column("camera", sa.String(length=100), nullable=True))
    health = [dict(r._mapping) for r in bind.execute(sa.select(camera_health))]
    moved: dict[int, int] = {}
    old = bind.execute(sa.select(camera_alerts).order_by(camera_alerts.c.id)).all()
    for row in old:
        moved[row.id] = bind.execute(
            alerts.insert()
            .values(
                store_id=row.store_id,
                customer_id=None,
                rule="camera_silent",
                message=_message(row.camera, row.last_frame_at),
                created_at=row.raised_at,
                kind="camera_silent",
                reasons=[],
                closed_at=row.cleared_at,
                outcome="resolved" if row.cleared_at is not None else None,
                camera=row.camera,
            )
            .returning(alerts.c.id)
        ).scalar_one()
    for camera in health:
        camera["silent_alert_id"] = moved.get(camera["silent_alert_id"])
    _rebuild_camera_health(health, "alerts")
    op.drop_index("ix_camera_alerts_raised_at", table_name="camera_alerts")
    op.drop_index("ix_camera_alerts_store_id", table_name="camera_alerts")
    op.drop_table("camera_alerts")


def downgrade() -> None:
    bind = op.get_bind()
    op.create_table(
        "camera_alerts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("store_id", sa.String(length=32), nullable=False),
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("camera", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("last_frame_at", _TIME, nullable=True),
        sa.Column("raised_at", _TIME, nullable=False),
        sa.Column("cleared_at", _TIME, nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["store_id"], ["stores.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_camera_alerts_raised_at", "camera_alerts", ["raised_at"])
    op.create_index("ix_camera_alerts_store_id", "camera_alerts", ["store_id"])
    health = [dict(r._mapping) for r in bind.execute(sa.select(camera_health))]
    by_alert = {h["silent_alert_id"]: h for h in health if h["silent_alert_id"] is not None}
    by_camera = {(h["store_id"], h["camera"]): h for h in health}
    moved: dict[int, int] = {}
    kept = bind.execute(
        sa.select(alerts).where(alerts.c.kind == "camera_silent").order_by(alerts.c.id)
    ).all()
    for row in kept:
        known = by_alert.get(row.id) or by_camera.get((row.store_id, row.camera))
        if known is None:  # no device to name: the old table cannot hold it
            continue
        moved[row.id] = bind.execute(
            camera_alerts.insert()
            .values(
                store_id=row.store_id,
                device_id=known["device_id"],
                camera=row.camera or known["camera"],
                kind="camera_silent",
                last_frame_at=known["last_frame_at"],
                raised_at=row.created_at,
                # still silent (camera_health points at it): open, even if staff closed it
                cleared_at=None if row.id in by_alert else row.closed_at,
            )
            .returning(camera_alerts.c.id)
        ).scalar_one()
    for h in health:
        h["silent_alert_id"] = moved.get(h["silent_alert_id"])
    _rebuild_camera_health(health, "camera_alerts")
    bind.execute(sa.delete(alerts).where(alerts.c.kind == "camera_silent"))
    # not a batch copy: on SQLite that would drop `alerts`, and its ON DELETE actions
    # would null match_disputes.alert_id
    op.drop_column("alerts", "camera")
