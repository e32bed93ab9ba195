"""Database engine, sessions and migrations (SQLite by default)."""

from __future__ import annotations

import logging
import re
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.exc import SAWarning
from sqlalchemy.orm import Session, sessionmaker

from facecrm import private
from facecrm.errors import ConfigError, InvalidError, SchemaOutdatedError

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger("facecrm.db")


def make_engine(url: str) -> Engine:
    """An engine; for SQLite the parent folder is created and foreign keys enforced.

    The SQLite file is created 0600 in a 0700 folder before SQLite opens it (its
    -wal and -shm files take the database file's mode), and every connection
    runs with `secure_delete`, so deleted rows are overwritten with zeros.
    """
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if path.name and path.name != ":memory:":
            try:
                private.make_dir(path.parent)
                private.touch(path)
            except OSError as exc:  # e.g. a data directory this user may not write
                raise ConfigError(f"cannot create the database {path}: {exc.strerror}") from exc
        engine = create_engine(url, connect_args={"check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL never corrupts; a power cut may lose the last commits only
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=5000")
            # erased data must not linger in free space of the file (see `scrub`)
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.close()

        _refuse_nul(engine)
        return engine
    engine = create_engine(url, pool_pre_ping=True)
    _refuse_nul(engine)
    return engine


def _has_nul(params: object) -> bool:
    if isinstance(params, str):
        return "\x00" in params
    if isinstance(params, dict):
        return any(_has_nul(v) for v in params.values())
    if isinstance(params, list | tuple):
        return any(_has_nul(v) for v in params)
    return False  # numbers, bytes (binary columns may hold zeros), None, dates


def _refuse_nul(engine: Engine) -> None:
    """Refuse text with a NUL character before it reaches the database, on every path.

    PostgreSQL cannot store NUL in text (the driver raised DataError: a 500), and in
    SQLite it cuts strings short in some functions. Checked once here, for every
    statement, instead of in each schema, form and CLI command that takes text.
    """

    @event.listens_for(engine, "before_cursor_execute")
    def _check(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if _has_nul(parameters):
            raise InvalidError("text may not contain NUL characters", reason="nul_character")


def scrub(engine: Engine, tables: Iterable[str], wait_seconds: float = 5.0) -> bool:
    """After an erasure has committed: make the deleted rows' bytes go away on disk.

    SQLite: with `secure_delete` the new page images hold zeros where the rows
    were, but the write-ahead log still holds older images of those pages (with
    the data) until a checkpoint. `wal_checkpoint(TRUNCATE)` copies the pages
    into the database file and empties the log. A reader still in a transaction
    makes it report busy; it is retried for `wait_seconds`. If it still cannot
    finish, the data stays in the log until the next checkpoint (SQLite's own,
    after 1000 pages, or the next erasure's): logged as a warning, returns False.

    PostgreSQL: a DELETE leaves dead tuples in the heap (and index) pages until
    VACUUM; VACUUM marks their space reusable but does not zero it (new rows
    overwrite it over time), and only VACUUM FULL rewrites a table into new
    files. A plain VACUUM of the touched tables runs here: it costs about as
    much as the changed pages, where VACUUM FULL would rewrite the tables and
    lock them. Dead tuples still visible to an older open transaction are kept
    by VACUUM; the server's WAL files and backups keep their copies until they
    are recycled or expire (see docs/threat-model.md).
    """
    if engine.dialect.name == "sqlite":
        deadline = time.monotonic() + wait_seconds
        with engine.connect() as connection:
            while True:
                busy, _log_pages, _done = connection.exec_driver_sql(
                    "PRAGMA wal_checkpoint(TRUNCATE)"
                ).one()
                if not busy:
                    return True
                if time.monotonic() >= deadline:
                    log.warning("erased data stays in the SQLite log until the next checkpoint")
                    return False
                time.sleep(0.05)
    if engine.dialect.name == "postgresql":
        names = ", ".join(f'"{t}"' for t in sorted(set(tables)))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql(f"VACUUM {names}")
        return True
    return False


MIGRATIONS = resources.files("facecrm.crm") / "migrations"
VERSION_TABLE = "alembic_version"
# `revision = "0007"` / `down_revision = "0006"` (or a tuple of them, for a merge)
_REVISION = re.compile(r"^(down_)?revision(?:\s*:[^=]*)?\s*=\s*(.*)$", re.MULTILINE)


def _alembic_config() -> Config:
    from alembic.config import Config  # imported here: only migrations need Alembic (~150 ms)

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


_MIGRATION_LOCK = 7354202  # next to auditchain's lock number


def migrate(engine: Engine, revision: str = "head") -> str | None:
    """Bring the schema to `revision` (default: the latest); returns the revision found.

    The revision is read under the migration lock, so of several processes starting at
    once only the one that upgraded sees the old revision (and audits the migration).
    """
    from alembic import command

    config = _alembic_config()
    with engine.begin() as connection, warnings.catch_warnings():
        # SQLite batch migrations reflect staff_users; its expression index is kept
        # (it is not part of the copied table), the warning would only alarm the CLI user
        warnings.filterwarnings("ignore", "Skipped unsupported reflection", SAWarning)
        if engine.dialect.name == "postgresql":  # server processes starting at once: in turn
            connection.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))
        found = _revision(connection)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    return found


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema back to `revision` (used by the migration tests)."""
    from alembic import command

    config = _alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


@cache
def head_revision() -> str:
    """The latest migration's revision, read from the scripts' own lines without Alembic.

    The check every process makes at start must be cheap: importing Alembic and building
    its script graph costs more than the rest of a CLI command's database work.
    `tests/test_service.py` holds this to Alembic's own answer.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (MIGRATIONS / "versions").iterdir():
        if not script.name.endswith(".py") or script.name.startswith("__"):
            continue
        for down, value in _REVISION.findall(script.read_text()):
            (parents if down else revisions).update(re.findall(r"[\"']([^\"']+)[\"']", value))
    heads = revisions - parents
    if len(heads) != 1:
        raise ConfigError(f"the installed migrations have {len(heads)} heads, not one")
    return heads.pop()


def current_revision(engine: Engine) -> str | None:
    """The database's schema revision; None for a database facecrm never migrated."""
    with engine.connect() as connection:
        return _revision(connection)


def _revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    revision = connection.scalar(text(f"SELECT version_num FROM {VERSION_TABLE}"))
    return None if revision is None else str(revision)


def is_current(engine: Engine) -> bool:
    """Whether the schema is at the latest revision."""
    return current_revision(engine) == head_revision()


def is_empty(engine: Engine) -> bool:
    """Whether the database has no table (a brand-new file or database, or one taken down
    to `base`, where Alembic leaves its empty version table)."""
    with engine.connect() as connection:
        return not set(inspect(connection).get_table_names()) - {VERSION_TABLE}


def require_current(engine: Engine) -> None:
    """Create the schema in an empty database; refuse one at another revision.

    A brand-new database is initialised here (there is no data to convert and no older
    process using it). An existing database at an older (or newer) revision is never
    upgraded in passing: `SchemaOutdatedError` tells the operator to run `facecrm migrate`.
    """
    revision, head = current_revision(engine), head_revision()
    if revision == head:
        return
    if revision is None and is_empty(engine):
        migrate(engine)
        return
    found = f"schema {revision}" if revision else "tables but no facecrm schema version"
    raise SchemaOutdatedError(
        f"the database has {found}; this facecrm needs schema {head}: run `facecrm migrate`"
    )


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session], *, write_lock: bool = False) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error.

    `write_lock` is for check-then-write work (a claim, a code used once, a payment
    step): the caller locks its rows with `SELECT ... FOR UPDATE`, which PostgreSQL
    honours and SQLite ignores. SQLite's driver opens a transaction only at the first
    write, so two such transactions could both read "unclaimed" and both write; with
    `write_lock` the transaction starts with `BEGIN IMMEDIATE`, taking the database's
    write lock first (waiting `busy_timeout` for it), so they run one after the other.
    Starting with it matters: a read transaction promoted to a write later fails at
    once when another writer committed in between.
    """
    with factory() as session, session.begin():
        if write_lock and session.get_bind().dialect.name == "sqlite":
            session.execute(text("BEGIN IMMEDIATE"))
        yield session
