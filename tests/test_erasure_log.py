"""Erasures survive the restore of an older backup: `facecrm erasures replay`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from conftest import Cli
from facecrm.crm import db, erasures
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.models import AuditEvent, Base, Customer, ErasureLog
from facecrm.crm.retention import purge
from facecrm.crm.service import FaceCRM, Photo
from facecrm.errors import FacecrmError
from facecrm.vision.pipeline import FacePipeline
from facecrm.vision.types import Image

Load = Callable[[str], Image]
Backup = dict[str, Any]


def _backup(crm: FaceCRM) -> Backup:
    """What a backup holds: the SQLite file (and the audit head beside it), or every row
    of every table on PostgreSQL (what a `pg_dump` would hold, without needing pg_dump)."""
    head = crm.runtime.audit_head.read_bytes()
    if crm.engine.dialect.name == "sqlite":
        crm.scrub_erased(())  # a checkpoint: the file alone is the database
        crm.engine.dispose()
        path = Path(crm.engine.url.database or "")
        copy = path.with_name("backup.db")
        shutil.copyfile(path, copy)
        return {"file": copy, "head": head}
    with crm.engine.connect() as connection:
        rows = {
            t.name: [dict(r._mapping) for r in connection.execute(t.select())]
            for t in Base.metadata.sorted_tables
        }
    return {"rows": rows, "head": head}


def _restore(crm: FaceCRM, backup: Backup) -> None:
    crm.runtime.audit_head.write_bytes(backup["head"])
    if "file" in backup:
        crm.engine.dispose()
        path = Path(crm.engine.url.database or "")
        for suffix in ("-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        shutil.copyfile(backup["file"], path.with_name("restoring.db"))
        path.with_name("restoring.db").replace(path)  # as an operator would, server stopped
        return
    tables = Base.metadata.sorted_tables
    with crm.engine.begin() as connection:
        for table in reversed(tables):
            connection.execute(table.delete())
        for table in tables:
            if backup["rows"][table.name]:
                connection.execute(table.insert(), backup["rows"][table.name])


def _ids(crm: FaceCRM) -> set[str]:
    with crm.sessions() as session:
        return set(session.scalars(select(Customer.id)))


def _enroll(crm: FaceCRM, load: Load, name: str, photo: str) -> str:
    return crm.enroll(name, [Photo("p", load(photo))], CURRENT, "kiosk", SYSTEM).id


def _env(crm: FaceCRM) -> dict[str, str]:
    return {"FACECRM_DATABASE_URL": crm.engine.url.render_as_string(hide_password=False)}


def test_replay_erases_again_after_a_restore(
    crm: FaceCRM, load: Load, cli: Cli, pipeline: FacePipeline
) -> None:
    rose = _enroll(crm, load, "Rose Leslie", "identities/rose_leslie/1.jpg")
    kit = _enroll(crm, load, "Kit Harington", "identities/kit_harington/1.jpg")
    backup = _backup(crm)
    crm.delete_customer(rose, SYSTEM)
    log_file = crm.settings.resolved_erasure_log_file
    logged = log_file.read_text()
    assert rose not in logged  # opaque references only
    assert json.loads(logged)["ref"] == erasures.ref(crm.settings, rose)
    with crm.sessions() as session:
        assert session.scalars(select(ErasureLog.ref)).all() == [erasures.ref(crm.settings, rose)]

    _restore(crm, backup)
    assert _ids(crm) == {rose, kit}  # the backup brought Rose back
    data_dir = crm.settings.data_dir
    done = cli(data_dir, "erasures", "replay", env=_env(crm))
    assert done.returncode == 0, done.stderr
    assert "1 entries (1 written back); erased 1 customer(s) again" in done.stdout
    assert _ids(crm) == {kit}
    with crm.sessions() as session:
        actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert actions[-2:] == ["erasure_replay", "erase"]
    assert crm.verify_audit().ok  # the restored chain, with its head, goes on
    fresh = FaceCRM(crm.settings, pipeline=pipeline)  # a new process: the gallery reloads
    (face,) = fresh.identify(load("identities/rose_leslie/2.jpg"), SYSTEM)
    assert face.match is None
    fresh.close()

    again = cli(data_dir, "erasures", "replay", env=_env(crm))  # idempotent
    assert again.returncode == 0, again.stderr
    assert "1 entries (0 written back); erased 0 customer(s) again" in again.stdout
    assert _ids(crm) == {kit}


def test_replay_from_an_exported_log(crm: FaceCRM, load: Load, cli: Cli) -> None:
    """A server whose data directory (and file copy) is lost: the exported log suffices."""
    rose = _enroll(crm, load, "Rose Leslie", "identities/rose_leslie/1.jpg")
    backup = _backup(crm)
    crm.delete_customer(rose, SYSTEM)
    data_dir = crm.settings.data_dir
    exported = cli(data_dir, "erasures", "export", env=_env(crm))
    assert exported.returncode == 0, exported.stderr
    assert rose not in exported.stdout
    shipped = data_dir.parent / "shipped-erasures.jsonl"
    shipped.write_text(exported.stdout)
    crm.settings.resolved_erasure_log_file.unlink()
    _restore(crm, backup)
    assert rose in _ids(crm)
    done = cli(data_dir, "erasures", "replay", "--from", str(shipped), env=_env(crm))
    assert done.returncode == 0, done.stderr
    assert rose not in _ids(crm)


def test_a_bad_log_file_is_refused_and_changes_nothing(
    crm: FaceCRM, load: Load, cli: Cli, tmp_path: Path
) -> None:
    rose = _enroll(crm, load, "Rose Leslie", "identities/rose_leslie/1.jpg")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"ref": rose, "erased_at": "2026-01-01T00:00:00+00:00"}) + "\n")
    done = cli(crm.settings.data_dir, "erasures", "replay", "--from", str(bad), env=_env(crm))
    assert done.returncode == 1
    assert "bad.jsonl line 1: not an erasure entry" in done.stderr
    assert rose in _ids(crm)
    with pytest.raises(FacecrmError):
        erasures.replay(crm, SYSTEM, [bad])


def test_a_rolled_back_erasure_is_not_logged(crm: FaceCRM, load: Load) -> None:
    rose = _enroll(crm, load, "Rose Leslie", "identities/rose_leslie/1.jpg")
    with pytest.raises(RuntimeError), db.transaction(crm.sessions) as session:
        erasures.record(session, crm.settings, rose)
        raise RuntimeError("the erasure failed")
    assert not crm.settings.resolved_erasure_log_file.exists()
    with crm.sessions() as session:
        assert session.scalars(select(ErasureLog)).all() == []


def test_entries_older_than_the_backups_are_pruned(crm: FaceCRM, load: Load) -> None:
    rose = _enroll(crm, load, "Rose Leslie", "identities/rose_leslie/1.jpg")
    kit = _enroll(crm, load, "Kit Harington", "identities/kit_harington/1.jpg")
    crm.delete_customer(rose, SYSTEM)
    crm.delete_customer(kit, SYSTEM)
    now = datetime.now(UTC)
    old = now - timedelta(days=crm.settings.backup_retention_days + 1)
    with db.transaction(crm.sessions) as session:
        session.execute(
            update(ErasureLog)
            .where(ErasureLog.ref == erasures.ref(crm.settings, rose))
            .values(erased_at=old)
        )
    path = crm.settings.resolved_erasure_log_file
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    lines[0]["erased_at"] = old.isoformat()
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    purge(crm, SYSTEM, now=now)
    kept = erasures.ref(crm.settings, kit)
    with crm.sessions() as session:
        assert session.scalars(select(ErasureLog.ref)).all() == [kept]
    assert list(erasures.read_file(path)) == [kept]
