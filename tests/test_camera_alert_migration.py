"""Migration 0016: camera alerts move into `alerts` and back, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import inspect, text

from facecrm.crm import db


def _before_0016() -> str:
    """The revision 0016 follows (the lead may re-chain it when merging)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(db._alembic_config()).get_revision("0016")
    assert script is not None and isinstance(script.down_revision, str)
    return script.down_revision


def _rows(engine: object, sql: str) -> list[tuple[object, ...]]:
    with engine.connect() as c:  # type: ignore[attr-defined]
        return [tuple(r) for r in c.execute(text(sql))]


def test_camera_alerts_move_into_alerts_and_back(database_url: str) -> None:
    engine = db.make_engine(database_url)
    db.migrate(engine, _before_0016())
    t0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    with engine.begin() as c:
        c.execute(
            text("INSERT INTO stores (id, code, name, created_at) VALUES ('s', 'S', 'S', :t)"),
            {"t": t0},
        )
        c.execute(
            text(
                "INSERT INTO devices (id, store_id, kind, name, key_hash, created_at)"
                " VALUES ('d', 's', 'agent', 'door', 'h', :t)"
            ),
            {"t": t0},
        )
        for camera, raised, cleared in (("back", t0, t0 + timedelta(hours=1)), ("door", t0, None)):
            c.execute(
                text(
                    "INSERT INTO camera_alerts (store_id, device_id, camera, kind, last_frame_at,"
                    " raised_at, cleared_at) VALUES ('s', 'd', :c, 'camera_silent', :f, :r, :x)"
                ),
                {"c": camera, "f": t0 - timedelta(minutes=6), "r": raised, "x": cleared},
            )
        open_id = c.execute(text("SELECT id FROM camera_alerts WHERE camera = 'door'")).scalar()
        for camera, silent in (("back", None), ("door", open_id)):
            c.execute(
                text(
                    "INSERT INTO camera_health (device_id, camera, store_id, first_reported_at,"
                    " reported_at, last_frame_at, silent_alert_id)"
                    " VALUES ('d', :c, 's', :t, :t, :t, :a)"
                ),
                {"c": camera, "t": t0, "a": silent},
            )

    db.migrate(engine)
    assert "camera_alerts" not in inspect(engine).get_table_names()
    (fk,) = [
        f
        for f in inspect(engine).get_foreign_keys("camera_health")
        if f["constrained_columns"] == ["silent_alert_id"]
    ]
    assert fk["referred_table"] == "alerts"
    moved = _rows(
        engine,
        "SELECT id, camera, kind, rule, customer_id, outcome, closed_at IS NOT NULL"
        " FROM alerts ORDER BY camera",
    )
    assert [m[1:] for m in moved] == [
        ("back", "camera_silent", "camera_silent", None, "resolved", True),
        ("door", "camera_silent", "camera_silent", None, None, False),
    ]
    health = dict(_rows(engine, "SELECT camera, silent_alert_id FROM camera_health"))
    assert health == {"back": None, "door": moved[1][0]}  # still open: points at its alert
    (message,) = _rows(engine, "SELECT message FROM alerts WHERE camera = 'door'")
    assert str(message[0]).startswith("camera door has sent no frame since 2026-11-20")

    db.downgrade(engine, _before_0016())
    assert "camera" not in {c["name"] for c in inspect(engine).get_columns("alerts")}
    assert _rows(engine, "SELECT count(*) FROM alerts") == [(0,)]
    back = _rows(
        engine,
        "SELECT id, camera, device_id, cleared_at IS NOT NULL FROM camera_alerts ORDER BY camera",
    )
    assert [b[1:] for b in back] == [("back", "d", True), ("door", "d", False)]
    health = dict(_rows(engine, "SELECT camera, silent_alert_id FROM camera_health"))
    assert health == {"back": None, "door": back[1][0]}

    db.migrate(engine)
    assert db.is_current(engine)
    engine.dispose()
