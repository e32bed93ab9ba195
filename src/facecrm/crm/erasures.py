"""The erasure log: erasures survive the restore of a backup taken before them.

An erasure deletes the customer's rows and destroys their data key, but a database
backup from before it still holds the profile, consents and visits (the templates in
it cannot be decrypted: the key is gone from every later copy, and the master key is
kept out of backups). Restoring such a backup would bring the person back. So every
erasure is also written to `erasure_log`, in its own transaction, and appended to a
copy outside the database (`Settings.resolved_erasure_log_file`) once it has
committed; `replay` re-erases every logged customer still present after a restore.

The log holds a keyed hash of the customer id and the time, nothing else. The id is
random, but it is the key other systems know the person by (webhook payloads, the
CRM's mapping from the customer export, audit exports), and this log is meant to be
kept *outside* the backups, often somewhere less guarded, for as long as the oldest
backup: in plain form it would tell anyone holding such a mapping who asked to be
erased. HMAC-SHA256 under a key derived from the server secret links an entry to a
customer only for whoever holds that secret, which the server (and `replay`) does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import delete, event, select
from sqlalchemy.orm import Session

from facecrm import private
from facecrm.config import Settings
from facecrm.crm import audit, db
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.errors import InvalidError
from facecrm.crm.models import Customer, ErasureLog
from facecrm.keys import derived_key

if TYPE_CHECKING:
    from sqlalchemy import CursorResult

    from facecrm.crm.service import FaceCRM

log = logging.getLogger("facecrm.erasures")
KEY_PURPOSE = "erasure-log"
_PENDING = "erasures_pending"  # session.info: entries to append to the file after commit
_REF = re.compile(r"^[0-9a-f]{64}\Z")
_file_lock = threading.Lock()


def ref(settings: Settings, customer_id: str) -> str:
    """The opaque reference the log keeps instead of the customer id."""
    key = derived_key(settings, KEY_PURPOSE)
    return hmac.new(key, customer_id.encode(), hashlib.sha256).hexdigest()


def record(session: Session, settings: Settings, customer_id: str) -> None:
    """Log an erasure in the erasing transaction; the file copy follows its commit.

    After the commit, not before: a rolled-back erasure must not be replayed. A crash
    between the commit and the append loses the file copy of that one entry (the
    table has it; `facecrm erasures export` ships the table too).
    """
    entry = ErasureLog(ref=ref(settings, customer_id), erased_at=datetime.now(UTC))
    if session.get(ErasureLog, entry.ref) is None:
        session.add(entry)
    pending = session.info.setdefault(_PENDING, [])
    if not pending:
        path = settings.resolved_erasure_log_file
        event.listen(session, "after_commit", lambda s: _append(s, path), once=True)
        event.listen(session, "after_soft_rollback", _forget, once=True)
    pending.append(_line(entry.ref, entry.erased_at))


def _line(reference: str, erased_at: datetime) -> dict[str, str]:
    return {"ref": reference, "erased_at": erased_at.astimezone(UTC).isoformat()}


def _forget(session: Session, _transaction: object) -> None:
    session.info.pop(_PENDING, None)


def _append(session: Session, path: Path) -> None:
    lines = session.info.pop(_PENDING, [])
    if not lines:
        return
    text = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)
    try:
        with _file_lock:
            private.make_dir(path.parent)
            private.touch(path)
            with path.open("a", encoding="utf-8") as fh:
                fh.write(text)
    except OSError:  # the erasure has committed: report, do not fail it (the table has it)
        log.exception("could not append to the erasure log file")


def read_file(path: Path) -> dict[str, datetime]:
    """The entries of an erasure log file (the copy, or a `facecrm erasures export`)."""
    entries: dict[str, datetime] = {}
    with path.open(encoding="utf-8") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
                reference, at = str(item["ref"]), datetime.fromisoformat(item["erased_at"])
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidError(f"{path.name} line {number}: not an erasure entry") from exc
            if not _REF.match(reference) or at.tzinfo is None:
                raise InvalidError(f"{path.name} line {number}: not an erasure entry")
            entries[reference] = min(at, entries.get(reference, at))
    return entries


def entries(session: Session) -> dict[str, datetime]:
    """The entries of the database's own log."""
    rows = session.execute(select(ErasureLog.ref, ErasureLog.erased_at))
    return {reference: at for reference, at in rows}


def export(session: Session, principal: Principal) -> list[dict[str, str]]:
    """The database's log as file lines (to keep with, but apart from, the backups)."""
    principal.require(Permission.CUSTOMERS_ERASE)
    rows = entries(session)
    audit.record(session, principal, "erasure_log_export", entries=len(rows))
    return [_line(r, at) for r, at in sorted(rows.items(), key=lambda item: item[1])]


@dataclass(frozen=True, slots=True)
class ReplayReport:
    logged: int  # entries known from the database and the files
    restored: int  # entries the database's own log was missing (written back)
    erased: int  # customers erased again


def replay(crm: FaceCRM, principal: Principal, files: Sequence[Path] = ()) -> ReplayReport:
    """Re-erase every logged customer still in the database (after a restore). Idempotent.

    The log is the union of the database's table, the file copy (when it exists) and
    `files`; the table gets back the entries it was missing, so the next backup holds
    them. Each customer goes through `FaceCRM.delete_customer` (audited `erase`), and one
    `erasure_replay` event records the counts.
    """
    principal.require(Permission.CUSTOMERS_ERASE)
    sources = [crm.settings.resolved_erasure_log_file, *files]
    known: dict[str, datetime] = {}
    for path in sources:
        if path.is_file() or path in files:
            for reference, at in read_file(path).items():
                known[reference] = min(at, known.get(reference, at))
    with db.transaction(crm.sessions) as session:
        own = entries(session)
        for reference, at in own.items():
            known[reference] = min(at, known.get(reference, at))
        missing = [ErasureLog(ref=r, erased_at=at) for r, at in known.items() if r not in own]
        session.add_all(missing)
        present = _present(session, crm.settings, known)
        audit.record(
            session,
            principal,
            "erasure_replay",
            logged=len(known),
            restored=len(missing),
            erased=len(present),
        )
    for customer_id in present:
        crm.delete_customer(customer_id, principal)
    return ReplayReport(len(known), len(missing), len(present))


def _present(session: Session, settings: Settings, known: Iterable[str]) -> list[str]:
    """Customers in the database whose reference is logged (one HMAC per customer:
    about a second per million)."""
    wanted = set(known)
    if not wanted:
        return []
    return [c for c in session.scalars(select(Customer.id)) if ref(settings, c) in wanted]


def prune(session: Session, settings: Settings, now: datetime) -> int:
    """Forget entries older than the backups kept (`backup_retention_days`; 0: keep all):
    no backup left can hold the erased rows. The file copy is rewritten to match."""
    if not settings.backup_retention_days:
        return 0
    cutoff = now - timedelta(days=settings.backup_retention_days)
    deleted = session.execute(delete(ErasureLog).where(ErasureLog.erased_at < cutoff))
    count = cast("CursorResult[Any]", deleted).rowcount or 0
    path = settings.resolved_erasure_log_file
    if path.is_file():
        with _file_lock:
            kept = {r: at for r, at in read_file(path).items() if at >= cutoff}
            if len(kept) != sum(1 for line in path.read_text().splitlines() if line.strip()):
                text = "".join(
                    json.dumps(_line(r, at), sort_keys=True) + "\n" for r, at in kept.items()
                )
                private.write_file(path, text.encode())
    return count
